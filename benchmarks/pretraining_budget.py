"""The full-size study behind the ``cpu`` profile's vocabulary, shape and block (notebook 04 shows a small copy).

    python benchmarks/pretraining_budget.py [--profile cpu] [--vocab 1024 2048 4096]
        [--shapes 3x96 4x128] [--layouts gpt2 llama] [--budget-iters N] [--lr 3e-3 6e-3 ...]
        [--eval-chars 200000] [--threads 2]

Defaults: the profile's vocabulary, its ``study_shapes``, both blocks, and the whole
pretraining budget (``--budget-iters`` = the profile's ``max_iters``): notebook 04's
study at full size, about ``len(shapes) x len(layouts) x len(vocab)`` pretraining runs.

For every vocabulary: a course tokenizer of that size is trained on the profile's
training text (``utils.tokenization.train_course_tokenizer``, as 02 does) and both
splits are encoded (cached under ``build/budget_study/<profile>/``). Every shape ("LxC": layers x
width; the heads of the profile's study_shapes, else head size 32) then trains on the *same compute*: the FLOPs of the profile's own
model (``utils.pretrained.model_config``) over ``--budget-iters`` steps of the
profile's batch (``utils.budget_study.iso_flop_study``). All models are scored on
the same validation text (its first ``--eval-chars`` characters, cut at a
conversation boundary), so vocabularies compare in **bits per byte**; the smoothed
bigram of 05 (add-0.01) is scored on the same tokens, and ``ratio`` is the GPT's
perplexity over the bigram's (the course asks for at most 0.7 in the cpu profile).
Every shape trains in each of ``--layouts`` (default both blocks; Llama: RMSNorm, RoPE,
SwiGLU with a hidden width of 8C/3, rounded to 32, so both have about the same size).

Learning rates: by default each of the profile's ``study_shapes`` trains at its
``study_learning_rates`` entry and any other shape at the profile's rate. ``--lr`` trains
every shape at each rate given instead: the sweep that chose ``study_learning_rates``
(``--budget-iters`` = the profile's ``study_iters`` for the budget notebook 04 uses), e.g.
``--budget-iters 100 --layouts llama --shapes 1x32 2x48 --lr 3e-3 6e-3 1.2e-2``.

Seconds are wall time on this machine: on a shared machine they vary with the load
(printed at the start and the end); losses do not depend on it (same seed, same steps).
Results are printed and written to ``build/budget_study/<profile>/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from utils import config, corpus, evaluation  # noqa: E402
from utils.budget_study import iso_flop_study  # noqa: E402
from utils.model import GPTConfig  # noqa: E402  (type of shape())
from utils.model_sizes import flops_per_token  # noqa: E402
from utils.pretrained import model_config, train_config  # noqa: E402
from utils.tokenization import ENDOFTEXT, train_course_tokenizer  # noqa: E402

OUT = config.REPO_ROOT / "build" / "budget_study"


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def eval_text(files, max_chars: int) -> str:
    text = files.text("validation").read_text(encoding="utf-8")
    if len(text) <= max_chars:
        return text
    cut = text.rfind(f"\n{ENDOFTEXT}\n", 0, max_chars)
    return text[: cut if cut > 0 else max_chars]


def tokenized(files, profile_name: str, vocab_size: int, evaluation_text: str) -> dict:
    """Train ids, evaluation ids and the bigram of one vocabulary (cached: tokenizing takes ~a minute)."""
    folder = OUT / profile_name / f"vocab_{vocab_size}"
    if not (folder / "train.npy").exists():
        train_text = files.text("train").read_text(encoding="utf-8")
        lines = [line for line in train_text.splitlines() if line and line != ENDOFTEXT]  # the messages, as 02
        tokenizer = train_course_tokenizer(lines, vocab_size, folder / "tokenizer")
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "train.npy", np.array(tokenizer.encode(train_text), dtype=np.int32))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    train_ids = np.load(folder / "train.npy", mmap_mode="r")
    eval_ids = np.array(tokenizer.encode(evaluation_text), dtype=np.int64)
    bigram = evaluation.bigram_perplexity(train_ids, eval_ids, len(tokenizer), alpha=0.01)
    return {"train": train_ids, "eval": eval_ids, "vocab_size": len(tokenizer), "bigram": bigram}


def shape(spec: str, profile, vocab_size: int, layout: str) -> GPTConfig:
    """ "LxC" as the profile's model would build it (its block size), in ``layout``."""
    n_layer, n_embd = (int(x) for x in spec.lower().split("x"))
    heads = {(n, c): h for n, h, c in profile.study_shapes}.get((n_layer, n_embd), max(1, n_embd // 32))
    return model_config(profile, vocab_size, n_layer=n_layer, n_head=heads, n_embd=n_embd, layout=layout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=config.PROFILE_NAMES)
    parser.add_argument("--vocab", type=int, nargs="+", default=None, help="default: the profile's")
    parser.add_argument("--shapes", nargs="+", default=None, help="LxC ...; default: the profile's study_shapes")
    parser.add_argument("--layouts", nargs="+", default=["gpt2", "llama"], choices=("gpt2", "llama"))
    parser.add_argument("--budget-iters", type=int, default=None,
                        help="compute = the profile model's FLOPs over this many steps (default: its max_iters)")
    parser.add_argument("--lr", type=float, nargs="+", default=None,
                        help="peak learning rates to sweep (every shape at each); default: the profile's per shape")
    parser.add_argument("--eval-chars", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    os.environ["COURSE_PROFILE"] = args.profile
    cfg = config.load(verbose=False)
    profile = cfg.profile
    files = corpus.ensure_corpus(cfg)
    text = eval_text(files, args.eval_chars)
    eval_bytes = len(text.encode("utf-8"))
    template = dataclasses.replace(train_config(profile, cfg.seed), device="cpu", dtype="float32")
    budget_iters = args.budget_iters or profile.max_iters
    vocabularies = args.vocab or [profile.tokenizer_vocab_size]
    shapes = args.shapes or [f"{n_layer}x{n_embd}" for n_layer, _, n_embd in profile.study_shapes]
    reference = model_config(profile, profile.tokenizer_vocab_size)
    tokens_per_step = template.batch_size * template.block_size * template.grad_accum_steps
    flops = flops_per_token(reference, template.block_size) * tokens_per_step * budget_iters
    print(f"profile {profile.name}: budget {flops:.3g} FLOPs (the profile's model, {budget_iters} steps of "
          f"{tokens_per_step:,} tokens); evaluation text {eval_bytes:,} bytes; load average {load_average()}")

    rows = []
    for vocab_size in vocabularies:
        data = tokenized(files, profile.name, vocab_size, text)
        print(f"\nvocabulary {data['vocab_size']:,}: {len(data['train']):,} training tokens, bigram perplexity "
              f"{data['bigram']:.1f} on {len(data['eval']):,} evaluation tokens")
        print(f"{'layout':>6} {'shape':>6} {'lr':>7} {'params':>10} {'tokens':>10} {'tok/param':>9} {'loss':>6} "
              f"{'bits/byte':>9} {'ratio':>6} {'seconds':>8}")
        own_rates = {f"{n}x{c}": lr for (n, _, c), lr in zip(profile.study_shapes, profile.study_learning_rates)}
        for layout in args.layouts:
            candidates = {spec: shape(spec, profile, data["vocab_size"], layout) for spec in shapes}

            def show(row, data=data, layout=layout):
                row.update(bigram_perplexity=data["bigram"], ratio=math.exp(row["val_loss"]) / data["bigram"])
                print(f"{layout:>6} {row['name']:>6} {row['learning_rate']:>7.1e} {row['parameters']:>10,} "
                      f"{row['tokens']:>10,} {row['tokens_per_parameter']:>9.1f} {row['val_loss']:>6.3f} "
                      f"{row['bits_per_byte']:>9.3f} {row['ratio']:>6.3f} {row['seconds']:>8.0f}", flush=True)

            sweep = [{spec: lr for spec in shapes} for lr in args.lr] if args.lr else \
                [{spec: own_rates.get(spec, profile.learning_rate) for spec in shapes}]
            for rates in sweep:
                rows += iso_flop_study(candidates, data["train"], data["eval"], flops, template, eval_bytes=eval_bytes,
                                       seed=cfg.seed, on_row=show, learning_rates=rates)
    best = min(rows, key=lambda row: row["bits_per_byte"])
    print(f"\nbest in bits per byte: {best['layout']} {best['name']} at vocabulary {best['vocab_size']:,} "
          f"({best['bits_per_byte']:.3f}, perplexity ratio to the bigram {best['ratio']:.3f}); "
          f"load average at the end {load_average()}")
    (OUT / profile.name).mkdir(parents=True, exist_ok=True)
    (OUT / profile.name / "results.json").write_text(json.dumps({"flops": flops, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
