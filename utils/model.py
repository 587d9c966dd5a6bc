"""A GPT in one file: the model notebooks 03-08 build, train, evaluate and chat with.

Read it top to bottom: the config, then one class per idea (``RMSNorm``, rotary
positions, ``CausalSelfAttention``, ``MLP``, ``Block``, ``GPT``), then sampling.
Modelled on nanoGPT's model.py.

One class, two layouts, chosen by plain ``GPTConfig`` fields:

- **GPT-2** (the default): LayerNorm, learned position embeddings, a GELU
  feed-forward, as many key/value heads as query heads, biases, tied embeddings.
  It keeps GPT-2's parameter names (fused ``c_attn``, ``c_proj``, ``c_fc``), so
  ``GPT.from_hf`` / ``GPT.to_hf`` exchange weights with ``transformers``'
  ``GPT2LMHeadModel`` and give the same logits.
- **Llama** (today's LLMs, SmolLM2 among them): ``norm="rmsnorm"``,
  ``position="rope"``, ``mlp="swiglu"``, ``n_kv_head < n_head`` (grouped-query
  attention), ``bias=False``. ``GPT.from_hf`` / ``GPT.to_hf`` exchange weights
  with ``LlamaForCausalLM``. ``GPTConfig.llama(...)`` sets these fields at once.

The size calculator (presets of GPT-1/2/3, parameter counts without building a
model, FLOPs and memory) lives in ``utils/model_sizes.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

ATTENTION_KINDS = ("sdpa", "explicit")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "swiglu")
# GPT-2 stores these four as transformers' Conv1D, whose weight is (in, out): the
# transpose of nn.Linear's (out, in). Everything else has the same shape in both.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # number of token ids (GPT-2's BPE: 50,257)
    block_size: int = 1024  # longest sequence the model can see
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention (query) heads per block; n_embd must be divisible by it
    n_embd: int = 768  # width of the residual stream (channels C)
    dropout: float = 0.0  # dropout rate: 0.0 for pretraining small models, ~0.1 to fine-tune
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2: True, Llama: False)
    layer_norm_epsilon: float = 1e-5  # added to the variance inside LayerNorm / RMSNorm
    attention: str = "sdpa"  # "sdpa": PyTorch's fused kernel; "explicit": the formula, for teaching
    init_std: float = 0.02  # standard deviation of GPT-2's normal initialization
    # ---- today's LLM blocks (the defaults are GPT-2's) ----
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama: no mean, no bias, cheaper)
    position: str = "learned"  # "learned": a table of block_size vectors (GPT-2); "rope": rotary (Llama)
    rope_theta: float = 10000.0  # RoPE's base: larger = slower rotations, for longer contexts (SmolLM2: 100000)
    mlp: str = "gelu"  # "gelu": widen, GELU, narrow (GPT-2); "swiglu": a gated feed-forward (Llama)
    mlp_hidden: int | None = None  # feed-forward width; None = 4 * n_embd (SmolLM2: 1536 = 2.67 * 576)
    n_kv_head: int | None = None  # key/value heads; None = n_head; fewer = grouped-query attention
    tie_embeddings: bool = True  # the output layer reuses the token embedding matrix

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "choose n_embd = n_head * head size (e.g. n_head=4, n_embd=128)."
            )
        for field, value, allowed in (("attention", self.attention, ATTENTION_KINDS), ("norm", self.norm, NORMS),
                                      ("position", self.position, POSITIONS), ("mlp", self.mlp, MLPS)):
            if value not in allowed:
                raise ValueError(f"GPTConfig: {field}={value!r}; use one of {allowed}.")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0):
            raise ValueError(
                f"GPTConfig: n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (each key/value "
                "head serves the same number of query heads); e.g. n_head=8 with n_kv_head 1, 2, 4 or 8."
            )
        if self.position == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"GPTConfig: RoPE rotates pairs of channels, so the head size "
                             f"{self.n_embd // self.n_head} must be even.")

    @classmethod
    def llama(cls, **fields) -> "GPTConfig":
        """The Llama layout (RMSNorm, RoPE, SwiGLU, no biases); any field can be overridden."""
        return cls(**{"norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "bias": False, **fields})

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually used (``n_kv_head``, or ``n_head`` when it is None)."""
        return self.n_kv_head or self.n_head

    @property
    def hidden_size(self) -> int:
        """Width of the feed-forward network's middle (``mlp_hidden``, or 4 * n_embd)."""
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def layout(self) -> str:
        """"gpt2", "llama", or "custom" (a mix of both, which transformers has no class for)."""
        gpt2 = (self.norm, self.position, self.mlp, self.kv_heads) == ("layernorm", "learned", "gelu", self.n_head)
        gpt2 = gpt2 and self.tie_embeddings and self.mlp_hidden in (None, 4 * self.n_embd)
        llama = (self.norm, self.position, self.mlp) == ("rmsnorm", "rope", "swiglu")
        return "gpt2" if gpt2 else "llama" if llama else "custom"


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """(n_queries, n_keys) booleans, True where a query may look at a key.

    The queries are the *last* n_queries of the n_keys positions (with a KV cache
    the keys also hold the earlier tokens), so query i sees keys 0 .. n_keys - n_queries + i.
    """
    ones = torch.ones(n_queries, n_keys, dtype=torch.bool, device=device)  # (Tq, Tk)
    return ones.tril(diagonal=n_keys - n_queries)  # (Tq, Tk)


