"""A GPT in one file: the model notebooks 03-07 build, train, evaluate and chat with.

Read it top to bottom: the config, then one class per idea
(``CausalSelfAttention``, ``MLP``, ``Block``, ``GPT``), then sampling. It keeps
GPT-2's parameter names and layout (fused ``c_attn``, ``c_proj``, ``c_fc``), so
``GPT.from_hf`` / ``GPT.to_hf`` exchange weights with ``transformers``'
``GPT2LMHeadModel`` and give the same logits. Modelled on nanoGPT's model.py.

The size calculator (presets of GPT-1/2/3, parameter counts without building a
model, FLOPs and memory) lives in ``utils/model_sizes.py``; its names are also
importable from here (``from utils.model import GPT_PRESETS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

ATTENTION_KINDS = ("sdpa", "explicit")
# GPT-2 stores these four as transformers' Conv1D, whose weight is (in, out): the
# transpose of nn.Linear's (out, in). Everything else has the same shape in both.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # number of token ids (GPT-2's BPE: 50,257)
    block_size: int = 1024  # longest sequence the model can see (learned positions)
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block; n_embd must be divisible by it
    n_embd: int = 768  # width of the residual stream (channels C)
    dropout: float = 0.0  # dropout rate: 0.0 for pretraining small models, ~0.1 to fine-tune
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2: True)
    layer_norm_epsilon: float = 1e-5  # added to the variance inside LayerNorm (GPT-2: 1e-5)
    attention: str = "sdpa"  # "sdpa": PyTorch's fused kernel; "explicit": the formula, for teaching
    init_std: float = 0.02  # standard deviation of GPT-2's normal initialization

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "choose n_embd = n_head * head size (e.g. n_head=4, n_embd=128)."
            )
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"GPTConfig: attention={self.attention!r}; use one of {ATTENTION_KINDS}.")


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """(n_queries, n_keys) booleans, True where a query may look at a key.

    The queries are the *last* n_queries of the n_keys positions (with a KV cache
    the keys also hold the earlier tokens), so query i sees keys 0 .. n_keys - n_queries + i.
    """
    ones = torch.ones(n_queries, n_keys, dtype=torch.bool, device=device)  # (Tq, Tk)
    return ones.tril(diagonal=n_keys - n_queries)  # (Tq, Tk)


class KVCache:
    """The keys and values every layer has already computed, one entry per layer.

    While generating, token t+1 only needs its own query, key and value: the keys
    and values of tokens 0..t do not change (the model is causal), so we keep them
    instead of recomputing them at every step.
    """

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer  # per layer (B, nh, S, hs)
        self.values: list[torch.Tensor | None] = [None] * n_layer  # per layer (B, nh, S, hs)

    def __len__(self) -> int:
        """How many positions are cached (S); the next token sits at position S."""
        return 0 if self.keys[0] is None else self.keys[0].size(2)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append this step's keys and values (B, nh, T, hs); return all of them (B, nh, S+T, hs)."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)  # (B, nh, S+T, hs)
            v = torch.cat([self.values[layer], v], dim=2)  # (B, nh, S+T, hs)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each token only sees itself and earlier tokens."""

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_size = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.attention = config.attention  # "sdpa" | "explicit"; may be changed on the module
        self.layer_index = layer_index  # which entry of a KVCache is ours
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # mixes the heads back
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()  # batch, time (sequence length), channels (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, nh, S, hs), S = cached + T
        if self.attention == "explicit":
            y = self.explicit_attention(q, k, v)  # (B, nh, T, hs)
        else:
            y = self.sdpa_attention(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)

    def explicit_attention(self, q, k, v) -> torch.Tensor:
        """softmax(q k^T / sqrt(hs) + causal mask) v, written out: what the notebook derives."""
        T, S = q.size(2), k.size(2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_size))  # (B, nh, T, S)
        att = att.masked_fill(~causal_mask(T, S, q.device), float("-inf"))  # (B, nh, T, S)
        att = F.softmax(att, dim=-1)  # (B, nh, T, S): each row sums to 1
        att = self.attn_dropout(att)  # (B, nh, T, S)
        return att @ v  # (B, nh, T, hs)

    def sdpa_attention(self, q, k, v) -> torch.Tensor:
        """The same computation in PyTorch's fused kernel (FlashAttention on recent GPUs)."""
        T, S = q.size(2), k.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if T == S:  # no cache, or the first step: the plain triangular mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)  # (B, nh, T, hs)
        # With a cache the new queries are the last T of S positions. is_causal=True would
        # align the triangle top-left, so pass the mask (none needed for a single new token).
        mask = None if T == 1 else causal_mask(T, S, q.device)  # (T, S)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, T, hs)


