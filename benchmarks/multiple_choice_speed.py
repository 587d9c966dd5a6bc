"""How fast does SmolLM2-135M answer the course's multiple-choice questions, and what does sharing the question buy?

    python benchmarks/multiple_choice_speed.py [--items 126] [--threads 2] [--rounds 2] [--batch-size 16]

``utils.multiple_choice.score_items`` scores every choice of a question by its
log-likelihood. Two ways, both batched:

- **shared question** (our GPT, the default for it): the questions run once, their
  keys and values cached, and every choice continues from its question's cache, so a
  question's tokens are computed once, not once per choice;
- **one row per choice** (any model, the peer measured here): question + choice as
  one padded row each, so the question is recomputed for every choice.

Both must give the same log-likelihoods (the script checks them to 1e-3 nats) and the
same accuracy. It prints the seconds of each path (the median of ``--rounds``,
alternating which goes first, since a shared machine drifts), the tokens each path
feeds the model, and the speed-up. Target: the course's 126 questions (489 choices) in
well under a minute on 2 cores.

Seconds are wall time on this machine: on a shared machine they vary with the load
(printed at the start and the end); the token counts and the ratio of work do not. The
CPU seconds of this process are steadier: with one thread they are close to the wall
time a quiet machine would give.

Measured on the course's 2-core machine (torch 2.13, 1 thread, 1 round, load average
about 16 from other jobs): 126 items, 489 choices; shared question 20.5 s CPU (2,336
tokens fed), one row per choice 42.3 s CPU (7,605 tokens fed): 2.06x less work, the same
accuracy, log-likelihoods equal within 2.5e-4 nats. With 2 threads on that overloaded
machine the shared path's many small batches lost to thread synchronisation (592 s vs
374 s wall): time threads > 1 on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from utils import multiple_choice as mc  # noqa: E402
from utils.pretrained import load_smollm2  # noqa: E402


def fed_tokens(tokenizer, items, prompt, shared: bool) -> int:
    """Tokens the model reads: with a shared question, the question once plus each choice but its last token."""
    total = 0
    for item in items:
        question = len(tokenizer.encode(prompt.context(item.question), add_special_tokens=False))
        choices = [len(tokenizer.encode(prompt.continuation(c), add_special_tokens=False)) for c in item.choices]
        if shared:
            total += question + sum(n - 1 for n in choices)
        else:
            total += sum(question + n - 1 for n in choices)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=None, help="the first N items (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    items = mc.read_items()[: args.items]
    model, tokenizer = load_smollm2()
    prompt = mc.QUESTION_ANSWER
    print(f"SmolLM2-135M-Instruct, {len(items)} items ({sum(len(i.choices) for i in items)} choices), "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")

    seconds = {True: [], False: []}  # wall time
    cpu_seconds = {True: [], False: []}  # this process's CPU time: steadier than wall time on a busy machine
    scored = {}
    for round_ in range(args.rounds):
        for shared in ((True, False) if round_ % 2 == 0 else (False, True)):
            start, cpu_start = time.perf_counter(), time.process_time()
            scored[shared] = mc.score_items(model, tokenizer, items, prompt, args.batch_size, shared_context=shared)
            seconds[shared].append(time.perf_counter() - start)
            cpu_seconds[shared].append(time.process_time() - cpu_start)

    difference = max(float(np.abs(a.logprobs - b.logprobs).max()) for a, b in zip(scored[True], scored[False]))
    assert difference < 1e-3, f"the two paths disagree by {difference:.2e} nats"
    same = mc.summarise(scored[True]).accuracy == mc.summarise(scored[False]).accuracy
    for shared, name in ((True, "shared question"), (False, "one row per choice")):
        print(f"{name:>20}: {statistics.median(seconds[shared]):6.1f} s wall, "
              f"{statistics.median(cpu_seconds[shared]):6.1f} s CPU, "
              f"{fed_tokens(tokenizer, items, prompt, shared):,} tokens fed")
    print(f"largest difference {difference:.1e} nats; same accuracy: {same}; speed-up "
          f"{statistics.median(seconds[False]) / statistics.median(seconds[True]):.2f}x wall, "
          f"{statistics.median(cpu_seconds[False]) / statistics.median(cpu_seconds[True]):.2f}x CPU; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