def padding_positions_and_mask(attention_mask: torch.Tensor, n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (B, T) of the last ``n_queries`` tokens and the attention mask (B, 1, T, S) of a left-padded batch.

    ``attention_mask`` (B, S) is True at real tokens, False at padding, for every position so
    far (cached ones too). Each row then behaves as if it were alone:

    - its positions count real tokens only, so its first real token sits at position 0;
    - a query sees the earlier real tokens (causal, and never padding) and always itself: a
      padding query that saw nothing would get a softmax over nothing (NaN), and NaN in a
      padding row's values leaks into real rows through 0 * NaN.
    """
    real = attention_mask.bool()  # (B, S)
    S = real.size(1)
    positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)[:, S - n_queries:]  # (B, T)
    key_index = torch.arange(S, device=real.device)  # (S,)
    query_index = torch.arange(S - n_queries, S, device=real.device)  # (T,): where each query sits
    itself = key_index[None, :] == query_index[:, None]  # (T, S)
    mask = (causal_mask(n_queries, S, real.device) & real[:, None, :]) | itself  # (B, T, S)
    return positions, mask[:, None]  # (B, T), (B, 1, T, S): one mask for every head


def left_pad(sequences: list[list[int]], pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of different lengths -> ``(idx, attention_mask)``, both (B, T), padded on the left.

    Left, so that every row ends with its own last token and the next token of every row goes
    in the same column. ``attention_mask`` is False at padding; the pad id itself is never seen.
    """
    if not sequences or any(len(ids) == 0 for ids in sequences):
        raise ValueError("left_pad: give at least one sequence, each with at least one token.")
    width = max(len(ids) for ids in sequences)
    idx = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in sequences],
                       dtype=torch.long, device=device)  # (B, T)
    attention_mask = torch.tensor([[False] * (width - len(ids)) + [True] * len(ids) for ids in sequences],
                                  dtype=torch.bool, device=device)  # (B, T)
    return idx, attention_mask


