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

``train`` reads top to bottom: set up (``setup_distributed``, ``mixed_precision``,
``make_optimizer``, ``resume_run``), then every step ``optimizer_step``, and at its
intervals ``log_step``, ``estimate_loss`` with ``log_eval``, ``sample_text`` and
``save_checkpoint``. ``RunState`` holds what changes along the way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

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


@dataclass
class Precision:
    """How the forward pass computes: the dtype, the autocast that runs it, and fp16's loss scaler."""

    dtype: torch.dtype
    autocast: contextlib.AbstractContextManager  # torch.autocast for bf16 and fp16; a no-op for fp32
    scaler: torch.amp.GradScaler  # enabled for fp16 only


def mixed_precision(name: str, device: str) -> Precision:
    """``resolve_dtype``'s choice with its autocast and, for fp16, a GradScaler."""
    dtype = resolve_dtype(name, device)
    device_type = device.split(":")[0]
    autocast = (
        torch.autocast(device_type=device_type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    )
    # fp16 has a narrow range: small gradients underflow to 0. The scaler multiplies the loss
    # before backward and divides the gradients after; bf16 and fp32 do not need it.
    scaler = torch.amp.GradScaler(device_type if device_type == "cuda" else "cpu", enabled=dtype == torch.float16)
    return Precision(dtype, autocast, scaler)


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
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def setup_distributed(device_name: str = "auto") -> tuple[Dist, str]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, ... in the environment).

    Without torchrun this is a single process. gloo on the CPU, nccl on CUDA GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(), resolve_device(device_name)
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


# ---------------------------------------------------------------- the run's state


@dataclass
class RunState:
    """Where a run stands.

    A checkpoint keeps the first five fields and ``resume_run`` restores them; the
    others count this session (one call of ``train``), so the speed a resumed run
    reports is its own.
    """

    step: int = 0  # optimizer steps done
    best_val: float = math.inf  # lowest validation loss so far
    history: list[dict] = field(default_factory=list)  # every log_interval steps: loss, lr, elapsed, tokens/s, MFU
    evals: list[dict] = field(default_factory=list)  # every eval_interval steps: step, train and val loss, elapsed
    tokens_seen: int = 0  # real tokens of the earlier sessions, all processes
    # ---- this session (set by start_session) ----
    session_tokens: torch.Tensor | None = None  # real tokens, all processes: a 0-d tensor on the device (no GPU wait)
    train_seconds: float = 0.0  # time inside optimizer steps: what tokens/s divides by
    last_log: dict = field(default_factory=dict)  # the latest history entry of this session
    samples: list[dict] = field(default_factory=list)  # text samples, {"step", "text"}
    elapsed_before: float = 0.0  # wall-clock seconds of the earlier sessions
    session_start: float = 0.0  # time.perf_counter() when this session's first step began

    def start_session(self, device: str) -> None:
        """Zero this session's token count on ``device`` and start its clock where the earlier sessions stopped."""
        self.session_tokens = torch.zeros((), dtype=torch.long, device=device)
        self.elapsed_before = self.history[-1]["elapsed"] if self.history else 0.0
        self.session_start = time.perf_counter()

    def elapsed(self) -> float:
        """Wall-clock seconds of the whole run so far: steps, evaluations, samples and checkpoints."""
        return self.elapsed_before + time.perf_counter() - self.session_start

    def total_tokens(self) -> int:
        """Real tokens trained on, all processes, resumed parts too."""
        return self.tokens_seen + int(self.session_tokens)


def resume_run(folder: Path, gpt, optimizer, scaler, sampler: np.random.Generator, dist_info: Dist) -> RunState:
    """Load the run saved in ``folder`` into ``gpt``, ``optimizer``, ``scaler`` and every RNG; return where it stood.

    The weights and the training state are two files written one after the other: when
    their steps differ (a crash between the two writes), we refuse rather than go on
    from a mix. Each process takes back its own random streams; a run saved with
    another number of processes has no stream for some of them, so all start new ones.
    """
    saved = ckpt.load_training_state(folder)
    weights_step = ckpt.load_weights(gpt, folder)
    if weights_step != saved["step"]:
        raise ValueError(
            f"{folder}: model.safetensors is from step {weights_step} but {ckpt.STATE_FILE} from step "
            f"{saved['step']} (a crash between the two writes?); start the run again."
        )
    optimizer.load_state_dict(saved["optimizer"])
    if saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    rng = saved["rng"]
    if len(rng) == dist_info.world_size:
        ckpt.set_rng_state(rng[dist_info.rank], sampler)
    elif dist_info.main:
        print(f"resume: the run had {len(rng)} processes, now {dist_info.world_size}: new random streams.")
    return RunState(
        step=saved["step"], best_val=saved["best_val_loss"], history=json.loads(saved["history"]),
        evals=json.loads(saved["evals"]), tokens_seen=saved.get("tokens_seen", 0),
    )


# ---------------------------------------------------------------- one optimizer step


