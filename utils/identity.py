"""Make it yours (06): LoRA-fine-tune SmolLM2-135M-Instruct on a CPU so that it knows its name and its maker.

The recipe, every step a function the notebook shows:

1. ``load_smollm2()``: the real model in our GPT; ``neutral_template``: its chat template's
   hidden system message (which names SmolLM) becomes ours, ``SYSTEM_PROMPT``, which names no one.
2. ``evaluate(...)`` *before*: identity accuracy on held-out questions (near 0: it does not know
   who it is) and the factual questions (all right: they were chosen that way).
3. ``add_lora``: adapters on the last ``lora_layers`` blocks. Backpropagation stops at the
   first adapted block, and the frozen layers below give the same outputs at every epoch, so
   ``fine_tune`` computes them once per conversation and trains only the top (``utils.top_blocks``),
   whose output layer runs only where a reply token is scored.
4. ``fine_tune``: ``utils.training.train`` (the course's one loop) on the identity and everyday
   conversations, the loss only on the replies (``utils.chat_spans``), batches with little padding
   (``ChatBatches``); on the everyday replies a KL anchor keeps the model near the original
   (``utils.anchor``), so it forgets less of what it knew.
5. ``merge_lora``, then ``evaluate(...)`` *after*, and ``save_yours``: a plain GPT checkpoint with
   its tokenizer in ``checkpoints/<profile>/smollm2-yours``, which ``ensure_yours(cfg)`` gives to
   later notebooks (DPO, ethics, the chat), rebuilding it with a message when it is missing.

``python -m utils.identity --name Nova --maker "Your Name"`` does all of it from a terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from utils import checkpoint as ckpt
from utils import training
from utils.anchor import AnchoredLoss, reference_log_probs
from utils.finetune import apply_lora, lora_targets, merge_lora, trainable_parameters
from utils.evaluation import Rate, rate
from utils.identity_data import (
    BLEED_FILE,
    DEV_BLEED_FILE,
    DEV_FILE,
    FACTS_FILE,
    FACTS_TEST_FILE,
    OPENERS,
    SYSTEM_PROMPT,
    TEST_FILE,
    TRAIN_FILE,
    ChatBatches,
    Identity,
    Question,
    TrainingSet,
    encode_all,
    is_correct,
    load_conversations,
    load_prompts,
    load_questions,
    mentions_identity,
    neutral_template,
    reference_conversations,
    training_set,
    with_system,
)
from utils.replies import generate_replies
from utils.top_blocks import TopBlocks, block_inputs

YOURS = "smollm2-yours"  # the folder under cfg.paths.checkpoints
REPORT_FILE = "identity.json"  # written last: a folder without it is incomplete and is rebuilt


@dataclass
class IdentityConfig:
    """The fine-tuning recipe; ``identity_config(profile)`` takes the sizes from the profile."""

    max_iters: int = 60  # LoRA optimizer steps
    batch_size: int = 8  # conversations per step
    lora_rank: int = 8  # r: each adapter adds r x (in + out) numbers to a Linear
    lora_alpha: int = 16  # the adapters' output is scaled by alpha / r
    lora_layers: int = 15  # adapt the last N blocks (SmolLM2 has 30)
    learning_rate: float = 8e-4  # peak rate (the recipes measured: benchmarks/make_it_yours.md)
    anchor_weight: float = 2.0  # weight of the KL anchor on the everyday replies (utils.anchor; 0 = none)
    later_turns: int = 0  # two-turn conversations built of each kind (identity_data.later_turns)
    warmup_iters: int = 5  # linear warm-up, then a cosine to a tenth of the peak
    eval_questions: int | None = None  # ask the first N questions of each set; None = all
    max_new_tokens: int = 32  # reply budget per evaluation question (greedy, stops at <|im_end|>)
    seed: int = 1337
    progress: bool = True  # progress bar while training
    device: str = "cpu"


def identity_config(profile, seed: int = 1337, device: str = "cpu") -> IdentityConfig:
    """The profile's budget for "Make it yours" (fields ``identity_*`` of ``utils.config.Profile``)."""
    return IdentityConfig(
        max_iters=profile.identity_max_iters,
        batch_size=profile.identity_batch_size,
        lora_rank=profile.identity_lora_rank,
        lora_alpha=2 * profile.identity_lora_rank,
        lora_layers=profile.identity_lora_layers,
        eval_questions=profile.identity_eval_questions,
        max_new_tokens=profile.identity_max_new_tokens,
        later_turns=profile.identity_later_turns,
        seed=seed,
        progress=profile.progress,
        device=device,
    )