class KVCache:
    """The keys and values every layer has already computed, one entry per layer.

    While generating, token t+1 only needs its own query, key and value: the keys
    and values of tokens 0..t do not change (the model is causal), so we keep them
    instead of recomputing them at every step. With grouped-query attention only
    the ``n_kv_head`` key/value heads are stored: ``n_head / n_kv_head`` times less memory.
    """

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer  # per layer (B, n_kv, S, hs)
        self.values: list[torch.Tensor | None] = [None] * n_layer  # per layer (B, n_kv, S, hs)

    def __len__(self) -> int:
        """How many positions are cached (S); the next token sits at position S."""
        return 0 if self.keys[0] is None else self.keys[0].size(2)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append this step's keys and values (B, n_kv, T, hs); return all of them (B, n_kv, S+T, hs)."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)  # (B, n_kv, S+T, hs)
            v = torch.cat([self.values[layer], v], dim=2)  # (B, n_kv, S+T, hs)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def num_bytes(self) -> int:
        """Memory held by the cached keys and values."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class RMSNorm(nn.Module):
    """Root-mean-square normalization (Zhang and Sennrich 2019), Llama's LayerNorm.

    LayerNorm subtracts the mean and divides by the standard deviation, then adds
    a bias. RMSNorm only divides by the root mean square: one statistic instead of
    two, no bias, and in practice the same quality. Computed in float32 (as
    ``transformers``' LlamaRMSNorm) so bf16 training keeps its precision.
    """

    def __init__(self, n_embd: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_embd))  # (C,): a learned gain per channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # (B, T, C)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (B, T, C): RMS 1
        return self.weight * x32.to(x.dtype)  # (B, T, C)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)


# ---- rotary position embeddings (RoPE, Su et al. 2021) ----


def rope_cos_sin(positions: torch.Tensor, head_size: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's rotation angles: two (T, hs) float32 tensors ((B, T, hs) for (B, T) positions).

    Channel pair i of a head turns by the angle ``position * theta ** (-2i / hs)``: the
    first pairs turn fast (they tell neighbours apart), the last pairs slowly (they
    still differ across thousands of tokens). Computed from the positions on their
    own device, in float32, at every forward: a few hundred numbers, no buffer to move.
    """
    exponents = torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32) / head_size  # (hs/2,)
    inverse_frequencies = 1.0 / theta**exponents  # (hs/2,)
    angles = positions.float()[..., None] * inverse_frequencies  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs): pair i = channels i and i + hs/2
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a 90-degree turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (..., hs/2)
    return torch.cat([-x2, x1], dim=-1)  # (..., hs)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair of queries or keys (B, nh, T, hs) by its position's angle.

    After the rotation, q_m . k_n depends on the positions only through m - n: attention
    sees *relative* positions, and no position table limits the length.
    """
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each token only sees itself and earlier tokens.

    With ``n_kv_head < n_head`` (grouped-query attention, Ainslie et al. 2023) several
    query heads share one key/value head: the KV cache shrinks by n_head / n_kv_head
    while each query head still looks for its own pattern.
    """

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.n_embd = config.n_embd
        self.head_size = config.head_size
        self.kv_size = self.n_kv_head * self.head_size  # width of all key (or value) heads together
        self.dropout = config.dropout
        self.attention = config.attention  # "sdpa" | "explicit"; may be changed on the module
        self.layer_index = layer_index  # which entry of a KVCache is ours
        # q, k, v in one matmul: n_embd query channels, then kv_size key and kv_size value channels
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * self.kv_size, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # mixes the heads back
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, rope=None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, 1, T, S): which keys each query may see, for a padded batch; None = causal only."""
        B, T, C = x.size()  # batch, time (sequence length), channels (n_embd)
        q, k, v = self.c_attn(x).split([self.n_embd, self.kv_size, self.kv_size], dim=2)  # (B,T,C), 2x (B,T,kv)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, n_kv, T, hs)
        if rope is not None:  # rotate queries and keys by their positions (before caching the keys)
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, n_kv, S, hs), S = cached + T
        if self.n_kv_head != self.n_head:  # each key/value head serves n_head / n_kv_head query heads
            group = self.n_head // self.n_kv_head
            k = k.repeat_interleave(group, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(group, dim=1)  # (B, nh, S, hs)
        if self.attention == "explicit":
            y = self.explicit_attention(q, k, v, mask)  # (B, nh, T, hs)
        else:
            y = self.sdpa_attention(q, k, v, mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)

    def explicit_attention(self, q, k, v, mask=None) -> torch.Tensor:
        """softmax(q k^T / sqrt(hs) + causal mask) v, written out: what the notebook derives."""
        T, S = q.size(2), k.size(2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_size))  # (B, nh, T, S)
        allowed = causal_mask(T, S, q.device) if mask is None else mask  # (T, S) or (B, 1, T, S)
        att = att.masked_fill(~allowed, float("-inf"))  # (B, nh, T, S)
        att = F.softmax(att, dim=-1)  # (B, nh, T, S): each row sums to 1
        att = self.attn_dropout(att)  # (B, nh, T, S)
        return att @ v  # (B, nh, T, hs)

    def sdpa_attention(self, q, k, v, mask=None) -> torch.Tensor:
        """The same computation in PyTorch's fused kernel (FlashAttention on recent GPUs)."""
        T, S = q.size(2), k.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if mask is not None:  # a padded batch: the mask already holds the causal triangle
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, T, hs)
        if T == S:  # no cache, or the first step: the plain triangular mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)  # (B, nh, T, hs)
        # With a cache the new queries are the last T of S positions. is_causal=True would
        # align the triangle top-left, so pass the mask (none needed for a single new token).
        mask = None if T == 1 else causal_mask(T, S, q.device)  # (T, S)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, T, hs)