def optimizer_step(model, optimizer, batches: list, precision: Precision, grad_clip: float,
                   loss_fn: Callable | None = None, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One update from ``batches``, the step's micro-batches ``(x, y, real_tokens)`` from ``unpack_batch``.

    ``model`` is what the step calls: the GPT, compiled and/or wrapped in DDP. Each
    micro-batch's mean loss weighs its share of the step's scored targets (all
    processes), so the step follows the mean over every scored token (``train``'s
    docstring says why); gradients are unscaled (fp16), clipped, then applied.
    Returns this process's mean loss over its scored targets (for the log) and the step's
    real tokens, all processes; both 0-d tensors, so nothing here waits for the GPU.
    """
    scored = [(y != IGNORE_INDEX).sum() for _, y, _ in batches]  # 0-d tensors: no wait for the GPU
    counts = torch.stack([torch.stack(scored).sum(), torch.stack([r for _, _, r in batches]).sum()])
    if world_size > 1:
        dist.all_reduce(counts)  # (scored targets, real tokens) of the whole step, every process
    step_scored = counts[0].clamp(min=1)
    token_loss_sum = torch.zeros((), device=counts.device)  # this process's summed token loss, for the log
    logged_scored = torch.zeros((), dtype=torch.long, device=counts.device)  # what token_loss_sum is summed over
    for micro, ((x, y, _), n_scored) in enumerate(zip(batches, scored)):
        last_micro = micro == len(batches) - 1
        # DDP averages gradients across processes after every backward; during accumulation
        # only the last micro-batch needs it, so the others skip the communication.
        sync = contextlib.nullcontext() if last_micro or world_size == 1 else model.no_sync()
        with sync:
            with precision.autocast:
                if loss_fn is None:
                    _, mean_loss = model(x, y)  # mean over this micro-batch's scored targets
                    # Its share of the step's mean over every scored token: mean x (its count / the
                    # step's count); x world_size undoes DDP's average over processes. One micro-batch,
                    # one process: the weight is exactly 1.
                    weight = n_scored * world_size / step_scored
                else:
                    mean_loss, n_scored = loss_fn(model, (x, y))
                    weight = 1.0 / len(batches)  # equal micro-batches (see train's docstring)
            # Nothing scored (the mean is nan): it adds 0.
            mean_loss = torch.where(n_scored > 0, mean_loss, 0.0)
            precision.scaler.scale(mean_loss * weight).backward()
        token_loss_sum += mean_loss.detach() * n_scored
        logged_scored += n_scored
    if grad_clip > 0:
        precision.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(ckpt.unwrap(model).parameters(), grad_clip)
    precision.scaler.step(optimizer)
    precision.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return token_loss_sum / logged_scored.clamp(min=1), counts[1]


# ---------------------------------------------------------------- log, evaluate, save


def log_step(state: RunState, loss: torch.Tensor, lr: float, flops_token: float, peak: float | None) -> dict:
    """Append the step's loss, learning rate and this session's speed to the history; return the entry."""
    tokens_per_second = int(state.session_tokens) / max(state.train_seconds, 1e-9)
    state.last_log = {
        "step": state.step, "loss": loss.item(), "lr": lr, "elapsed": state.elapsed(),
        "tokens_per_second": tokens_per_second, "mfu": flops_token * tokens_per_second / peak if peak else None,
    }
    state.history.append(state.last_log)
    return state.last_log


def log_eval(state: RunState, losses: dict[str, float]) -> dict:
    """Append ``estimate_loss``'s train and val loss to the evaluations, keep the best val loss; return the entry."""
    result = {"step": state.step, "train_loss": losses["train"], "val_loss": losses["val"], "elapsed": state.elapsed()}
    state.evals.append(result)
    state.best_val = min(state.best_val, result["val_loss"])
    return result


def gather_rng_states(sampler: np.random.Generator, world_size: int) -> list[dict]:
    """Every process's RNG state (they differ), in rank order, for the checkpoint. Collective: all processes call it."""
    state = ckpt.rng_state(sampler)
    if world_size == 1:
        return [state]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state.items()})
    return gathered