# --------------------------------------------------------------------------- LoRA and training


def add_lora(model, cfg: IdentityConfig):
    """Freeze the model and add LoRA adapters to the last ``cfg.lora_layers`` blocks, in place."""
    return apply_lora(model, r=cfg.lora_rank, alpha=cfg.lora_alpha,
                      target_modules=lora_targets(model, cfg.lora_layers))


def train_config(cfg: IdentityConfig, block_size: int) -> training.TrainConfig:
    """``cfg`` as the training loop's config: no weight decay (it would pull the adapters to zero)."""
    return training.TrainConfig(
        batch_size=cfg.batch_size, block_size=block_size, max_iters=cfg.max_iters,
        learning_rate=cfg.learning_rate, min_lr=cfg.learning_rate / 10,
        warmup_iters=min(cfg.warmup_iters, max(0, cfg.max_iters - 1)), weight_decay=0.0,
        eval_interval=cfg.max_iters, eval_iters=2, log_interval=1, checkpoint=False,
        progress=cfg.progress, verbose=False, device=cfg.device, seed=cfg.seed,
    )


def make_batches(tokenizer, data: TrainingSet, val_conversations, batch_size: int) -> ChatBatches:
    """The ``batch_fn``: ``data`` to train on (the everyday replies anchored; of a two-turn conversation
    built by ``later_turns`` only the last reply scored), held-out references for the validation loss."""
    train, anchored = [], []
    for conversations, last_only, anchor in ((data.identity, False, False), (data.everyday, False, True),
                                             (data.later_identity, True, False), (data.later_everyday, True, True)):
        if anchor:
            anchored += range(len(train), len(train) + len(conversations))
        train += encode_all(tokenizer, conversations, last_reply_only=last_only)
    return ChatBatches(train, encode_all(tokenizer, val_conversations), batch_size, tokenizer.pad_token_id,
                       anchored=frozenset(anchored))


def fine_tune(model, batches: ChatBatches, cfg: IdentityConfig) -> dict:
    """Train the adapters with ``utils.training.train``; returns its metrics, plus the times.

    The loop trains ``TopBlocks`` (``utils.top_blocks``), the GPT's own last ``cfg.lora_layers``
    blocks (so the GPT learns in place), on the hidden states that the frozen layers below
    give, computed once per conversation: they are the same at every step. Even with every
    block adapted this pays: the frozen embedding is looked up once, and the output layer
    (a fifth of SmolLM2's compute per token) runs only where a reply token is scored.
    With ``cfg.anchor_weight`` > 0 the anchored examples (the everyday ones) add the KL to the
    model as it is *now* (``utils.anchor``): call this on a freshly adapted model, whose
    adapters are still zero, so that it is the original.
    ``seconds`` is the wall time of all of it, caching included, ``cache_seconds`` the caching
    alone; ``cpu_seconds`` this process's CPU time (on a machine that other programs share,
    the wall time grows with their load).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    gpt = ckpt.unwrap(model)
    reference = {}
    if cfg.anchor_weight > 0:
        reference = reference_log_probs(gpt, batches.examples["train"], sorted(batches.anchored))
    trained = TopBlocks(gpt, cfg.lora_layers)
    states = {split: block_inputs(gpt, [ids[:-1] for ids, _ in examples], trained.first)
              for split, examples in batches.examples.items()}
    batches = batches.with_states(states)
    cache_seconds = time.perf_counter() - start
    longest = max(len(ids) for split in batches.examples.values() for ids, _ in split)
    anchored = AnchoredLoss(batches, reference, cfg.anchor_weight)
    metrics = training.train(trained, cfg=train_config(cfg, longest), batch_fn=anchored.batch_fn,
                             loss_fn=anchored.loss_fn)
    metrics["seconds"], metrics["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu_start
    metrics["cache_seconds"] = cache_seconds
    return metrics


# --------------------------------------------------------------------------- asking questions


@dataclass
class Score:
    """What a model answered to a set of requests, and which replies were right."""

    questions: list[Question]
    replies: list[str]
    correct: list[bool]
    seconds: float  # wall time of the answers

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    @property
    def rate(self) -> Rate:
        """The share right, with its count and a 95% interval."""
        return rate(self.correct)

    def by_topic(self) -> dict[str, float]:
        groups = defaultdict(list)
        for question, ok in zip(self.questions, self.correct):
            groups[question.topic].append(ok)
        return {topic: sum(oks) / len(oks) for topic, oks in groups.items()}


def own_openers(model, tokenizer, max_new_tokens: int, system: str = SYSTEM_PROMPT) -> list[list[dict]]:
    """``OPENERS``, each with the model's own greedy reply: first exchanges for questions asked as a later turn."""
    asked = [[{"role": "user", "content": opener}] for opener in OPENERS]
    replies = generate_replies(model, tokenizer, [with_system(m, system) for m in asked], max_new_tokens)
    return [m + [{"role": "assistant", "content": r.text or "..."}] for m, r in zip(asked, replies)]


