"""How big is a GPT? Parameters, FLOPs and training memory, computed on paper.

Nothing here allocates a model: ``count_parameters(GPT_PRESETS["gpt3-175b"])``
is instant. Notebook 03 uses it for the size table (GPT-1/2/3, and SmolLM2-135M
in the Llama layout) and the "what fits my GPU" table (a Colab T4 has 16 GB).
"""

from __future__ import annotations

from utils.model import GPTConfig

__all__ = [
    "GPT_PRESETS",
    "PUBLISHED_PARAMETERS",
    "count_parameters",
    "flops_per_token",
    "training_memory",
    "largest_batch_that_fits",
]


def _preset(n_layer, n_head, n_embd, block_size, vocab_size=50257) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


GPT_PRESETS: dict[str, GPTConfig] = {
    # GPT-1 (Radford et al. 2018): 40,478 BPE tokens, 512 positions. It used post-LayerNorm
    # blocks and no final LayerNorm; with our (GPT-2) block the count differs by 1,536.
    "gpt1": _preset(12, 12, 768, block_size=512, vocab_size=40478),
    # GPT-2 (Radford et al. 2019), the sizes OpenAI released.
    "gpt2": _preset(12, 12, 768, block_size=1024),
    "gpt2-medium": _preset(24, 16, 1024, block_size=1024),
    "gpt2-large": _preset(36, 20, 1280, block_size=1024),
    "gpt2-xl": _preset(48, 25, 1600, block_size=1024),
    # GPT-3 (Brown et al. 2020), Table 2.1; 2048 positions, GPT-2's tokenizer. GPT-3 also
    # alternates dense and locally banded sparse attention, which changes no parameter count.
    "gpt3-small": _preset(12, 12, 768, block_size=2048),
    "gpt3-medium": _preset(24, 16, 1024, block_size=2048),
    "gpt3-large": _preset(24, 16, 1536, block_size=2048),
    # Table 2.1 lists 24 heads of 128 for d_model 2048, which do not multiply out;
    # we keep d_model and the head size: 16 heads of 128.
    "gpt3-xl": _preset(24, 16, 2048, block_size=2048),
    "gpt3-2.7b": _preset(32, 32, 2560, block_size=2048),
    "gpt3-6.7b": _preset(32, 32, 4096, block_size=2048),
    # Table 2.1 lists d_model 5140 with 40 heads of 128 (= 5120); we use 5120.
    "gpt3-13b": _preset(40, 40, 5120, block_size=2048),
    "gpt3-175b": _preset(96, 96, 12288, block_size=2048),
    # SmolLM2-135M (Hugging Face 2024), the base of the chat model the course runs offline
    # (utils.pretrained.load_smollm2): the Llama layout, 3 key/value heads for 9 query heads,
    # a SwiGLU feed-forward of width 1536, RoPE with theta 100,000, tied embeddings.
    "smollm2-135m": GPTConfig.llama(vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3,
                                    n_embd=576, mlp_hidden=1536, rope_theta=100000.0, tie_embeddings=True),
}

# The figures the papers (GPT-1, GPT-3) and the released checkpoints (GPT-2 and SmolLM2,
# counted with the embedding tied to the output layer) give. The checkpoints' are exact;
# the papers' are rounded.
PUBLISHED_PARAMETERS: dict[str, int] = {
    "gpt1": 117_000_000,
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "gpt3-small": 125_000_000,
    "gpt3-medium": 350_000_000,
    "gpt3-large": 760_000_000,
    "gpt3-xl": 1_300_000_000,
    "gpt3-2.7b": 2_700_000_000,
    "gpt3-6.7b": 6_700_000_000,
    "gpt3-13b": 13_000_000_000,
    "gpt3-175b": 175_000_000_000,
    "smollm2-135m": 134_515_008,
}