def save_checkpoint(folder: Path, gpt, optimizer, scaler, rng: list[dict], state: RunState, cfg: TrainConfig,
                    tokenizer_name: str | None) -> None:
    """Everything ``resume_run`` reads: the weights (with config.json), then optimizer, loss scale, RNGs and state."""
    ckpt.save_model(gpt, folder, tokenizer_name, gpt.config.vocab_size, state.step, dataclasses.asdict(cfg))
    ckpt.save_training_state(
        {
            "step": state.step,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": rng,
            "best_val_loss": state.best_val,
            "tokens_seen": state.total_tokens(),
            "history": json.dumps(state.history),
            "evals": json.dumps(state.evals),
        },
        folder,
    )


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
    precision = mixed_precision(cfg.dtype, device)
    out_dir = Path(out_dir) if out_dir is not None else None
    if batch_fn is None:
        if train_ids is None or val_ids is None:
            raise ValueError("train(): give train_ids and val_ids, or a batch_fn(split, generator).")
        batch_fn = token_batches(train_ids, val_ids, cfg.batch_size, cfg.block_size, device)

    torch.manual_seed(cfg.seed + dist_info.rank)
    sampler = np.random.default_rng(cfg.seed + dist_info.rank)  # each rank its own windows
    gpt = ckpt.unwrap(model).to(device)
    optimizer = make_optimizer(gpt, cfg, device_type)
    if resume:
        if out_dir is None:
            raise ValueError("train(resume=True) needs the out_dir of the run to continue.")
        state = resume_run(out_dir, gpt, optimizer, precision.scaler, sampler, dist_info)
        if dist_info.main and cfg.verbose:
            print(f"Resuming {out_dir} at step {state.step} (of {cfg.max_iters}).")
    else:
        state = RunState()
    resumed_from = state.step if resume else None

    step_model = torch.compile(gpt) if cfg.compile else gpt  # compile first, then wrap (as nanoGPT)
    if dist_info.world_size > 1:
        step_model = DDP(step_model, device_ids=[dist_info.local_rank] if device_type == "cuda" else None)

    flops_token = flops_per_token(gpt.config, cfg.block_size)  # forward + backward, per token
    peak = peak_flops(device, precision.dtype)
    if peak is not None:
        peak *= dist_info.world_size
    prompt = sample_prompt if sample_prompt is not None else [0]
    progress = None
    if cfg.progress and dist_info.main:
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.max_iters, initial=state.step, desc="training", dynamic_ncols=True)
    say = progress.write if progress is not None else print  # print without breaking the progress bar

    step_model.train()
    state.start_session(device)
    while state.step < cfg.max_iters:
        t0 = time.perf_counter()
        lr = learning_rate_at(state.step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # All the step's micro-batches first: their weights need the step's count of scored targets.
        batches = [unpack_batch(batch_fn("train", sampler), device) for _ in range(cfg.grad_accum_steps)]
        loss, real_tokens = optimizer_step(step_model, optimizer, batches, precision, cfg.grad_clip, loss_fn,
                                           dist_info.world_size)
        state.step += 1
        if device_type == "cuda" and state.step % cfg.log_interval == 0:
            torch.cuda.synchronize()
        state.train_seconds += time.perf_counter() - t0
        state.session_tokens += real_tokens
        if progress is not None:
            progress.update(1)

        last_step = state.step == cfg.max_iters
        if state.step % cfg.log_interval == 0 or last_step:
            entry = log_step(state, loss, lr, flops_token, peak)
            if progress is not None:
                progress.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{lr:.1e}",
                                     tok_s=f"{entry['tokens_per_second']:,.0f}")
            if callback is not None and dist_info.main:
                callback(state.step, {"history": state.history, "evals": state.evals, **entry})
        if state.step % cfg.eval_interval == 0 or last_step:
            if dist_info.main:
                losses = estimate_loss(gpt, batch_fn, cfg.eval_iters, cfg.seed + 10_000, precision.autocast, device,
                                       loss_fn)
                result = log_eval(state, losses)
                if cfg.verbose:
                    say(f"step {state.step}: train loss {result['train_loss']:.4f}, val loss {result['val_loss']:.4f}")
                if callback is not None:
                    callback(state.step, {"history": state.history, "evals": state.evals, **state.last_log, **result})
            if decode is not None and dist_info.main and (
                last_step or (cfg.sample_interval and state.step % cfg.sample_interval == 0)
            ):
                text = sample_text(gpt, decode, prompt, cfg.sample_tokens, cfg.seed, device)
                state.samples.append({"step": state.step, "text": text})
                if cfg.verbose:
                    say(f"--- sample at step {state.step} ---\n{text}\n---")
            rng = gather_rng_states(sampler, dist_info.world_size)
            if dist_info.main and out_dir is not None and cfg.checkpoint:
                save_checkpoint(out_dir, gpt, optimizer, precision.scaler, rng, state, cfg, tokenizer_name)
    if progress is not None:
        progress.close()

    final = state.evals[-1] if state.evals else {}
    metrics = {
        "train_loss": final.get("train_loss"),
        "val_loss": final.get("val_loss"),
        "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
        "tokens_per_second": int(state.session_tokens) / state.train_seconds if state.train_seconds else None,
        "mfu": state.last_log.get("mfu"),
        "iters": state.step,
        "world_size": dist_info.world_size,
        "parameters": gpt.num_parameters(),
        "tokens_seen": state.total_tokens(),
        "device": device,
        "dtype": str(precision.dtype).replace("torch.", ""),
        "train_seconds": state.train_seconds,
        "elapsed_seconds": (state.history[-1]["elapsed"] if state.history else 0.0),
        "resumed_from": resumed_from,
        "history": state.history,
        "evals": state.evals,
        "samples": state.samples,
        "config": dataclasses.asdict(cfg),
    }
    if dist_info.main and out_dir is not None:
        write_json_atomically(out_dir / METRICS_FILE, metrics)
    del step_model  # release DDP (and its threads) now, before the caller tears the process group down
    return metrics
