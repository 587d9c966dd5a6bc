"""Make it yours, measured on dev: a recipe's figures with counts and intervals, and the table of recipes tried.

    COURSE_PROFILE=cpu python benchmarks/make_it_yours.py --label "profile recipe"
    COURSE_PROFILE=cpu python benchmarks/make_it_yours.py --label "20 blocks" --lora-layers 20
    COURSE_PROFILE=cpu python benchmarks/make_it_yours.py --label "no names file" --without names
    COURSE_PROFILE=cpu python benchmarks/make_it_yours.py --seeds 1337 1 2      # the recipe over seeds
    COURSE_PROFILE=cpu python benchmarks/make_it_yours.py --table               # the recipes measured so far
    python benchmarks/make_it_yours.py --screen-facts candidates.jsonl          # keep the facts SmolLM2 gets right

Recipes are chosen on the **dev** split (``dev.jsonl``, ``facts.jsonl``, ``dev_bleed.jsonl``):
this script never asks the test questions. SmolLM2 is loaded and asked once ("before"),
then fine-tuned once per seed (a fresh copy each time) and asked again. For each run it
prints ``utils.identity.headline`` (identity, facts kept, each also asked as a later turn,
and replies free of the name or maker), the goals met or missed, the replies that failed,
and appends the run to ``build/<profile>/make_it_yours_runs.jsonl``; ``--table`` prints
every run there as a markdown table (``benchmarks/make_it_yours.md`` keeps the ones that
chose the course's recipe). One question is 0.03 to 0.04 of a rate here: compare recipes
by their intervals, and over seeds, not by one run's last digit.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import hashlib
import json
import os
import statistics
import subprocess
import textwrap
from pathlib import Path

from utils import config
from utils.evaluation import Rate
from utils.finetune import merge_lora
from utils.identity import (
    Identity,
    Score,
    add_lora,
    evaluate,
    fine_tune,
    headline,
    identity_config,
    json_report,
    make_batches,
    measure,
    question_sets,
    verdicts,
)
from utils.identity_data import (
    DEV_FILE,
    GENERAL_FILE,
    NAMES_FILE,
    OPENERS,
    Question,
    TrainingSet,
    load_conversations,
    load_questions,
    neutral_template,
    reference_conversations,
    training_set,
)

PARTS = ("names", "later_identity", "later_everyday")  # what --without can leave out of the training data


def screen_facts(cfg, candidates: Path, out: Path) -> None:
    """Ask SmolLM2 (before any fine-tuning) every candidate; write the ones it answers correctly to ``out``."""
    from utils.pretrained import load_smollm2

    model, tokenizer = load_smollm2(device=cfg.device)
    neutral_template(tokenizer)
    questions = load_questions(candidates)
    score = evaluate(model, tokenizer, questions, identity_config(cfg.profile).max_new_tokens)
    lines = []
    for question, reply, ok in zip(questions, score.replies, score.correct):
        print(f"{'KEEP' if ok else 'drop'}  {question.question!r} -> {reply!r}")
        if ok:
            record = {"topic": question.topic or "fact", "question": question.question, "must": question.must,
                      "must_not": question.must_not}
            lines.append(json.dumps(record, ensure_ascii=False))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"kept {len(lines)} of {len(questions)} in {out} ({score.seconds:.0f} s)")


def training_data(identity: Identity, recipe, without: list[str], identity_file: Path | None,
                  general_file: Path | None) -> TrainingSet:
    """``training_set`` with the parts named in ``without`` left out, or other identity / everyday files
    (an earlier version of a file, to measure what a change of it did)."""
    data = training_set(identity, recipe.later_turns)
    if identity_file:
        data.identity = load_conversations(identity_file, identity)
    if general_file:
        data.everyday = load_conversations(general_file, identity) + load_conversations(NAMES_FILE, identity)
    if "names" in without:
        data.everyday = load_conversations(general_file or GENERAL_FILE, identity)
        names = {json.dumps(c) for c in load_conversations(NAMES_FILE, identity)}
        data.later_everyday = [c for c in data.later_everyday if json.dumps(c[:2]) not in names
                               and json.dumps(c[2:]) not in names]
        data.later_identity = [c for c in data.later_identity if json.dumps(c[:2]) not in names]
    for part in ("later_identity", "later_everyday"):
        if part in without:
            setattr(data, part, [])
    return data


def measured_before(cfg, original, tokenizer, identity: Identity, recipe) -> dict:
    """``measure`` of the original SmolLM2 on dev, kept in build/<profile>/ for the next run: it is the same model
    asked the same questions (the file names the questions, the reply budget and the identity)."""
    sets = question_sets(identity, "dev", recipe.eval_questions)
    key = hashlib.sha256(json.dumps([{k: [dataclasses.asdict(q) if isinstance(q, Question) else q for q in v]
                                      for k, v in sets.items()}, OPENERS, recipe.max_new_tokens,
                                     dataclasses.asdict(identity)], sort_keys=True).encode()).hexdigest()[:12]
    path = cfg.paths.build / cfg.profile.name / f"make_it_yours_before_{key}.json"
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        print(f"before: the original's dev replies from {path}")
        return {name: Score(score_questions(sets, name), [r["reply"] for r in value["replies"]],
                            [r["correct"] for r in value["replies"]], value["seconds"])
                for name, value in saved.items()}
    before = measure(original, tokenizer, identity, "dev", recipe.max_new_tokens, recipe.eval_questions)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_report(before)), encoding="utf-8")
    return before


def score_questions(sets: dict, name: str) -> list[Question]:
    """The questions behind a figure of ``measure`` ("facts (later turn)" -> the facts; "no bleed" -> the prompts)."""
    if name == "no bleed":
        return [Question(question=p, must=[], topic="bleed") for p in sets["bleed"]]
    return sets[name.split(" (")[0]]


def run(cfg, identity: Identity, recipe, data: TrainingSet, seeds: list[int], show: int) -> list[dict]:
    """Fine-tune a fresh copy of SmolLM2 once per seed on ``data``; the dev figures of each."""
    from utils.pretrained import load_smollm2

    original, tokenizer = load_smollm2(device=cfg.device)
    neutral_template(tokenizer)
    before = measured_before(cfg, original, tokenizer, identity, recipe)
    dev = load_questions(DEV_FILE, identity)[:recipe.eval_questions]
    batches = make_batches(tokenizer, data, reference_conversations(dev), recipe.batch_size)
    print(f"training data: {len(data.identity)} identity, {len(data.everyday)} everyday, "
          f"{len(data.later_identity)} everyday -> identity, {len(data.later_everyday)} -> everyday "
          f"({len(data)} conversations)")
    rows = []
    for seed in seeds:
        model = copy.deepcopy(original)
        add_lora(model, recipe)
        metrics = fine_tune(model, batches, dataclasses.replace(recipe, seed=seed, progress=False))
        merge_lora(model)
        after = measure(model, tokenizer, identity, "dev", recipe.max_new_tokens, recipe.eval_questions)
        figures = headline(before, after)
        print(f"\nseed {seed}: fine-tuning {metrics['seconds']:.0f} s wall ({metrics['cache_seconds']:.0f} s caching), "
              f"load average {os.getloadavg()[0]:.1f}")
        for key, value in figures.items():
            print(f"  {key:<26} {value}")
        for goal, met, how in verdicts(figures):
            print(f"  {'met   ' if met else 'MISSED'} {goal}: {how}")
        failed(before, after, show)
        rows.append({"seed": seed, "seconds": metrics["seconds"], "cache_seconds": metrics["cache_seconds"],
                     **{key: [value.k, value.n] for key, value in figures.items()},
                     "after": {key: score.correct for key, score in after.items()},
                     "before": {key: score.correct for key, score in before.items()}})
    if len(rows) > 1:
        for key in figures:
            values = [row[key][0] / row[key][1] for row in rows]
            print(f"{key}: mean {statistics.mean(values):.3f}, range {min(values):.2f} .. {max(values):.2f} "
                  f"over {len(values)} seeds")
    return rows


def failed(before: dict, after: dict, show: int) -> None:
    """Up to ``show`` wrong replies of each set after fine-tuning (with the reply before, for the facts)."""
    for key, score in after.items():
        wrong = [(q, r, b) for q, r, ok, b in zip(score.questions, score.replies, score.correct, before[key].correct)
                 if not ok and (b or not key.startswith("facts"))]
        for q, r, _ in wrong[:show]:
            print(textwrap.fill(f"{q.question} -> {r}", 118, initial_indent=f"    wrong, {key}: ",
                                subsequent_indent=" " * 8))


def runs_file(cfg) -> Path:
    return cfg.paths.build / cfg.profile.name / "make_it_yours_runs.jsonl"


def table(path: Path) -> str:
    """Every run in ``path`` as a markdown table: the dev figures with counts, the time."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = ["identity", "identity (later turn)", "facts kept", "facts kept (later turn)", "no bleed"]
    lines = ["| recipe | seed | " + " | ".join(keys) + " | fine-tuning |", "|---" * (len(keys) + 3) + "|"]
    for row in rows:
        for seed in row["seeds"]:
            cells = []
            for key in keys:
                rate = Rate(*seed[key]) if key in seed else None
                cells.append("" if rate is None else
                             f"{rate.value:.2f} ({rate.k}/{rate.n}, {rate.interval[0]:.2f}-{rate.interval[1]:.2f})")
            lines.append(f"| {row['label']} | {seed['seed']} | " + " | ".join(cells) + f" | {seed['seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=Identity.name)
    parser.add_argument("--maker", default=Identity.maker)
    parser.add_argument("--label", default="", help="the recipe's name in the table of runs")
    parser.add_argument("--screen-facts", type=Path, help="candidate questions (JSONL) to screen instead")
    parser.add_argument("--out", type=Path, default=Path("data/identity/facts.jsonl"))
    parser.add_argument("--show", type=int, default=4, help="wrong replies shown per set")
    parser.add_argument("--table", action="store_true", help="print the runs recorded so far and stop")
    parser.add_argument("--without", nargs="+", default=[], choices=PARTS, help="leave these out of the training data")
    parser.add_argument("--identity-file", type=Path, help="train on this file instead of data/identity/train.jsonl")
    parser.add_argument("--general-file", type=Path, help="train on this file instead of data/identity/general.jsonl")
    for field in dataclasses.fields(config.Profile):  # --max-iters, --lora-layers ...: override the profile
        if field.name.startswith("identity_"):
            parser.add_argument("--" + field.name[len("identity_"):].replace("_", "-"), type=float, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--anchor-weight", type=float, default=None, help="KL anchor weight (0: none)")
    parser.add_argument("--seeds", type=int, nargs="+", help="fine-tune once per seed (default: the course's seed)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the profile's); on a machine that "
                        "another job shares, fewer threads than cores avoids oversubscription")
    args = parser.parse_args()

    cfg = config.load()
    if args.table:
        print(table(runs_file(cfg)))
        return
    config.use_threads(cfg.profile)
    if args.threads:
        __import__("torch").set_num_threads(args.threads)
    print(f"torch threads: {__import__('torch').get_num_threads()}, CPUs: {os.cpu_count()}, "
          f"load average: {os.getloadavg()}")
    if args.screen_facts:
        screen_facts(cfg, args.screen_facts, args.out)
        return
    recipe = identity_config(cfg.profile, cfg.seed, cfg.device)
    for field in dataclasses.fields(recipe):
        value = getattr(args, field.name, None)
        if value is not None:
            setattr(recipe, field.name, type(getattr(recipe, field.name) or 0)(value))
            if field.name == "lora_rank":
                recipe.lora_alpha = 2 * recipe.lora_rank
    print(recipe)
    identity = Identity(args.name, args.maker)
    data = training_data(identity, recipe, args.without, args.identity_file, args.general_file)
    rows = run(cfg, identity, recipe, data, args.seeds or [recipe.seed], args.show)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"label": args.label or "unnamed", "date": datetime.date.today().isoformat(), "commit": commit,
              "recipe": dataclasses.asdict(recipe), "without": args.without,
              "identity_file": str(args.identity_file or ""), "general_file": str(args.general_file or ""),
              "conversations": len(data), "seeds": rows}
    out = runs_file(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(f"\nruns so far ({out}):\n{table(out)}")


if __name__ == "__main__":
    main()