class MLP(nn.Module):
    """The feed-forward network applied to every position on its own.

    GELU (GPT-2): widen to 4C, GELU, narrow back. SwiGLU (Shazeer 2020; Llama): two
    projections to the hidden width, ``silu(gate) * up``, then narrow back. The gate
    lets each channel decide how much of ``up`` passes: the same parameters buy a
    lower loss, so Llama-style models use a hidden width of about 8C/3 to keep the
    size of a 4C GELU network. ``c_fc`` holds gate and up in one matmul.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        hidden = config.hidden_size
        width = 2 * hidden if self.kind == "swiglu" else hidden  # swiglu: gate and up side by side
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c_fc(x)  # (B, T, H) or (B, T, 2H)
        if self.kind == "swiglu":
            gate, up = x.chunk(2, dim=-1)  # 2 x (B, T, H)
            x = F.silu(gate) * up  # (B, T, H)
        else:
            x = F.gelu(x, approximate="tanh")  # (B, T, H): GPT-2's GELU ("gelu_new"), one fused kernel
        x = self.c_proj(x)  # (B, T, C)
        return self.dropout(x)  # (B, T, C)


class Block(nn.Module):
    """One transformer block, pre-norm as GPT-2 and Llama: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, rope=None, mask=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, rope, mask)  # (B, T, C): tokens talk to each other
        x = x + self.mlp(self.ln_2(x))  # (B, T, C): each token thinks on its own
        return x