class MLP(nn.Module):
    """The feed-forward network applied to every position on its own: widen 4x, GELU, narrow."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c_fc(x)  # (B, T, 4C)
        x = F.gelu(x, approximate="tanh")  # (B, T, 4C): GPT-2's GELU ("gelu_new"), one fused kernel
        x = self.c_proj(x)  # (B, T, C)
        return self.dropout(x)  # (B, T, C)


class Block(nn.Module):
    """One transformer block, pre-LayerNorm as GPT-2: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # (B, T, C): tokens talk to each other
        x = x + self.mlp(self.ln_2(x))  # (B, T, C): each token thinks on its own
        return x


class GPT(nn.Module):
    """Token + position embeddings, n_layer blocks, a final LayerNorm, and a tied output layer."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (as GPT-2): the output layer reuses the token embedding matrix, so a
        # token's "input meaning" and "output score" share one vector; saves V*C parameters.
        self.transformer.wte.weight = self.lm_head.weight
        # GPT-2's initialization: normal(0, 0.02) everywhere, biases zero, and the two
        # projections that write into the residual stream (attn.c_proj, mlp.c_proj) scaled
        # by 1/sqrt(2 * n_layer), so the stream's variance does not grow with depth.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters, counting the tied embedding / lm_head matrix once.

        ``non_embedding=True`` leaves out the position embeddings (a table lookup, no
        arithmetic). The token embedding stays in: it is also the lm_head weight, a real
        matmul. This is nanoGPT's convention and the N of ``flops_per_token``.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if non_embedding:
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """Logits for every position, and the loss when ``targets`` are given.

        idx:     (B, T) token ids, T <= block_size.
        targets: (B, T) the token that should come *after* each position, i.e. already
                 shifted by the caller: for a text ``ids``, ``idx = ids[:, :-1]`` and
                 ``targets = ids[:, 1:]`` (as nanoGPT). logits[:, t] is scored against
                 targets[:, t]. Positions whose target is -100 are ignored (padding,
                 prompt tokens during fine-tuning).
        cache:   a KVCache when generating: idx then holds only the new tokens, which
                 sit at positions len(cache), len(cache) + 1, ...
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
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C), broadcast over the batch
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, cache)  # (B, T, C)
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
        eos_id: int | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T); return (B, T + new).

        temperature=0 is greedy (argmax); top_k / top_p keep only the k most likely tokens /
        the smallest set whose probability reaches p. With ``use_cache`` each step feeds only
        the newest token and reuses the cached keys and values. Once the text outgrows
        block_size, the window slides and every position changes, so cached keys (computed
        at the old positions) are stale: both paths then recompute on the last block_size
        tokens, and greedy decoding gives the same tokens with or without the cache.
        With ``eos_id`` generation stops once every row has produced it (finished rows are
        padded with eos_id). The model is put in eval mode meanwhile (no dropout).
        """
        was_training = self.training
        self.eval()
        block_size = self.config.block_size
        cache = None
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,)
        for _ in range(max_new_tokens):
            if cache is not None and len(cache) < block_size:
                logits, _ = self(idx[:, -1:], cache=cache)  # (B, 1, V): only the newest token
            else:  # first step, no cache, or the window is full: run the whole (cropped) context
                context = idx[:, -block_size:]  # (B, <=block_size)
                room_left = context.size(1) < block_size
                cache = KVCache(self.config.n_layer) if use_cache and room_left else None
                logits, _ = self(context, cache=cache)  # (B, T, V)
            next_id = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            if eos_id is not None:
                next_id = next_id.masked_fill(finished[:, None], eos_id)  # (B, 1)
                finished |= next_id[:, 0] == eos_id
            idx = torch.cat([idx, next_id], dim=1)  # (B, T + 1)
            if eos_id is not None and bool(finished.all()):
                break
        self.train(was_training)
        return idx

    # ---- exchanging weights with transformers' GPT2LMHeadModel ----

    @classmethod
    def from_hf(cls, hf_model) -> "GPT":
        """Our GPT with the weights of a ``transformers.GPT2LMHeadModel`` (same logits)."""
        c = hf_model.config
        unsupported = {
            "activation_function": (c.activation_function, ("gelu_new", "gelu_pytorch_tanh")),
            "n_inner": (c.n_inner, (None, 4 * c.n_embd)),
            "scale_attn_weights": (c.scale_attn_weights, (True,)),
            "scale_attn_by_inverse_layer_idx": (c.scale_attn_by_inverse_layer_idx, (False,)),
            "add_cross_attention": (c.add_cross_attention, (False,)),
        }
        for field, (value, allowed) in unsupported.items():
            if value not in allowed:
                raise ValueError(f"GPT.from_hf: config.{field}={value!r} is not GPT-2's; expected one of {allowed}.")
        config = GPTConfig(
            vocab_size=c.vocab_size,
            block_size=c.n_positions,
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
            dropout=c.resid_pdrop,
            bias=True,
            layer_norm_epsilon=c.layer_norm_epsilon,
        )
        model = cls(config)
        theirs = hf_model.state_dict()
        if "lm_head.weight" in theirs and not torch.equal(theirs["lm_head.weight"], theirs["transformer.wte.weight"]):
            raise ValueError("GPT.from_hf: lm_head is not tied to the token embedding; our GPT always ties them.")
        ours = model.state_dict()
        theirs.setdefault("lm_head.weight", theirs["transformer.wte.weight"])  # tied: may be stored once
        converted = {}
        for name in ours:
            w = theirs[name]
            converted[name] = w.t() if name.endswith(CONV1D_WEIGHTS) else w  # Conv1D (in, out) -> Linear (out, in)
        model.load_state_dict(converted)
        return model.to(device=hf_model.device, dtype=hf_model.dtype)

    def to_hf(self, **config_overrides):
        """A ``transformers.GPT2LMHeadModel`` with our weights (same logits).

        ``config_overrides`` go to ``GPT2Config`` (e.g. ``eos_token_id=...`` for a chat
        model). With ``bias=False`` the biases GPT-2 always has are set to zero.
        """
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        gpt2_vocab = c.vocab_size == 50257  # GPT-2's special token 50256 only exists in its vocabulary
        settings = dict(
            vocab_size=c.vocab_size,
            n_positions=c.block_size,
            n_embd=c.n_embd,
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_inner=None,  # 4 * n_embd
            activation_function="gelu_new",
            resid_pdrop=c.dropout,
            embd_pdrop=c.dropout,
            attn_pdrop=c.dropout,
            layer_norm_epsilon=c.layer_norm_epsilon,
            initializer_range=c.init_std,
            tie_word_embeddings=True,
            bos_token_id=50256 if gpt2_vocab else None,
            eos_token_id=50256 if gpt2_vocab else None,
            attn_implementation="sdpa",
        )
        settings.update(config_overrides)
        hf_model = GPT2LMHeadModel(GPT2Config(**settings))
        ours = self.state_dict()
        converted = {}
        for name, w in hf_model.state_dict().items():
            if name in ours:
                converted[name] = ours[name].t() if name.endswith(CONV1D_WEIGHTS) else ours[name]
            elif name.endswith(".bias"):  # bias=False: GPT-2 has the bias, ours is zero
                converted[name] = torch.zeros_like(w)
            else:
                raise KeyError(f"GPT.to_hf: no weight of ours matches {name!r}.")
        hf_model.load_state_dict(converted)
        device = self.transformer.wte.weight.device
        return hf_model.to(device=device, dtype=self.transformer.wte.weight.dtype).train(self.training)

    @classmethod
    def from_pretrained(cls, name: str = "gpt2") -> "GPT":
        """OpenAI's GPT-2 weights ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl") from the hub.

        Needs the internet (or the hub cache); offline, build one with ``GPT(config)`` or
        load a local copy with ``GPT.from_hf(GPT2LMHeadModel.from_pretrained(folder))``.
        """
        from transformers import GPT2LMHeadModel

        try:
            hf_model = GPT2LMHeadModel.from_pretrained(name)
        except OSError as error:
            raise OSError(
                f"GPT.from_pretrained({name!r}) could not get the weights from the Hugging Face hub "
                "(offline?). Use a local folder: GPT.from_hf(GPT2LMHeadModel.from_pretrained(folder))."
            ) from error
        return cls.from_hf(hf_model)


# ---- sampling: turning the last position's logits into the next token ----


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
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V), most likely first
        probs = F.softmax(sorted_logits, dim=-1)  # (B, V)
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
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


def __getattr__(name: str):
    """``from utils.model import GPT_PRESETS`` etc.: the size calculator lives in model_sizes.py."""
    from utils import model_sizes

    if name in model_sizes.__all__:
        return getattr(model_sizes, name)
    raise AttributeError(f"module 'utils.model' has no attribute {name!r}")
