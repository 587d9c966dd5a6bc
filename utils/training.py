"""The training loop the course uses everywhere: the CLI, notebook 04 (pretraining), notebook 06 (fine-tuning).

One function, ``train(model, train_ids, val_ids, cfg, out_dir)``, does what notebook 04
builds step by step:

- random windows of the token stream, the targets shifted by one (``get_batch``);
- AdamW, with weight decay on matrices only (``make_optimizer``);
- linear warm-up, then a cosine down to ``min_lr`` (``learning_rate_at``);
- gradient accumulation that weighs every scored token equally, and clipping;
  mixed precision (bf16, or fp16 with a GradScaler on GPUs without bf16 such as
  the T4); optional ``torch.compile``;
- periodic validation loss, text samples, tokens/s and MFU (real tokens, not padding);
- atomic checkpoints and an *exact* resume (same weights, bit for bit, on the CPU);
- several processes with DistributedDataParallel under ``torchrun``.

Batches are pluggable: pass ``batch_fn(split, generator) -> (x, y)`` and the loop
never looks at token arrays, so fine-tuning batches (targets -100 on prompt and
padding positions) go through the same code. A ``batch_fn`` whose rows are padded
returns ``(x, y, mask)``, mask (B, T) 1 on real tokens and 0 on padding, so tokens/s
and MFU count only real tokens. Batches may come on the CPU: the loop moves them.

The loss is pluggable too: ``loss_fn(model, (x, y)) -> (mean_loss, n_scored)`` replaces
next-token cross-entropy (``token_loss``), so a preference loss such as DPO (notebook 07)
trains through this same loop; x and y then mean whatever the loss reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils import checkpoint as ckpt
from utils.io import write_json_atomically
from utils.model_sizes import flops_per_token

METRICS_FILE = "metrics.json"
IGNORE_INDEX = -100  # a target the loss skips (prompt and padding positions); PyTorch's default ignore_index


@dataclass
class TrainConfig:
    # ---- batches ----
    batch_size: int = 12  # sequences per micro-batch (per process)
    block_size: int = 64  # tokens per sequence (<= the model's block_size)
    grad_accum_steps: int = 1  # micro-batches per optimizer step (every scored token weighs the same)
    # ---- schedule ----
    max_iters: int = 2000  # optimizer steps in the whole run
    learning_rate: float = 3e-3  # peak, reached after the warm-up (small models; GPT-2 124M: ~6e-4)
    min_lr: float = 1e-4  # floor of the cosine (about learning_rate / 10 .. / 20)
    warmup_iters: int = 50  # steps of linear warm-up from ~0 to learning_rate
    lr_decay_iters: int | None = None  # step where the cosine reaches min_lr; None = max_iters
    # ---- AdamW ----
    weight_decay: float = 0.1  # decoupled weight decay, on matrices only
    beta1: float = 0.9  # momentum of the gradient average
    beta2: float = 0.99  # momentum of the squared-gradient average (0.95-0.999)
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = no clipping
    # ---- watching ----
    eval_interval: int = 250  # steps between validation estimates (and checkpoints)
    eval_iters: int = 20  # batches averaged per loss estimate
    log_interval: int = 10  # steps between entries of the loss history
    sample_interval: int = 0  # steps between text samples (needs decode); 0 = only at the end
    sample_tokens: int = 100  # tokens per sample
    checkpoint: bool = True  # write checkpoints to out_dir (at every eval and at the end)
    progress: bool = True  # tqdm progress bar
    verbose: bool = True  # print validation losses and samples as they come
    # ---- hardware ----
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "mps"
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16" | "float16"
    compile: bool = False  # torch.compile the model (a minute to compile, faster steps on GPUs)
    seed: int = 1337  # seeds torch, numpy, Python and the batch sampler (+ rank in DDP)


# The nanoGPT "shakespeare_char on a laptop" settings, as a preset to compare against.
NANOGPT_SHAKESPEARE = dict(
    learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000,
    beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
)
# Ours for the same 4x4x128 model, batch 12, 2000 steps (benchmarks/shakespeare_quality.py):
# a 3x higher peak and half the warm-up. Small models at small batches tolerate the larger
# steps and get more done in a fixed budget. These are TrainConfig's defaults.
TUNED_SMALL = dict(
    learning_rate=3e-3, min_lr=1e-4, warmup_iters=50, lr_decay_iters=2000,
    beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
)


# ---------------------------------------------------------------- data


def get_batch(ids, batch_size: int, block_size: int, generator: np.random.Generator, device="cpu"):
    """``batch_size`` random windows of a 1-D token array (np.memmap works): (x, y), both (B, T).

    The shift: ``y[b, t] = x[b, t + 1]``. Position t of x sees tokens 0..t of its
    window and must predict the next one, which is y[b, t]. (Scoring x against
    itself, ``labels = input_ids`` without a shift, asks the model for the token it
    is looking at: a loss near 0 and a useless model.)
    """
    n = len(ids)
    if n < block_size + 1:
        raise ValueError(
            f"get_batch: {n} tokens cannot hold one window of block_size + 1 = {block_size + 1}; "
            "use more text or a smaller block_size."
        )
    starts = generator.integers(0, n - block_size, size=batch_size)  # (B,)
    windows = np.stack([np.asarray(ids[s : s + block_size + 1], dtype=np.int64) for s in starts])  # (B, T+1)
    windows = torch.from_numpy(windows)
    # (B, T), (B, T): y is x moved one token left. Copies, not views of one buffer: a caller
    # that masks y (y[...] = -100) must not change x.
    x, y = windows[:, :-1].clone(), windows[:, 1:].clone()
    if str(device).startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def token_batches(train_ids, val_ids, batch_size: int, block_size: int, device="cpu"):
    """The default ``batch_fn``: random windows of the train or validation tokens."""
    arrays = {"train": train_ids, "val": val_ids}

    def batch_fn(split: str, generator: np.random.Generator):
        return get_batch(arrays[split], batch_size, block_size, generator, device)

    return batch_fn


# ---------------------------------------------------------------- optimizer and schedule


def learning_rate_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up for ``warmup_iters`` steps, then a cosine from learning_rate to min_lr.

    Warm-up: the first updates come from a random model whose gradients are large
    and whose AdamW statistics are still empty; small steps keep them from wrecking
    the initialization. The cosine then lowers the step size smoothly, so the end
    of training settles into a minimum instead of bouncing around it.
    """
    decay_iters = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices (dim >= 2) decay, biases and LayerNorm gains (dim 1) do not.

    Weight decay pulls weights toward 0, a prior that a matrix should not rely on a
    few huge entries. A bias or a LayerNorm gain is one number per channel that sets
    an offset or a scale: pulling the gains to 0 would shrink the normalized signal
    and fight the very job of LayerNorm, and it regularizes nothing. Embeddings are
    matrices and decay, as in nanoGPT and GPT-2-style training.
    """
    params = [p for p in ckpt.unwrap(model).parameters() if p.requires_grad]  # tied weight once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str = "cpu") -> torch.optim.AdamW:
    extra = {"fused": True} if device_type == "cuda" else {}  # one kernel for all parameters on GPUs
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **extra
    )


# ---------------------------------------------------------------- hardware


def resolve_device(name: str = "auto", local_rank: int = 0) -> str:
    """"auto": this process's GPU (``cuda:<local_rank>``), else Apple's MPS, else the CPU.

    Under torchrun each process takes the GPU of its local rank; with more processes
    than GPUs that GPU does not exist, so we say so instead of CUDA's "invalid device ordinal".
    """
    if name == "auto" and not torch.cuda.is_available():
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name not in ("auto", "cuda"):
        return name
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"Process {local_rank} wants cuda:{local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
            "start at most that many processes (torchrun --nproc_per_node=N), or pass --device cpu."
        )
    return f"cuda:{local_rank}"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """auto: bf16 on GPUs that have it (Ampere and newer), fp16 on older GPUs (T4), fp32 elsewhere."""
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype={name!r}; use one of 'auto', {', '.join(map(repr, table))}.")
    return table[name]


# Dense (no sparsity) tensor-core peaks in FLOP/s, from the vendors' data sheets, for bf16/fp16.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10G": 70e12, "A10": 125e12, "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
}


def peak_flops(device: str, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s for MFU, or None where we do not know it (CPU, MPS, unknown GPUs)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, flops in PEAK_FLOPS.items():  # most specific first (H200 before H100, A100 before A10)
        if key in name:
            return flops if dtype != torch.float32 else flops / 2  # fp32 runs as TF32, about half
    return None


# ---------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """True in a single process, and in rank 0 of a torchrun group: the one process that writes files."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def setup_distributed(device_name: str = "auto") -> tuple[Dist, str]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, ... in the environment).

    Without torchrun this is a single process. gloo on the CPU, nccl on CUDA GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(), resolve_device(device_name)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), local_rank, dist.get_world_size()), device