class GPT(nn.Module):
    """Token embeddings (+ learned positions, or RoPE inside attention), n_layer blocks, a final norm, an output layer."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        layers = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config),
        )
        if config.position == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)  # learned position embeddings
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # GPT-2's initialization: normal(0, 0.02) everywhere, biases zero, and the two
        # projections that write into the residual stream (attn.c_proj, mlp.c_proj) scaled
        # by 1/sqrt(2 * n_layer), so the stream's variance does not grow with depth.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        """Weight tying (GPT-2, SmolLM2): the output layer reuses the token embedding matrix.

        A token's "input meaning" and "output score" share one vector, which saves
        V x C parameters (a large share of a small model). Untied models keep two.
        Call again after replacing either matrix (loading weights, growing the vocabulary).
        """
        if self.config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters, counting a tied embedding / lm_head matrix once.

        ``non_embedding=True`` leaves out the position embeddings (a table lookup, no
        arithmetic). The token embedding stays in: it is also the lm_head weight, a real
        matmul. This is nanoGPT's convention and the N of ``flops_per_token``.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def set_attention(self, kind: str) -> "GPT":
        """Switch every block between "sdpa" (fast) and "explicit" (the written-out formula)."""
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention={kind!r}; use one of {ATTENTION_KINDS}.")
        self.config.attention = kind
        for block in self.transformer.h:
            block.attn.attention = kind
        return self

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None):
        """Logits for every position, and the loss when ``targets`` are given.

        idx:     (B, T) token ids, T <= block_size.
        targets: (B, T) the token that should come *after* each position, i.e. already
                 shifted by the caller: for a text ``ids``, ``idx = ids[:, :-1]`` and
                 ``targets = ids[:, 1:]`` (as nanoGPT). logits[:, t] is scored against
                 targets[:, t]. Positions whose target is -100 are ignored (padding,
                 prompt tokens during fine-tuning).
        cache:   a KVCache when generating: idx then holds only the new tokens, which
                 sit at positions len(cache), len(cache) + 1, ...
        attention_mask: (B, len(cache) + T) booleans, False at left padding (``left_pad``):
                 prompts of different lengths in one batch. Each row gets its own positions
                 and never attends to padding (``padding_positions_and_mask``). None: no padding.
        Returns (logits (B, T, vocab_size), loss or None).
        """
        B, T = idx.size()
        start = 0 if cache is None else len(cache)
        if start + T > self.config.block_size:
            raise ValueError(
                f"GPT.forward: the sequence has {start + T} tokens but block_size is "
                f"{self.config.block_size}; crop it to the last {self.config.block_size} tokens "
                f"first (idx[:, -{self.config.block_size}:]), as generate() does."
            )
        mask = None
        if attention_mask is None:
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        else:
            if attention_mask.shape != (B, start + T):
                raise ValueError(f"GPT.forward: attention_mask has shape {tuple(attention_mask.shape)}; it needs "
                                 f"one entry per token so far, cached ones included: {(B, start + T)}.")
            pos, mask = padding_positions_and_mask(attention_mask, T)  # (B, T), (B, 1, T, S)
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(pos)  # (B, T, C): (T, C) broadcast over the batch, or (B, T, C)
        else:
            rope = rope_cos_sin(pos, self.config.head_size, self.config.rope_theta)  # 2 x (T, hs) or (B, T, hs)
            if pos.dim() == 2:
                rope = tuple(t[:, None] for t in rope)  # 2 x (B, 1, T, hs): the same angles for every head
        x = self.transformer.drop(x)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, cache, rope, mask)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(
                    f"GPT.forward: targets have shape {tuple(targets.shape)} but idx has "
                    f"{tuple(idx.shape)}; pass targets = ids[:, 1:] for idx = ids[:, :-1]."
                )
            loss = F.cross_entropy(
                logits.view(B * T, -1), targets.reshape(B * T), ignore_index=-100
            )  # mean over the positions whose target is not -100
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        stop_ids: Iterable[int] | None = None,
        on_token: Callable[[int], None] | None = None,
        repetition_penalty: float = 1.0,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Append up to ``max_new_tokens`` tokens to ``idx`` (B, T); return (B, T + new).

        The one generation loop of the course: samples in 05, every chat reply (``utils.replies``).

        - temperature=0 is greedy (argmax); top_k / top_p keep only the k most likely
          tokens / the smallest set whose probability reaches p; ``repetition_penalty``
          > 1 makes every token already in the text less likely (CTRL's rule, as
          ``transformers``): a cure for the loops small and quantized models fall into.
        - ``attention_mask`` (B, T): False at left padding (``left_pad``), so prompts of
          different lengths share one batch; each row gets the tokens it would get alone.
        - With ``use_cache`` each step feeds only the newest token and reuses the
          cached keys and values. Once the text outgrows block_size, the window slides
          and every position changes, so cached keys are stale: both paths then
          recompute on the last block_size tokens, and greedy decoding gives the same
          tokens with or without the cache.
        - ``stop_ids``: a row is finished once it produces one of them (the stop token is
          kept); finished rows repeat it while others go on, and generation ends when
          every row is finished.
        - ``on_token(token_id)``: called with each new token that is not a stop token,
          as soon as it is chosen (streaming); only for a batch of one.
        - ``generator``: a ``torch.Generator`` on the model's device, for reproducible sampling.
        The model is put in eval mode meanwhile (no dropout).
        """
        if on_token is not None and idx.size(0) != 1:
            raise ValueError(f"generate: on_token streams one conversation; got a batch of {idx.size(0)}.")
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={repetition_penalty}; use 1.0 (off) or a number > 1.")
        padded = attention_mask is not None and not bool(attention_mask.all())
        real = torch.ones_like(idx, dtype=torch.bool) if attention_mask is None else attention_mask.bool()  # (B, T)
        if real.shape != idx.shape or not bool(real[:, -1].all()):
            raise ValueError("generate: attention_mask must have idx's shape and pad on the left (left_pad), "
                             "so that every row's last token is a real one.")
        stop = torch.tensor(sorted(set(stop_ids or ())), dtype=torch.long, device=idx.device)  # (n_stop,)
        was_training = self.training
        self.eval()
        block_size = self.config.block_size
        cache = None
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,)
        for _ in range(max_new_tokens):
            if cache is not None and len(cache) < block_size:
                logits, _ = self(idx[:, -1:], cache=cache, attention_mask=real if padded else None)  # (B, 1, V)
            else:  # first step, no cache, or the window is full: run the whole (cropped) context
                context, context_real = idx[:, -block_size:], real[:, -block_size:]  # (B, <=block_size)
                room_left = context.size(1) < block_size
                cache = KVCache(self.config.n_layer) if use_cache and room_left else None
                logits, _ = self(context, cache=cache, attention_mask=context_real if padded else None)  # (B, T, V)
            last = logits[:, -1, :]  # (B, V)
            if repetition_penalty != 1.0:
                seen = torch.where(real, idx, idx[:, -1:])  # (B, T): padding replaced by a token the row has
                last = penalize_repetition(last, seen, repetition_penalty)  # (B, V)
            next_id = sample_next_token(last, temperature, top_k, top_p, generator)  # (B, 1)
            next_id = torch.where(finished[:, None], idx[:, -1:], next_id)  # (B, 1): finished rows repeat their stop
            idx = torch.cat([idx, next_id], dim=1)  # (B, T + 1)
            real = torch.cat([real, torch.ones_like(next_id, dtype=torch.bool)], dim=1)  # (B, T + 1)
            is_stop = torch.isin(next_id[:, 0], stop)  # (B,)
            if on_token is not None and not bool(is_stop[0]):
                on_token(int(next_id[0, 0]))
            finished |= is_stop
            if bool(finished.all()):
                break
        self.train(was_training)
        return idx

    # ---- exchanging weights with transformers' GPT2LMHeadModel and LlamaForCausalLM ----

    @classmethod
    def from_hf(cls, hf_model) -> "GPT":
        """Our GPT with the weights of a ``transformers`` GPT2LMHeadModel or LlamaForCausalLM (same logits)."""
        model_type = getattr(hf_model.config, "model_type", None)
        if model_type == "gpt2":
            config, theirs = _gpt2_config_and_weights(hf_model)
        elif model_type == "llama":
            config, theirs = _llama_config_and_weights(hf_model)
        else:
            raise ValueError(f"GPT.from_hf: a {type(hf_model).__name__} (model_type={model_type!r}); "
                             "this GPT converts GPT2LMHeadModel ('gpt2') and LlamaForCausalLM ('llama') only.")
        model = cls(config)
        ours = model.state_dict()
        missing = sorted(set(ours) - set(theirs))
        if missing:
            raise ValueError(f"GPT.from_hf: the {model_type} checkpoint has no weight for {missing[:3]}.")
        model.load_state_dict({name: theirs[name] for name in ours})  # their extra buffers are left out
        model.tie_weights()  # load_state_dict copies values; make the tie explicit again
        return model.to(device=hf_model.device, dtype=hf_model.dtype)

    def to_hf(self, **config_overrides):
        """A ``transformers`` model with our weights (same logits): GPT2LMHeadModel or LlamaForCausalLM.

        ``config_overrides`` go to the transformers config (e.g. ``eos_token_id=...`` for
        a chat model). GPT-2 layout with ``bias=False``: the biases GPT-2 always has are zero.
        """
        layout = self.config.layout
        if layout == "gpt2":
            hf_model = _to_gpt2(self, config_overrides)
        elif layout == "llama":
            hf_model = _to_llama(self, config_overrides)
        else:
            raise ValueError("GPT.to_hf: this config mixes GPT-2 and Llama blocks "
                             f"(norm={self.config.norm!r}, position={self.config.position!r}, "
                             f"mlp={self.config.mlp!r}); transformers has no class for it. Use one layout.")
        device = self.transformer.wte.weight.device
        return hf_model.to(device=device, dtype=self.transformer.wte.weight.dtype).train(self.training)

    @classmethod
    def from_pretrained(cls, name: str = "gpt2") -> "GPT":
        """A hub checkpoint (GPT-2's "gpt2" ... "gpt2-xl", or a Llama-layout model) as our GPT.

        Needs the internet (or the hub cache); offline, build one with ``GPT(config)``,
        load a local folder with ``GPT.from_hf(AutoModelForCausalLM.from_pretrained(folder))``,
        or use ``utils.pretrained.load_smollm2()``, which ships with the course.
        """
        from transformers import AutoModelForCausalLM

        try:
            hf_model = AutoModelForCausalLM.from_pretrained(name)
        except OSError as error:
            raise OSError(
                f"GPT.from_pretrained({name!r}) could not get the weights from the Hugging Face hub "
                "(offline?). Use a local folder: GPT.from_hf(AutoModelForCausalLM.from_pretrained(folder)), "
                "or utils.pretrained.load_smollm2() offline."
            ) from error
        return cls.from_hf(hf_model)