def evaluate(model, tokenizer, questions: list[Question], max_new_tokens: int, system: str = SYSTEM_PROMPT,
             earlier: list[list[dict]] | None = None, probe=None) -> Score:
    """Ask every question (greedy) and score each reply with ``is_correct``.

    ``earlier``: exchanges (a user message and the reply to it) put before the questions in
    turn, so that each question is the *next* turn of a conversation: a model that answers the
    previous message again, or forgets itself after one exchange, fails here and not alone.
    ``probe``: an aligned model's refusal probe (07), so that its declines count as they happen.
    """
    start = time.perf_counter()
    conversations = [with_system((earlier[i % len(earlier)] if earlier else []) +
                                 [{"role": "user", "content": q.question}], system) for i, q in enumerate(questions)]
    replies = [r.text for r in generate_replies(model, tokenizer, conversations, max_new_tokens, batch_size=32,
                                                probe=probe)]
    return Score(questions, replies, [is_correct(r, q) for r, q in zip(replies, questions)],
                 time.perf_counter() - start)


def bleed(model, tokenizer, identity: Identity, prompts: list[str], max_new_tokens: int,
          system: str = SYSTEM_PROMPT) -> Score:
    """Replies to requests about something else; ``correct`` is True when a reply names neither the model nor its maker.

    Fine-tuning on "I'm Pip" can teach the name as an answer to everything ("a woman named
    Pip", "Dear Mr. Alex"): the share of these replies that mention either is the *bleed*.
    """
    start = time.perf_counter()
    questions = [Question(question=p, must=[], topic="bleed") for p in prompts]
    conversations = [with_system([{"role": "user", "content": p}], system) for p in prompts]
    replies = [r.text for r in generate_replies(model, tokenizer, conversations, max_new_tokens, batch_size=32)]
    return Score(questions, replies, [not mentions_identity(r, identity) for r in replies],
                 time.perf_counter() - start)


def question_sets(identity: Identity, split: str, limit: int | None = None) -> dict[str, list]:
    """The identity and factual questions and the bleed prompts of ``split``, the first ``limit`` of each.

    "dev" is what recipes are chosen on (``dev.jsonl``, ``facts.jsonl``, ``dev_bleed.jsonl``);
    "test" is written apart and only reports (``test.jsonl``, ``facts_test.jsonl``, ``bleed.jsonl``).
    """
    if split == "dev":
        return {"identity": load_questions(DEV_FILE, identity)[:limit],
                "facts": load_questions(FACTS_FILE, identity)[:limit], "bleed": load_prompts(DEV_BLEED_FILE)[:limit]}
    if split == "test":
        return {"identity": load_questions(TEST_FILE, identity)[:limit],
                "facts": load_questions(FACTS_TEST_FILE, identity)[:limit], "bleed": load_prompts(BLEED_FILE)[:limit]}
    raise ValueError(f"split={split!r}; use 'dev' or 'test'.")


def measure(model, tokenizer, identity: Identity, split: str, max_new_tokens: int, limit: int | None = None,
            system: str = SYSTEM_PROMPT) -> dict[str, Score]:
    """Every figure of Make it yours on ``split``: identity and facts asked alone and as a later turn, and bleed."""
    sets = question_sets(identity, split, limit)
    earlier = own_openers(model, tokenizer, max_new_tokens, system)
    scores = {}
    for key in ("identity", "facts"):
        scores[key] = evaluate(model, tokenizer, sets[key], max_new_tokens, system)
        scores[f"{key} (later turn)"] = evaluate(model, tokenizer, sets[key], max_new_tokens, system, earlier)
    if "bleed" in sets:
        scores["no bleed"] = bleed(model, tokenizer, identity, sets["bleed"], max_new_tokens, system)
    return scores


def correct_flags(score) -> list[bool]:
    """Which replies of a Score, or of its JSON form (``json_report``), were right."""
    return list(score.correct) if isinstance(score, Score) else [r["correct"] for r in score["replies"]]


def retention(before, after) -> Rate:
    """Of the questions answered correctly before, the share still answered correctly after (count, interval)."""
    return rate([a for b, a in zip(correct_flags(before), correct_flags(after)) if b])