# ---------------------------------------------------------------- watching


def unpack_batch(batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, real_tokens)`` on ``device`` from what a ``batch_fn`` returns: ``(x, y)`` or ``(x, y, mask)``.

    ``real_tokens`` (a 0-d tensor on ``device``, so counting never waits for the GPU) is
    the number of input positions that are not padding: ``mask.sum()``, or every
    position of x when the batch has no mask (pretraining windows: B x T).
    """
    if len(batch) == 3:
        x, y, mask = batch
        real = mask.to(device).sum()
    else:
        x, y = batch
        real = torch.full((), x.numel(), dtype=torch.long, device=device)
    return x.to(device), y.to(device), real


@torch.no_grad()
def estimate_loss(model, batch_fn, eval_iters: int, seed: int, autocast, device="cpu",
                  loss_fn: Callable | None = None) -> dict[str, float]:
    """Mean loss per scored token over ``eval_iters`` batches of each split, in eval mode (no dropout).

    The batches come from their own generator, seeded the same at every call: every
    estimate sees the same windows (a smoother curve) and the training sampler's
    state is not touched (an exact resume does not depend on when we evaluated).
    Each batch's mean loss is weighted by its number of scored targets, as in training
    (with a ``loss_fn``: by the count it returns).
    """
    was_training = model.training
    model.eval()
    out = {}
    for split in ("train", "val"):
        generator = np.random.default_rng(seed)
        total, count = 0.0, 0
        for _ in range(eval_iters):
            x, y, _ = unpack_batch(batch_fn(split, generator), device)
            if loss_fn is None:
                n = int((y != IGNORE_INDEX).sum())
                if n == 0:
                    continue  # nothing scored in this batch (its mean loss would be nan)
                with autocast:
                    _, loss = model(x, y)
            else:
                with autocast:
                    loss, n = loss_fn(model, (x, y))
                n = int(n)
                if n == 0:
                    continue
            total += loss.float().item() * n
            count += n
        out[split] = total / count if count else float("nan")
    model.train(was_training)
    return out


def token_loss(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The default loss: mean next-token cross-entropy over the scored targets of ``(x, y)``, and their count."""
    x, y = batch
    _, loss = model(x, y)
    return loss, (y != IGNORE_INDEX).sum()