# ---- the conversions, one pair per transformers class ----


def _without_initialization(model_class, config):
    """A transformers model whose random initialization is skipped: every weight is overwritten next."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return model_class(config)


def _check_supported(model_name: str, settings: dict) -> None:
    """settings: {field: (value, allowed values)}; a clear error for the first unsupported one."""
    for field, (value, allowed) in settings.items():
        if value not in allowed:
            raise ValueError(f"GPT.from_hf: {model_name} config.{field}={value!r} is not supported; "
                             f"this GPT needs one of {allowed}.")


def _gpt2_config_and_weights(hf_model) -> tuple[GPTConfig, dict]:
    c = hf_model.config
    _check_supported("GPT-2", {
        "activation_function": (c.activation_function, ("gelu_new", "gelu_pytorch_tanh")),
        "n_inner": (c.n_inner, (None, 4 * c.n_embd)),
        "scale_attn_weights": (c.scale_attn_weights, (True,)),
        "scale_attn_by_inverse_layer_idx": (c.scale_attn_by_inverse_layer_idx, (False,)),
        "add_cross_attention": (c.add_cross_attention, (False,)),
    })
    config = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                       n_embd=c.n_embd, dropout=c.resid_pdrop, bias=True, layer_norm_epsilon=c.layer_norm_epsilon)
    theirs = hf_model.state_dict()
    if "lm_head.weight" in theirs and not torch.equal(theirs["lm_head.weight"], theirs["transformer.wte.weight"]):
        raise ValueError("GPT.from_hf: this GPT-2's lm_head is not tied to the token embedding; GPT-2 always ties them.")
    ours = {name: w.t() if name.endswith(CONV1D_WEIGHTS) else w  # Conv1D (in, out) -> Linear (out, in)
            for name, w in theirs.items()}
    ours["lm_head.weight"] = theirs["transformer.wte.weight"]  # tied: the same matrix
    return config, ours


def _to_gpt2(model: GPT, config_overrides: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    gpt2_vocab = c.vocab_size == 50257  # GPT-2's special token 50256 only exists in its vocabulary
    settings = dict(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        n_inner=None, activation_function="gelu_new", resid_pdrop=c.dropout, embd_pdrop=c.dropout,
        attn_pdrop=c.dropout, layer_norm_epsilon=c.layer_norm_epsilon, initializer_range=c.init_std,
        tie_word_embeddings=True, bos_token_id=50256 if gpt2_vocab else None,
        eos_token_id=50256 if gpt2_vocab else None, attn_implementation="sdpa",
    )
    settings.update(config_overrides)
    hf_model = _without_initialization(GPT2LMHeadModel, GPT2Config(**settings))
    ours = model.state_dict()
    converted = {}
    for name, w in hf_model.state_dict().items():
        if name in ours:
            converted[name] = ours[name].t() if name.endswith(CONV1D_WEIGHTS) else ours[name]
        elif name.endswith(".bias"):  # bias=False: GPT-2 has the bias, ours is zero
            converted[name] = torch.zeros_like(w)
        else:
            raise KeyError(f"GPT.to_hf: no weight of ours matches {name!r}.")
    hf_model.load_state_dict(converted)
    hf_model.tie_weights()  # GPT-2 ties lm_head to wte (skipped with the initialization)
    return hf_model


# Llama's names for ours, per block: q/k/v are one fused c_attn, gate/up one fused c_fc.
LLAMA_BLOCK_NAMES = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}


def _rope_theta(c) -> float:
    parameters = getattr(c, "rope_parameters", None) or {}
    rope_type = parameters.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"GPT.from_hf: RoPE scaling {rope_type!r} is not supported; this GPT uses plain RoPE.")
    theta = parameters.get("rope_theta", getattr(c, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def _llama_config_and_weights(hf_model) -> tuple[GPTConfig, dict]:
    c = hf_model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    _check_supported("Llama", {
        "hidden_act": (c.hidden_act, ("silu",)),
        "head_dim": (head_dim, (c.hidden_size // c.num_attention_heads,)),
        "attention_bias": (c.attention_bias, (False,)),
        "mlp_bias": (getattr(c, "mlp_bias", False), (False,)),
    })
    config = GPTConfig.llama(
        vocab_size=c.vocab_size, block_size=c.max_position_embeddings, n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads, n_kv_head=c.num_key_value_heads, n_embd=c.hidden_size,
        mlp_hidden=c.intermediate_size, layer_norm_epsilon=c.rms_norm_eps, rope_theta=_rope_theta(c),
        tie_embeddings=bool(c.tie_word_embeddings), dropout=float(getattr(c, "attention_dropout", 0.0)),
    )
    theirs = hf_model.state_dict()
    ours = {"transformer.wte.weight": theirs["model.embed_tokens.weight"],
            "transformer.ln_f.weight": theirs["model.norm.weight"],
            "lm_head.weight": theirs.get("lm_head.weight", theirs["model.embed_tokens.weight"])}
    for i in range(config.n_layer):
        layer = f"model.layers.{i}."
        for name, hf_name in LLAMA_BLOCK_NAMES.items():
            ours[f"transformer.h.{i}.{name}"] = theirs[layer + hf_name]
        attn = [theirs[f"{layer}self_attn.{p}_proj.weight"] for p in "qkv"]
        ours[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(attn, dim=0)  # (C + 2 kv, C)
        mlp = [theirs[f"{layer}mlp.{p}_proj.weight"] for p in ("gate", "up")]
        ours[f"transformer.h.{i}.mlp.c_fc.weight"] = torch.cat(mlp, dim=0)  # (2H, C)
    return config, ours


def _to_llama(model: GPT, config_overrides: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    if c.bias:
        raise ValueError("GPT.to_hf: a Llama-layout GPT with bias=True; Llama checkpoints have no biases "
                         "(build it with GPTConfig.llama(...), which sets bias=False).")
    settings = dict(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.hidden_size,
        num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads,
        max_position_embeddings=c.block_size, rms_norm_eps=c.layer_norm_epsilon, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, tie_word_embeddings=c.tie_embeddings,
        attention_bias=False, mlp_bias=False, attention_dropout=c.dropout, initializer_range=c.init_std,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa",
    )
    settings.update(config_overrides)
    hf_model = _without_initialization(LlamaForCausalLM, LlamaConfig(**settings))
    ours = model.state_dict()
    converted = {"model.embed_tokens.weight": ours["transformer.wte.weight"],
                 "model.norm.weight": ours["transformer.ln_f.weight"],
                 "lm_head.weight": ours["lm_head.weight"]}
    kv = c.kv_heads * c.head_size
    for i in range(c.n_layer):
        layer, block = f"model.layers.{i}.", f"transformer.h.{i}."
        for name, hf_name in LLAMA_BLOCK_NAMES.items():
            converted[layer + hf_name] = ours[block + name]
        q, k, v = ours[block + "attn.c_attn.weight"].split([c.n_embd, kv, kv], dim=0)
        converted.update({f"{layer}self_attn.q_proj.weight": q, f"{layer}self_attn.k_proj.weight": k,
                          f"{layer}self_attn.v_proj.weight": v})
        gate, up = ours[block + "mlp.c_fc.weight"].chunk(2, dim=0)
        converted.update({f"{layer}mlp.gate_proj.weight": gate, f"{layer}mlp.up_proj.weight": up})
    hf_model.load_state_dict(converted)
    if c.tie_embeddings:
        hf_model.tie_weights()
    return hf_model


# ---- sampling: turning the last position's logits into the next token ----


def penalize_repetition(logits: torch.Tensor, idx: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token that already occurs in ``idx`` (B, T) less likely. logits: (B, V).

    CTRL's rule (Keskar et al. 2019), as ``transformers``' repetition_penalty: a positive
    logit is divided by ``penalty``, a negative one multiplied, so both move down.
    """
    seen = logits.gather(1, idx)  # (B, T): the logits of the tokens already in the text
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)  # (B, T)
    return logits.scatter(1, idx, seen)  # (B, V)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top k / outside the top-p nucleus. logits: (B, V)."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k={top_k}; use an integer >= 1 (or None for no limit).")
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p}; use a probability in (0, 1] (or None for no limit).")
        if top_p == 1.0:  # the nucleus is everything: nothing to cut (a float sum may reach 1.0 early)
            return logits
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V), most likely first
        probs = F.softmax(sorted_logits.double(), dim=-1)  # (B, V), float64: the running sum stays exact enough
        mass_before = probs.cumsum(dim=-1) - probs  # (B, V): probability of the tokens ranked above
        drop_sorted = mass_before >= top_p  # (B, V): the nucleus already reached p without this token
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V), back in vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))  # (B, V)
    return logits


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row from logits (B, V): greedy at temperature 0, else sampled. -> (B, 1)."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature}; use 0 (greedy) or a positive number.")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = filter_logits(logits / temperature, top_k, top_p)  # (B, V)
    probs = F.softmax(logits.float(), dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