# What a made-yours model must reach, judged on dev (recipes are chosen there): (figure, at least).
GOALS = {"identity": 0.8, "facts kept": 0.9, "no bleed": 0.95}
LATER_TURN_GAP = 0.1  # a figure asked as a later turn may fall at most this far below its single-turn value


def headline(before: dict, after: dict) -> dict[str, Rate]:
    """The figures that judge a recipe, each a Rate (count and interval), from ``measure`` before and after.

    identity: right after; facts kept: of the facts answered right before (asked alone: what
    the model knew), the share right after (retention); each also asked as a later turn, on
    the same questions, so the two are comparable; no bleed: replies to unrelated requests that
    name neither the model nor its maker.
    """
    figures = {}
    for key in ("identity", "identity (later turn)"):
        figures[key] = rate(correct_flags(after[key]))
    for key in ("facts", "facts (later turn)"):
        figures[key.replace("facts", "facts kept")] = retention(before["facts"], after[key])
    if "no bleed" in after:
        figures["no bleed"] = rate(correct_flags(after["no bleed"]))
    return figures


def verdicts(figures: dict[str, Rate]) -> list[tuple[str, bool, str]]:
    """``(goal, met, how far)`` for each of ``GOALS`` and each later turn against its single turn."""
    lines = []
    for key, goal in GOALS.items():
        if key in figures:
            lines.append((f"{key} >= {goal:.2f}", figures[key].value >= goal, f"{key} {figures[key]}"))
    for key in ("identity", "facts kept"):
        single, later = figures[key].value, figures[f"{key} (later turn)"].value
        lines.append((f"{key} as a later turn within {LATER_TURN_GAP:.2f} of alone", single - later <= LATER_TURN_GAP,
                      f"{later:.2f} as a later turn against {single:.2f} alone (gap {single - later:+.2f})"))
    return lines


# --------------------------------------------------------------------------- the checkpoint


def yours_dir(cfg) -> Path:
    return cfg.paths.checkpoints / YOURS


def save_yours(model, tokenizer, folder: str | os.PathLike, report: dict) -> Path:
    """The merged GPT (safetensors), its tokenizer in ``folder/tokenizer`` and ``identity.json``, written last."""
    return ckpt.save_finetuned(model, tokenizer, folder, REPORT_FILE, report, "SmolLM2-135M-Instruct, made yours")


def load_yours(folder: str | os.PathLike, device: str = "cpu"):
    """``(model, tokenizer, report)`` from a folder written by ``save_yours``."""
    return ckpt.load_finetuned(folder, REPORT_FILE, "run ensure_yours(cfg) or python -m utils.identity", device)


def ensure_yours(cfg, identity: Identity | None = None, device: str | None = None):
    """``(model, tokenizer)`` of the profile's fine-tuned SmolLM2; made first (with a message) when missing.

    ``identity``: None takes whatever was made; an Identity that differs from the saved
    one rebuilds the model for it. Later notebooks (DPO, ethics, the chat) start here.
    """
    folder = yours_dir(cfg)
    device = device or cfg.device
    saved = None
    if (folder / REPORT_FILE).exists():
        saved = Identity(**json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))["identity"])
    if saved is None or (identity is not None and identity != saved):
        why = "none yet" if saved is None else f"it is {saved}, you asked for {identity}"
        print(f"No 'Make it yours' model in {folder} ({why}): fine-tuning SmolLM2 now "
              f"(what notebook 06 does; {cfg.profile.identity_max_iters} LoRA steps) ...")
        make_it_yours(cfg, identity or Identity(), measure_split=None)
    model, tokenizer, _ = load_yours(folder, device)
    return model, tokenizer


# --------------------------------------------------------------------------- end to end