def sample_text(model, decode, prompt: list[int], n_tokens: int, seed: int, device: str) -> str:
    """A sampled continuation (temperature 0.8, top-k 200) with its own generator (training RNG untouched)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
    out = model.generate(idx, n_tokens, temperature=0.8, top_k=200, generator=generator)  # (1, T + n)
    return decode(out[0].tolist())


# ---------------------------------------------------------------- the loop


def train(
    model: torch.nn.Module,
    train_ids=None,
    val_ids=None,
    cfg: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    decode: Callable[[list[int]], str] | None = None,
    callback: Callable[[int, dict], None] | None = None,
    batch_fn: Callable | None = None,
    tokenizer_name: str | None = None,
    sample_prompt: list[int] | None = None,
    loss_fn: Callable | None = None,
) -> dict:
    """Train ``model`` for ``cfg.max_iters`` optimizer steps; return (and write) the metrics.

    model:     a ``GPT``; it is moved to ``cfg.device`` and *stays there* after training, so
               move prompts to ``next(model.parameters()).device`` before generating.
    train_ids, val_ids: 1-D token arrays, or None when ``batch_fn(split, generator)`` gives the
               batches: ``(x, y)`` or ``(x, y, mask)`` (split is "train" or "val"; y already
               shifted, -100 ignored; mask 1 on real tokens, 0 on padding).
    out_dir:   checkpoints and ``metrics.json`` go here (rank 0 only); None writes nothing.
    resume:    continue the run saved in ``out_dir`` up to ``cfg.max_iters``: weights,
               optimizer, step and every RNG are restored, so the end equals an
               uninterrupted run. The learning-rate schedule must be the same in both
               parts: set ``lr_decay_iters`` when you plan to extend a run.
    decode:    ids -> text, for samples; callback(step, metrics): called at every
               log_interval and eval with the metrics so far (a live loss curve).
    loss_fn:   ``loss_fn(model, (x, y)) -> (mean_loss, n_scored)`` (n_scored a 0-d tensor) instead of next-token
               cross-entropy (``token_loss``), for training and validation; n_scored counts
               what the mean is over (pairs, for DPO). The loop cannot know that count before
               the forward pass, so each micro-batch's mean weighs 1 / grad_accum_steps: give
               micro-batches equal sizes. ``y`` is passed as the batch_fn made it.

    The loss of an optimizer step is the mean over *every scored token* of its
    ``grad_accum_steps`` micro-batches (and of all processes under DDP): each
    micro-batch's mean loss is weighted by its share of the step's scored tokens. With
    fine-tuning masks, micro-batches score different numbers of tokens; dividing each
    by ``grad_accum_steps`` instead would make a token of a short reply weigh more than
    one of a long reply, and the step would differ from the same rows in one batch.
    ``tokens_per_second`` and ``mfu`` count real (non-padding) input tokens.
    """
    cfg = cfg or TrainConfig()
    dist_info, device = setup_distributed(cfg.device)
    device_type = device.split(":")[0]
    ptdtype = resolve_dtype(cfg.dtype, device)
    autocast = (
        torch.autocast(device_type=device_type, dtype=ptdtype)
        if ptdtype != torch.float32 else contextlib.nullcontext()
    )
    # fp16 has a narrow range: small gradients underflow to 0. The scaler multiplies the loss
    # before backward and divides the gradients after; bf16 and fp32 do not need it.
    scaler = torch.amp.GradScaler(device_type if device_type == "cuda" else "cpu", enabled=ptdtype == torch.float16)
    out_dir = Path(out_dir) if out_dir is not None else None
    if batch_fn is None:
        if train_ids is None or val_ids is None:
            raise ValueError("train(): give train_ids and val_ids, or a batch_fn(split, generator).")
        batch_fn = token_batches(train_ids, val_ids, cfg.batch_size, cfg.block_size, device)

    torch.manual_seed(cfg.seed + dist_info.rank)
    sampler = np.random.default_rng(cfg.seed + dist_info.rank)  # each rank its own windows
    gpt = ckpt.unwrap(model).to(device)
    optimizer = make_optimizer(gpt, cfg, device_type)
    start_step, best_val, history, evals, tokens_seen = 0, float("inf"), [], [], 0
    if resume:
        if out_dir is None:
            raise ValueError("train(resume=True) needs the out_dir of the run to continue.")
        state = ckpt.load_training_state(out_dir)
        saved_step = ckpt.load_weights(gpt, out_dir)
        if saved_step != state["step"]:
            raise ValueError(
                f"{out_dir}: model.safetensors is from step {saved_step} but {ckpt.STATE_FILE} from step "
                f"{state['step']} (a crash between the two writes?); start the run again."
            )
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) == dist_info.world_size:
            ckpt.set_rng_state(rng[dist_info.rank], sampler)
        elif dist_info.main:
            print(f"resume: the run had {len(rng)} processes, now {dist_info.world_size}: new random streams.")
        start_step, best_val, tokens_seen = state["step"], state["best_val_loss"], state.get("tokens_seen", 0)
        history, evals = json.loads(state["history"]), json.loads(state["evals"])
        if dist_info.main and cfg.verbose:
            print(f"Resuming {out_dir} at step {start_step} (of {cfg.max_iters}).")

    step_model = torch.compile(gpt) if cfg.compile else gpt  # compile first, then wrap (as nanoGPT)
    if dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_model = DDP(step_model, device_ids=[dist_info.local_rank] if device_type == "cuda" else None)

    flops_token = flops_per_token(gpt.config, cfg.block_size)  # forward + backward, per token
    peak = peak_flops(device, ptdtype)
    if peak is not None:
        peak *= dist_info.world_size
    prompt = sample_prompt if sample_prompt is not None else [0]
    samples: list[dict] = []

    def evaluate(step: int) -> dict:
        losses = estimate_loss(gpt, batch_fn, cfg.eval_iters, cfg.seed + 10_000, autocast, device, loss_fn)
        return {"step": step, "train_loss": losses["train"], "val_loss": losses["val"]}

    def save(step: int) -> None:
        # Every rank's RNG state goes in the file (they differ); the gather is collective.
        rng = [ckpt.rng_state(sampler)]
        if dist_info.world_size > 1:
            import torch.distributed as dist

            gathered = [None] * dist_info.world_size
            dist.all_gather_object(gathered, {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in rng[0].items()})
            rng = gathered
        if not (dist_info.main and out_dir is not None and cfg.checkpoint):
            return
        ckpt.save_model(gpt, out_dir, tokenizer_name, gpt.config.vocab_size, step, dataclasses.asdict(cfg))
        ckpt.save_training_state(
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": rng,
                "best_val_loss": best_val,
                "tokens_seen": tokens_seen + int(session_tokens),
                "history": json.dumps(history),
                "evals": json.dumps(evals),
            },
            out_dir,
        )

    progress = None
    if cfg.progress and dist_info.main:
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.max_iters, initial=start_step, desc="training", dynamic_ncols=True)

    step_model.train()
    train_seconds, last = 0.0, {}
    session_tokens = torch.zeros((), dtype=torch.long, device=device)  # real tokens of this session, all processes
    wall_start = time.perf_counter()
    elapsed_before = history[-1]["elapsed"] if history else 0.0
    step = start_step
    while step < cfg.max_iters:
        t0 = time.perf_counter()
        lr = learning_rate_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Draw the step's micro-batches first: the loss weights need the step's count of
        # scored targets (all processes) before the first backward.
        batches = [unpack_batch(batch_fn("train", sampler), device) for _ in range(cfg.grad_accum_steps)]
        scored = [(y != IGNORE_INDEX).sum() for _, y, _ in batches]  # 0-d tensors: no wait for the GPU
        counts = torch.stack([torch.stack(scored).sum(), torch.stack([r for _, _, r in batches]).sum()])
        if dist_info.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(counts)  # (scored targets, real tokens) of the whole step, every process
        step_scored = counts[0].clamp(min=1)
        token_loss_sum = torch.zeros((), device=device)  # this process's summed token loss, for the log
        logged_scored = torch.zeros((), dtype=torch.long, device=device)  # what token_loss_sum is summed over
        for micro, ((x, y, _), n_scored) in enumerate(zip(batches, scored)):
            last_micro = micro == cfg.grad_accum_steps - 1
            # DDP averages gradients across processes after every backward; during accumulation
            # only the last micro-batch needs it, so the others skip the communication.
            sync = contextlib.nullcontext() if last_micro or dist_info.world_size == 1 else step_model.no_sync()
            with sync:
                with autocast:
                    if loss_fn is None:
                        _, mean_loss = step_model(x, y)  # mean over this micro-batch's scored targets
                        # Its share of the step's mean over every scored token: mean x (its count / the
                        # step's count); x world_size undoes DDP's average over processes. One micro-batch,
                        # one process: the weight is exactly 1.
                        weight = n_scored * dist_info.world_size / step_scored
                    else:
                        mean_loss, n_scored = loss_fn(step_model, (x, y))
                        weight = 1.0 / cfg.grad_accum_steps  # equal micro-batches (see the docstring)
                # Nothing scored (the mean is nan): it adds 0.
                mean_loss = torch.where(n_scored > 0, mean_loss, 0.0)
                scaler.scale(mean_loss * weight).backward()
            token_loss_sum += mean_loss.detach() * n_scored
            logged_scored += n_scored
        local_scored = logged_scored.clamp(min=1)
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if device_type == "cuda" and step % cfg.log_interval == 0:
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t0
        session_tokens += counts[1]
        if progress is not None:
            progress.update(1)

        last_step = step == cfg.max_iters
        if step % cfg.log_interval == 0 or last_step:
            tokens_per_second = int(session_tokens) / max(train_seconds, 1e-9)
            mfu = flops_token * tokens_per_second / peak if peak else None
            last = {
                "step": step, "loss": (token_loss_sum / local_scored).item(), "lr": lr,
                "elapsed": elapsed_before + time.perf_counter() - wall_start,
                "tokens_per_second": tokens_per_second, "mfu": mfu,
            }
            history.append(last)
            if progress is not None:
                progress.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens_per_second:,.0f}")
            if callback is not None and dist_info.main:
                callback(step, {"history": history, "evals": evals, **last})
        if step % cfg.eval_interval == 0 or last_step:
            if dist_info.main:
                result = evaluate(step)
                result["elapsed"] = elapsed_before + time.perf_counter() - wall_start
                evals.append(result)
                best_val = min(best_val, result["val_loss"])
                message = f"step {step}: train loss {result['train_loss']:.4f}, val loss {result['val_loss']:.4f}"
                if cfg.verbose:
                    (progress.write if progress is not None else print)(message)
                if callback is not None:
                    callback(step, {"history": history, "evals": evals, **last, **result})
            if decode is not None and dist_info.main and (
                last_step or (cfg.sample_interval and step % cfg.sample_interval == 0)
            ):
                text = sample_text(gpt, decode, prompt, cfg.sample_tokens, cfg.seed, device)
                samples.append({"step": step, "text": text})
                if cfg.verbose:
                    (progress.write if progress is not None else print)(f"--- sample at step {step} ---\n{text}\n---")
            save(step)
    if progress is not None:
        progress.close()

    final = evals[-1] if evals else {}
    metrics = {
        "train_loss": final.get("train_loss"),
        "val_loss": final.get("val_loss"),
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "tokens_per_second": int(session_tokens) / train_seconds if train_seconds else None,
        "mfu": last.get("mfu"),
        "iters": step,
        "world_size": dist_info.world_size,
        "parameters": gpt.num_parameters(),
        "tokens_seen": tokens_seen + int(session_tokens),  # real tokens, all processes, resumed parts too
        "device": device,
        "dtype": str(ptdtype).replace("torch.", ""),
        "train_seconds": train_seconds,
        "elapsed_seconds": (history[-1]["elapsed"] if history else 0.0),
        "resumed_from": start_step if resume else None,
        "history": history,
        "evals": evals,
        "samples": samples,
        "config": dataclasses.asdict(cfg),
    }
    if dist_info.main and out_dir is not None:
        write_json_atomically(out_dir / METRICS_FILE, metrics)
    del step_model  # release DDP (and its threads) now, before the caller tears the process group down
    return metrics
