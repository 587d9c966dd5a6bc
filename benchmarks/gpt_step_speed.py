"""How fast is a training step of our GPT next to ``transformers``' GPT2LMHeadModel?

    python benchmarks/gpt_step_speed.py [--rounds 7] [--steps 20] [--warmup 5] [--compile]

Both models get the same config (vocab 65, block 64, 4 layers, 4 heads, 128 dims,
dropout 0), the same weights (ours copied with ``GPT.to_hf``), the same batches
(batch 12), fp32 on the CPU, and their own AdamW with the same settings. The
script checks that both compute the same loss, then times rounds that alternate
which model goes first (a noisy 2-core machine drifts), each round with its own
warm-up, and prints the median ms/step of each and the ratio. Goal: ours >= 1.4x.
With ``--compile`` both models go through ``torch.compile``.

Where our speed comes from (the math is the same): F.gelu(approximate="tanh") is
one fused kernel where transformers' "gelu_new" runs ~8 elementwise ops (each a
pass over the (B, T, 4C) tensor, and each saved for the backward); nn.Linear
where GPT-2 has Conv1D (addmm on a reshaped view); no attention-mask building,
output dataclasses or hooks per call; the loss is one F.cross_entropy on
already-shifted targets (no slicing, .contiguous() or fp32 upcast copies).

Measured on the course's 2-core CPU machine (torch 2.13, transformers 5.24):
about 1.2x (49 vs 59 ms/step with --threads 1, the steadiest setting; 1.24x with 2
threads), and about 1.0x with --compile, which fuses transformers' GELU as well.
The 1.4x goal is not reached with the same fp32 math: a profile shows the matrix
multiplications (identical MKL calls in both) take ~65% of our step and attention
another ~10%, which caps any honest gain near 1.5x even if all else were free.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from utils.model import GPT, GPTConfig

CONFIG = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
BATCH_SIZE = 12


def make_models(compile_models: bool):
    torch.manual_seed(1337)
    ours = GPT(GPTConfig(**CONFIG)).train()
    theirs = ours.to_hf(attn_implementation="sdpa").train()  # same weights, dropout 0
    if compile_models:
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    return ours, theirs


def make_batches(n: int, seed: int = 0):
    """n batches of (inputs, targets), targets = inputs shifted by one (B, T) each."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, CONFIG["vocab_size"], (n, BATCH_SIZE, CONFIG["block_size"] + 1), generator=g)
    return [(row[:, :-1].contiguous(), row[:, 1:].contiguous()) for row in data]


def ours_loss(model, x, y):
    _, loss = model(x, y)
    return loss


def theirs_loss(model, x, y):
    # shift_labels: transformers' own way to pass targets that are already shifted,
    # so both models are scored on exactly the same 64 positions per row.
    return model(input_ids=x, labels=y, shift_labels=y).loss


def train_steps(model, loss_fn, optimizer, batches) -> list[float]:
    """One optimizer step per batch; the seconds each took."""
    times = []
    for x, y in batches:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, x, y)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per model, alternating")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each round")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # 1 is steadier when another process shares the cores

    ours, theirs = make_models(args.compile)
    x, y = make_batches(1)[0]
    with torch.no_grad():
        difference = abs(ours_loss(ours, x, y).item() - theirs_loss(theirs, x, y).item())
    print(f"same weights, same batch: |loss difference| = {difference:.2e}")

    contenders = {
        "ours": (ours, ours_loss, torch.optim.AdamW(ours.parameters(), lr=3e-4, weight_decay=0.1)),
        "transformers": (theirs, theirs_loss, torch.optim.AdamW(theirs.parameters(), lr=3e-4, weight_decay=0.1)),
    }
    batches = make_batches(args.warmup + args.steps, seed=1)
    ms_per_step = {name: [] for name in contenders}
    for round_ in range(args.rounds):
        order = list(contenders) if round_ % 2 == 0 else list(contenders)[::-1]
        for name in order:
            model, loss_fn, optimizer = contenders[name]
            train_steps(model, loss_fn, optimizer, batches[: args.warmup])  # warm-up, untimed
            times = train_steps(model, loss_fn, optimizer, batches[args.warmup :])
            ms_per_step[name].append(1000 * statistics.median(times))

    compiled = " (both torch.compile'd)" if args.compile else ""
    print(
        f"config {CONFIG}, batch {BATCH_SIZE}, fp32, CPU, {torch.get_num_threads()} threads{compiled}; "
        f"{args.rounds} alternating rounds x {args.steps} steps (+{args.warmup} warm-up)"
    )
    median = {}
    for name, values in ms_per_step.items():
        median[name] = statistics.median(values)
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"{name:>13}: {median[name]:7.2f} ms/step (median of rounds; range {spread})")
    print(f"ratio transformers / ours: {median['transformers'] / median['ours']:.2f}x (goal >= 1.4x)")


if __name__ == "__main__":
    main()