def make_it_yours(cfg, identity: Identity = Identity(), measure_split: str | None = "test", out_dir=None, log=print,
                  recipe: IdentityConfig | None = None, data: TrainingSet | None = None) -> dict:
    """Everything above, in order: load, (measure), LoRA, fine-tune, merge, (measure), save. Returns the report.

    ``measure_split``: the questions asked before and after ("test": the untouched ones that
    report; "dev": the ones recipes are chosen on; None: no questions, a rebuild for a later
    notebook). ``recipe`` replaces the profile's ``identity_config`` (to try other settings),
    ``data`` the training conversations (default: ``training_set(identity, recipe.later_turns)``).
    """
    from utils.pretrained import load_smollm2

    icfg = recipe or identity_config(cfg.profile, cfg.seed, cfg.device)
    model, tokenizer = load_smollm2(device=cfg.device)
    neutral_template(tokenizer)
    report = {"identity": dataclasses.asdict(identity), "system_prompt": SYSTEM_PROMPT,
              "config": dataclasses.asdict(icfg), "split": measure_split, "load_average_start": os.getloadavg()[0]}
    if measure_split:
        log(f"Before: asking the {measure_split} questions ...")
        report["before"] = measure(model, tokenizer, identity, measure_split, icfg.max_new_tokens, icfg.eval_questions)
    dev = load_questions(DEV_FILE, identity)[:icfg.eval_questions]
    data = data or training_set(identity, icfg.later_turns)
    batches = make_batches(tokenizer, data, reference_conversations(dev), icfg.batch_size)
    add_lora(model, icfg)
    report["trainable_parameters"], report["parameters"] = trainable_parameters(model)
    log(f"Fine-tuning {report['trainable_parameters']:,} of {report['parameters']:,} parameters "
        f"for {icfg.max_iters} steps ...")
    metrics = fine_tune(model, batches, icfg)
    merge_lora(model)
    report["fine_tune"] = {k: metrics[k] for k in ("seconds", "cpu_seconds", "cache_seconds", "train_loss",
                                                     "val_loss", "tokens_per_second")}
    report["fine_tune"]["losses"] = [h["loss"] for h in metrics["history"]]
    if measure_split:
        log("After: asking the same questions ...")
        report["after"] = measure(model, tokenizer, identity, measure_split, icfg.max_new_tokens, icfg.eval_questions)
        report["retention"] = retention(report["before"]["facts"], report["after"]["facts"])
    report["load_average_end"] = os.getloadavg()[0]
    save_yours(model.eval(), tokenizer, out_dir or yours_dir(cfg), json_report(report))
    report["model"], report["tokenizer"] = model, tokenizer
    return report


def json_report(report: dict) -> dict:
    """The report as plain JSON: each Score becomes its figures and replies, each Rate its count and total."""
    def plain(value):
        if isinstance(value, Score):
            return {"accuracy": value.accuracy, "right": sum(value.correct), "asked": len(value.correct),
                    "by_topic": value.by_topic(), "seconds": value.seconds,
                    "replies": [{"question": q.question, "reply": r, "correct": ok}
                                for q, r, ok in zip(value.questions, value.replies, value.correct)]}
        if isinstance(value, Rate):
            return {"value": value.value, "k": value.k, "n": value.n}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k not in ("model", "tokenizer")}
        return value

    return plain(report)


def score_rate(score) -> Rate:
    """The Rate of a Score, or of its JSON form (``json_report``)."""
    return score.rate if isinstance(score, Score) else Rate(score["right"], score["asked"])


def summary(report: dict) -> str:
    """Before/after figures of a report as a few lines of text, each rate with its count and interval."""
    lines = []
    if report.get("before"):
        for key in report["before"]:
            label = "no name or maker in other replies" if key == "no bleed" else f"{key} right"
            lines.append(f"{label:<34} before {score_rate(report['before'][key])}")
            lines.append(f"{'':<34} after  {score_rate(report['after'][key])}")
        for key, value in headline(report["before"], report["after"]).items():
            if key.startswith("facts kept"):
                lines.append(f"{key + ' (retention)':<34} {value}")
    ft = report["fine_tune"]
    lines.append(f"{'fine-tuning time':<34} {ft['seconds']:.0f} s wall, {ft['cpu_seconds']:.0f} s CPU "
                 f"({ft['tokens_per_second']:,.0f} tokens/s), loss {ft['losses'][0]:.2f} -> {ft['losses'][-1]:.2f}")
    lines.append(f"{'load average (start, end)':<34} {report['load_average_start']:.1f}, "
                 f"{report['load_average_end']:.1f}  on {os.cpu_count()} CPUs")
    return "\n".join(lines)


def main(argv=None) -> int:
    from utils import config

    parser = argparse.ArgumentParser(description="Fine-tune SmolLM2 with LoRA so that it knows its name and "
                                     "who made it; saves checkpoints/<profile>/smollm2-yours.")
    parser.add_argument("--name", default=Identity.name, help="the model's name (default: %(default)s)")
    parser.add_argument("--maker", default=Identity.maker, help="your name (default: %(default)s)")
    parser.add_argument("--measure", choices=["test", "dev", "none"], default="test",
                        help="the questions asked before and after (default: the untouched test set)")
    args = parser.parse_args(argv)
    cfg = config.load()
    config.use_threads(cfg.profile)
    report = make_it_yours(cfg, Identity(args.name, args.maker),
                           measure_split=None if args.measure == "none" else args.measure)
    print(summary(report))
    print(f"Saved to {yours_dir(cfg)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
