"""Make it yours, end to end and measured: identity accuracy and retention before/after, time, machine load.

    COURSE_PROFILE=cpu python benchmarks/make_it_yours.py            # the profile's recipe
    COURSE_PROFILE=cpu python benchmarks/make_it_yours.py --lora-layers 8 --max-iters 40
    COURSE_PROFILE=cpu python benchmarks/make_it_yours.py --seeds 1337 1 2    # the recipe over seeds
    python benchmarks/make_it_yours.py --screen-facts candidates.jsonl   # keep the facts SmolLM2 gets right

Prints the figures of ``utils.identity.summary``, accuracy per topic and a few replies
side by side, and writes the report to build/<profile>/make_it_yours.json. The load
average is printed because the fine-tuning time depends on what else the machine runs.

With ``--seeds`` it fine-tunes once per training seed instead (the model loaded and asked
"before" once) and prints identity accuracy and retention for each, with their mean and
range: one fact is 0.03 of retention, so one run cannot tell two recipes apart.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import textwrap
from pathlib import Path

from utils import config
from utils.finetune import merge_lora
from utils.identity import (
    Identity,
    add_lora,
    evaluate,
    fine_tune,
    identity_config,
    json_report,
    load_question_sets,
    make_batches,
    make_it_yours,
    retention,
    summary,
)
from utils.identity_data import (
    TRAIN_FILE,
    everyday_conversations,
    load_conversations,
    load_questions,
    neutral_template,
    reference_conversations,
)


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


def over_seeds(cfg, identity: Identity, recipe, seeds: list[int]) -> list[dict]:
    """Fine-tune a fresh copy of SmolLM2 once per seed (same data, same recipe); identity and retention of each."""
    from utils.pretrained import load_smollm2

    original, tokenizer = load_smollm2(device=cfg.device)
    neutral_template(tokenizer)
    heldout, facts = load_question_sets(identity, recipe.eval_questions)
    before = evaluate(original, tokenizer, facts, recipe.max_new_tokens)
    batches = make_batches(tokenizer, load_conversations(TRAIN_FILE, identity), everyday_conversations(identity),
                           reference_conversations(heldout), recipe.batch_size)
    rows = []
    for seed in seeds:
        model = copy.deepcopy(original)
        add_lora(model, recipe)
        metrics = fine_tune(model, batches, dataclasses.replace(recipe, seed=seed, progress=False))
        merge_lora(model)
        after = evaluate(model, tokenizer, facts, recipe.max_new_tokens)
        lost = [q.question for q, b, a in zip(facts, before.correct, after.correct) if b and not a]
        rows.append({"seed": seed, "identity": evaluate(model, tokenizer, heldout, recipe.max_new_tokens).accuracy,
                     "retention": retention(before, after), "seconds": metrics["seconds"], "lost": lost})
        print(f"seed {seed}: identity {rows[-1]['identity']:.2f}, retention {rows[-1]['retention']:.2f}, "
              f"fine-tuning {metrics['seconds']:.0f} s; lost: {lost}", flush=True)
    for key in ("identity", "retention"):
        values = [row[key] for row in rows]
        print(f"{key}: mean {statistics.mean(values):.3f}, range {min(values):.2f} .. {max(values):.2f} "
              f"over {len(values)} seeds")
    return rows


def side_by_side(report: dict, key: str, n: int) -> None:
    before, after = report["before"][key], report["after"][key]
    for b, a in list(zip(before["replies"], after["replies"]))[:n]:
        print(f"\nQ: {b['question']}")
        for label, r in (("before", b), ("after ", a)):
            mark = "ok " if r["correct"] else "-- "
            print(textwrap.fill(r["reply"], 110, initial_indent=f"  {label} {mark}", subsequent_indent=" " * 13))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=Identity.name)
    parser.add_argument("--maker", default=Identity.maker)
    parser.add_argument("--screen-facts", type=Path, help="candidate questions (JSONL) to screen instead")
    parser.add_argument("--out", type=Path, default=Path("data/identity/facts.jsonl"))
    parser.add_argument("--show", type=int, default=6, help="replies shown side by side per set")
    for field in dataclasses.fields(config.Profile):  # --max-iters, --lora-layers ...: override the profile
        if field.name.startswith("identity_"):
            parser.add_argument("--" + field.name[len("identity_"):].replace("_", "-"), type=float, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--anchor-weight", type=float, default=None, help="KL anchor weight (0: none)")
    parser.add_argument("--seed", type=float, default=None, help="the training seed (default: the course's)")
    parser.add_argument("--seeds", type=int, nargs="+", help="fine-tune once per seed; print each and the mean")
    args = parser.parse_args()

    cfg = config.load()
    config.use_threads(cfg.profile)
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
    if args.seeds:
        rows = over_seeds(cfg, Identity(args.name, args.maker), recipe, args.seeds)
        out = cfg.paths.build / cfg.profile.name / "make_it_yours_seeds.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {"recipe": dataclasses.asdict(recipe), "seeds": rows}
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"report: {out}")
        return
    report = json_report(make_it_yours(cfg, Identity(args.name, args.maker), recipe=recipe))
    for when in ("before", "after"):
        print(f"{when:<7} by topic: " + ", ".join(f"{t} {a:.0%}" for t, a in report[when]["identity"]["by_topic"].items())
              + f"   (answers took {report[when]['identity']['seconds'] + report[when]['facts']['seconds']:.0f} s)")
    side_by_side(report, "identity", args.show)
    side_by_side(report, "facts", max(1, args.show // 2))
    print("\n" + summary(report))
    out = cfg.paths.build / cfg.profile.name / "make_it_yours.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"report: {out}")


if __name__ == "__main__":
    main()