def count_parameters(config: GPTConfig, non_embedding: bool = False) -> int:
    """The exact number of parameters of ``GPT(config)``, without building it.

    GPT-2 layout, per block: two LayerNorms (2C each), attention (C x 3C and C x C
    matrices) and the MLP (C x 4C and 4C x C), about 12 C^2. Plus the token and
    position embeddings and the final LayerNorm; the output layer is tied to the
    token embedding (no extra). The Llama layout counts RMSNorm gains only (C), the
    smaller key/value projections of grouped-query attention, SwiGLU's three
    matrices (gate, up: C x H; down: H x C), no position table, and a separate
    output matrix when the embeddings are not tied.
    ``non_embedding`` drops the position embeddings, as ``GPT.num_parameters``.
    """
    C, V, T, H, b = config.n_embd, config.vocab_size, config.block_size, config.hidden_size, int(config.bias)
    kv = config.kv_heads * config.head_size  # width of all key (or value) heads
    norm = C if config.norm == "rmsnorm" else C + b * C  # gain (+ bias)
    attention = (C * (C + 2 * kv) + b * (C + 2 * kv)) + (C * C + b * C)  # c_attn (q, k, v) + c_proj
    up = 2 * H if config.mlp == "swiglu" else H  # swiglu: gate and up
    mlp = (C * up + b * up) + (H * C + b * C)  # c_fc + c_proj
    block = 2 * norm + attention + mlp
    positions = T * C if config.position == "learned" else 0
    output = 0 if config.tie_embeddings else V * C
    total = V * C + positions + config.n_layer * block + norm + output
    return total - positions if non_embedding else total


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward): 6 N + 12 L T C.

    The approximation of Kaplan et al. 2020 ("Scaling Laws for Neural Language Models",
    Sec. 2.1) in the form of PaLM (Chowdhery et al. 2022, Appendix B), as nanoGPT's
    ``estimate_mfu``. Each parameter in a matmul costs 2 FLOPs per token forward (one
    multiply, one add) and 4 backward: 6 N, with N = ``count_parameters(non_embedding=True)``.
    Attention scores q k^T and their use on v add 2 x 2 T C per layer forward, x3 with the
    backward: 12 L T C (T = ``seq_len``, default block_size; causal kernels skip about half).
    """
    T = config.block_size if seq_len is None else seq_len
    N = count_parameters(config, non_embedding=True)
    return 6 * N + 12 * config.n_layer * T * config.n_embd


OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1, "none": 0}  # values kept per parameter


def training_memory(
    config: GPTConfig,
    batch_size: int,
    dtype_bytes: int = 4,
    optimizer: str = "adamw",
    seq_len: int | None = None,
    activation_bytes: int | None = None,
) -> dict[str, int]:
    """An estimate, in bytes, of what training needs on the device, part by part.

    - weights and gradients: N values each, ``dtype_bytes`` per value (4 = fp32, 2 = bf16/fp16);
    - optimizer states: AdamW keeps 2 values per parameter (m and v), SGD with momentum 1;
    - activations saved for the backward pass, after Korthikanti et al. 2022 ("Reducing
      Activation Recomputation in Large Transformer Models", Sec. 4.1): about 17 values
      per token and channel per layer (34 bytes at 16 bits), plus 2.5 T values per token
      and head for the attention matrix when it is materialized (``attention="explicit"``;
      fused SDPA kernels do not store it), plus the logits and their softmax
      (V values per token, the softmax in fp32). ``activation_bytes`` defaults to
      ``dtype_bytes``; use 2 for mixed precision with fp32 weights.
    Not counted: the CUDA context (~0.3-1 GB), allocator fragmentation, temporary buffers.
    """
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer={optimizer!r}; use one of {tuple(OPTIMIZER_STATES)}.")
    T = config.block_size if seq_len is None else seq_len
    act = dtype_bytes if activation_bytes is None else activation_bytes
    N = count_parameters(config)
    tokens = batch_size * T
    per_layer_values = 17 * tokens * config.n_embd
    if config.attention == "explicit":
        per_layer_values += 2.5 * config.n_head * T * tokens
    logits = tokens * config.vocab_size * (act + 4)  # logits + fp32 softmax for the loss
    parts = {
        "weights": N * dtype_bytes,
        "gradients": N * dtype_bytes,
        "optimizer_states": OPTIMIZER_STATES[optimizer] * N * dtype_bytes,
        "activations": int(config.n_layer * per_layer_values * act + logits),
    }
    parts["total"] = sum(parts.values())
    return parts


def largest_batch_that_fits(config: GPTConfig, memory_bytes: float, **kwargs) -> int:
    """The largest batch size whose ``training_memory`` total fits in ``memory_bytes`` (0: none).

    The total is a fixed part (weights, gradients, optimizer) plus activations that grow
    linearly with the batch, so the answer is a division.
    """
    fixed = training_memory(config, 0, **kwargs)["total"]
    per_sequence = training_memory(config, 1, **kwargs)["total"] - fixed
    return max(0, int((memory_bytes - fixed) // per_sequence))
