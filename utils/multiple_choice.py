"""Benchmark-style evaluation: multiple-choice questions scored by the likelihood of each answer.

Benchmarks such as ARC, HellaSwag or MMLU ask a question with a few possible
answers. A language model does not have to *write* its answer: we ask it how
likely each choice is as the continuation of the question and take the most
likely one (the "cloze" scoring of the GPT-3 paper and of lm-evaluation-harness).
Nothing is generated, so it works for a small pretrained model as well as for a
chat model, and the score is exact and repeatable.

- **Log-likelihood of a choice**: the sum of ln p(token | question, earlier tokens
  of the choice) over the choice's tokens.
- **Length normalisation**: a sum of negative numbers gets smaller with every token,
  so a long right answer loses against a short wrong one. Dividing by the choice's
  tokens ("per token") or bytes ("per byte", lm-evaluation-harness's ``acc_norm``
  divides by characters) compares the choices on an equal footing. Bytes do not
  depend on the tokenizer, so per byte is the fairer of the two across models.
- **Centred accuracy** (nanochat's CORE): with k choices a guess is right 1/k of the
  time, so accuracy 0.25 on four choices is no better than chance. Each item is
  scored (right - 1/k) / (1 - 1/k): 0 for guessing, 1 for always right, below 0 for
  worse than chance; items with different numbers of choices are each centred on
  their own chance before averaging.

``evaluate(model, tokenizer, items, prompt)`` does it all; ``read_items`` reads the
course's items (``data/multiple_choice/everyday.jsonl``), ``load_arc_easy`` the hub's
ARC-Easy (online), and ``figures`` names the results for the report card. It works
with our ``utils.model.GPT`` (the learner's model, SmolLM2, after LoRA too) and with a
``transformers`` causal LM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from utils.config import REPO_ROOT
from utils.evaluation import bootstrap_interval, model_block_size, model_device, model_logits
from utils.io import read_jsonl

__all__ = [
    "EVERYDAY", "NORMALISATIONS", "Item", "make_item", "read_items", "load_arc_easy", "PromptFormat",
    "QUESTION_ANSWER", "conversation_format", "chat_format", "ScoredItem", "score_items", "chance_accuracy",
    "centred", "Result", "summarise", "evaluate", "disagreements", "figures", "describe",
]

EVERYDAY = REPO_ROOT / "data" / "multiple_choice" / "everyday.jsonl"  # the course's own items
NORMALISATIONS = ("sum", "per token", "per byte")


# --------------------------------------------------------------------------- the items


@dataclass(frozen=True)
class Item:
    """One question, its choices, and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    id: str = ""

    @property
    def chance(self) -> float:
        """The accuracy of a uniform guess on this item: 1 / the number of choices."""
        return 1.0 / len(self.choices)


def make_item(record: dict, where: str) -> Item:
    """An ``Item`` from a dict with ``question``, ``choices`` and ``answer``; a clear error otherwise.

    ``where`` names the record in the error (e.g. ``"everyday.jsonl, line 12"``).
    """
    missing = [name for name in ("question", "choices", "answer") if name not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}; each item needs "
                         '{"question": str, "choices": [str, str, ...], "answer": index of the right choice}.')
    question, choices, answer = record["question"], record["choices"], record["answer"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}, field question: expected a non-empty string, got {question!r}.")
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError(f"{where}, field choices: expected a list of at least 2 strings, got {choices!r}.")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            raise ValueError(f"{where}, field choices[{i}]: expected a non-empty string, got {choice!r}.")
    if len(set(choices)) != len(choices):
        raise ValueError(f"{where}, field choices: two choices are the same text ({choices!r}); "
                         "a repeated choice cannot be told apart from itself.")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(f"{where}, field answer: expected the index of the right choice, an integer from 0 to "
                         f"{len(choices) - 1}, got {answer!r}.")
    return Item(question, tuple(choices), answer, str(record.get("id", "")))


def read_items(path: str | Path = EVERYDAY) -> list[Item]:
    """The items of a JSON Lines file, one ``{"question", "choices", "answer"[, "id"]}`` per line, validated."""
    path = Path(path)
    items = [make_item(record, f"{path.name}, line {number}") for number, record in read_jsonl(path)]
    if not items:
        raise ValueError(f"{path}: no items; write one JSON object per line.")
    return items


def load_arc_easy(split: str = "test", limit: int | None = None) -> list[Item]:
    """ARC-Easy (AI2 Reasoning Challenge, grade-school science; CC BY-SA 4.0) from the hub, as ``Item``s.

    Needs the internet (``datasets.load_dataset("allenai/ai2_arc", "ARC-Easy")``). Its
    answers are letters or digits (``answerKey``) that index ``choices["label"]``.
    """
    import datasets

    rows = datasets.load_dataset("allenai/ai2_arc", "ARC-Easy", split=split)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    items = []
    for row in rows:
        labels = list(row["choices"]["label"])
        if row["answerKey"] not in labels:
            raise ValueError(f"ARC-Easy {row['id']}: answerKey {row['answerKey']!r} is not one of {labels}.")
        items.append(make_item({"question": row["question"], "choices": list(row["choices"]["text"]),
                                "answer": labels.index(row["answerKey"]), "id": row["id"]}, f"ARC-Easy {row['id']}"))
    return items


# --------------------------------------------------------------------------- how a question is shown to a model


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes the text before the choices, for one kind of model.

    The model reads ``context(question)`` and is scored on ``choice_prefix + choice``.
    """

    name: str
    template: str  # the text before the choice, with {question} where the question goes
    choice_prefix: str = ""  # written before every choice (" " after "Answer:")

    def context(self, question: str) -> str:
        return self.template.replace("{question}", question)

    def continuation(self, choice: str) -> str:
        return self.choice_prefix + choice


# The format of lm-evaluation-harness for ARC: "Question: ...\nAnswer: <choice>".
QUESTION_ANSWER = PromptFormat("question / answer", "Question: {question}\nAnswer:", " ")


def conversation_format(start: str) -> PromptFormat:
    """The course's pretraining text: a new conversation (``start``, e.g. ``"<|endoftext|>\\n"``),
    the question as its first line, the choice as the reply on the next line."""
    return PromptFormat("conversation lines", start + "{question}\n")


def chat_format(tokenizer, system: str | None = None) -> PromptFormat:
    """A chat model's own template: the question as the user's turn, the choice as the assistant's reply.

    ``tokenizer.apply_chat_template`` writes the prompt up to where the assistant's
    reply starts (SmolLM2 adds its default system message when ``system`` is None).
    """
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    messages.append({"role": "user", "content": "{question}"})
    template = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if "{question}" not in template:
        raise ValueError("chat_format: the tokenizer's chat template dropped the user's message.")
    return PromptFormat("chat template", template)


# --------------------------------------------------------------------------- scoring


@dataclass
class ScoredItem:
    """What a model thinks of one item's choices."""

    item: Item
    logprobs: np.ndarray  # (k,) sum of ln p over each choice's tokens (nats, <= 0)
    n_tokens: np.ndarray  # (k,) tokens of each choice
    n_bytes: np.ndarray  # (k,) UTF-8 bytes of each choice as scored (with the prefix)

    def scores(self, normalisation: str = "per byte") -> np.ndarray:
        """(k,) the number the prediction maximises: the sum, or the sum per token or per byte."""
        if normalisation == "sum":
            return self.logprobs
        if normalisation == "per token":
            return self.logprobs / self.n_tokens
        if normalisation == "per byte":
            return self.logprobs / self.n_bytes
        raise ValueError(f"normalisation={normalisation!r}; use one of {NORMALISATIONS}.")

    def predicted(self, normalisation: str = "per byte") -> int:
        return int(np.argmax(self.scores(normalisation)))  # a tie goes to the first choice

    def correct(self, normalisation: str = "per byte") -> bool:
        return self.predicted(normalisation) == self.item.answer


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens added (a BOS would land in the middle)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # a tokenizer without the keyword (the course's BPETokenizer)
        return list(tokenizer.encode(text))


def _fit(context: list[int], choices: list[list[int]], block_size: int | None, where: str) -> list[int]:
    """The context cut from the left so that it and the longest choice fit the model's context."""
    longest = max(len(c) for c in choices)
    if block_size is None:
        return context
    if longest >= block_size:
        raise ValueError(f"{where}: a choice of {longest} tokens does not fit the model's context of "
                         f"{block_size} tokens with any of the question before it; shorten the choice.")
    return context[-(block_size - longest):]  # lm-evaluation-harness also drops the oldest tokens


def _summed_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(R,) sum over each row of ln p(target), ignoring -100."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none")  # (R, W)
    return -nll.sum(dim=1)


@torch.no_grad()
def _logprobs_shared_context(model, contexts: list[list[int]], choices: list[list[list[int]]], device):
    """Our GPT, items whose questions have the same number of tokens: each question runs once.

    The questions run as one batch with a KV cache; every choice row then reuses its
    question's cached keys and values, so a question's tokens are computed once, not
    once per choice. Returns one (k,) array per item.
    """
    from utils.model import KVCache

    owner = torch.tensor([i for i, item in enumerate(choices) for _ in item], device=device)  # (R,) item of each row
    flat = [c for item in choices for c in item]  # R choices
    cache = KVCache(model.config.n_layer)
    logits, _ = model(torch.tensor(contexts, device=device), cache=cache)  # (B, Tc, V)
    after_question = F.log_softmax(logits[:, -1].float(), dim=-1)  # (B, V): the first token of the answer
    total = after_question[owner, torch.tensor([c[0] for c in flat], device=device)]  # (R,)
    longest = max(len(c) for c in flat)
    if longest > 1:  # the rest of each choice, after its first token
        for layer in range(len(cache.keys)):
            cache.keys[layer] = cache.keys[layer].index_select(0, owner)  # (R, n_kv, Tc, hs)
            cache.values[layer] = cache.values[layer].index_select(0, owner)
        inputs = torch.zeros(len(flat), longest - 1, dtype=torch.long)  # (R, L-1): each choice but its last token
        targets = torch.full((len(flat), longest - 1), -100, dtype=torch.long)  # (R, L-1): the token that follows
        for row, c in enumerate(flat):  # padded on the right: no real token sees the padding
            inputs[row, : len(c) - 1] = torch.tensor(c[:-1])
            targets[row, : len(c) - 1] = torch.tensor(c[1:])
        logits, _ = model(inputs.to(device), cache=cache)  # (R, L-1, V)
        total = total + _summed_logprobs(logits, targets.to(device))
    total = total.double().cpu().numpy()
    return np.split(total, np.cumsum([len(item) for item in choices])[:-1])


@torch.no_grad()
def _logprobs_full_rows(model, contexts: list[list[int]], choices: list[list[list[int]]], device):
    """Any causal LM: one row per choice (question + choice), padded on the right, one forward for all."""
    rows = [(context, c) for context, item in zip(contexts, choices) for c in item]
    width = max(len(context) + len(c) for context, c in rows) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.long)  # (R, W)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)  # (R, W): only the choice is scored
    for row, (context, c) in enumerate(rows):
        ids = context + c
        inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
        targets[row, len(context) - 1 : len(ids) - 1] = torch.tensor(c)
    total = _summed_logprobs(model_logits(model, inputs.to(device)), targets.to(device))  # (R,)
    total = total.double().cpu().numpy()
    return np.split(total, np.cumsum([len(item) for item in choices])[:-1])


def _batches(lengths: list[int], batch_size: int, same_length: bool) -> list[list[int]]:
    """Item indices in batches: sorted by length (less padding); with ``same_length`` one length per batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (not same_length or lengths[batches[-1][0]] == lengths[i]):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def score_items(model, tokenizer, items: list[Item], prompt: PromptFormat = QUESTION_ANSWER,
                batch_size: int = 16, shared_context: bool | None = None) -> list[ScoredItem]:
    """Every choice's log-likelihood given its question, written in ``prompt``'s format.

    The question and each choice are encoded separately (so a choice's tokens are the
    same whatever the question), and only the choice's tokens are scored. Items run
    ``batch_size`` at a time. With our GPT (``shared_context=None`` picks it) each
    question runs once and its KV cache serves all its choices (items with questions of
    the same length share a batch); other models get one padded row per choice.
    The model runs in eval mode (no dropout) and is put back as it was.
    """
    from utils.model import GPT

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use at least 1.")
    if shared_context is None:
        shared_context = isinstance(model, GPT)
    score = _logprobs_shared_context if shared_context else _logprobs_full_rows
    device, block_size = model_device(model), model_block_size(model)
    contexts, choices, texts = [], [], []
    for number, item in enumerate(items):
        where = f"item {item.id or number}"
        texts.append([prompt.continuation(choice) for choice in item.choices])
        choices.append([_encode(tokenizer, text) for text in texts[-1]])
        if min(len(c) for c in choices[-1]) == 0:
            raise ValueError(f"{where}: a choice encodes to no tokens.")
        contexts.append(_fit(_encode(tokenizer, prompt.context(item.question)), choices[-1], block_size, where))
        if not contexts[-1]:
            raise ValueError(f"{where}: the question encodes to no tokens; the model needs something to "
                             "condition on (give the prompt a start, e.g. conversation_format).")

    logprobs: list[np.ndarray | None] = [None] * len(items)
    was_training = model.training
    model.eval()
    try:
        for batch in _batches([len(c) for c in contexts], batch_size, same_length=shared_context):
            for i, values in zip(batch, score(model, [contexts[i] for i in batch], [choices[i] for i in batch],
                                              device)):
                logprobs[i] = values
    finally:
        model.train(was_training)
    return [ScoredItem(item, values, np.array([len(c) for c in item_choices]),
                       np.array([len(text.encode("utf-8")) for text in item_texts]))
            for item, values, item_choices, item_texts in zip(items, logprobs, choices, texts)]


# --------------------------------------------------------------------------- accuracy, centred on chance


def chance_accuracy(items) -> float:
    """The expected accuracy of guessing uniformly: the mean of 1/k over the items."""
    items = [s.item if isinstance(s, ScoredItem) else s for s in items]
    return float(np.mean([item.chance for item in items]))


def centred(correct: np.ndarray, chance: np.ndarray) -> np.ndarray:
    """Each item's (right - 1/k) / (1 - 1/k): 0 for a guess on average, 1 when right, -1/(k-1) when wrong."""
    correct, chance = np.asarray(correct, dtype=float), np.asarray(chance, dtype=float)
    return (correct - chance) / (1.0 - chance)


@dataclass
class Result:
    """Accuracy and centred accuracy of one model on one set of items, for each normalisation."""

    n_items: int
    chance: float  # the accuracy of a uniform guess (mean of 1/k)
    accuracy: dict[str, float]  # normalisation -> share of items right
    centred: dict[str, float]  # normalisation -> mean centred score (0 = chance, 1 = perfect)
    interval: dict[str, tuple[float, float]]  # normalisation -> 95% bootstrap interval of the centred score
    scored: list[ScoredItem] = field(repr=False, default_factory=list)

    def table_row(self, normalisation: str = "per byte") -> dict:
        low, high = self.interval[normalisation]
        return {"accuracy": self.accuracy[normalisation], "centred accuracy": self.centred[normalisation],
                "centred 95% interval": f"{low:+.2f} .. {high:+.2f}"}


def summarise(scored: list[ScoredItem], seed: int = 0) -> Result:
    """Accuracy, centred accuracy and its bootstrap interval (over items) for every normalisation."""
    if not scored:
        raise ValueError("summarise: no scored items.")
    chance = np.array([s.item.chance for s in scored])  # (n,)
    accuracy, centred_mean, interval = {}, {}, {}
    for normalisation in NORMALISATIONS:
        correct = np.array([s.correct(normalisation) for s in scored], dtype=float)  # (n,)
        item_scores = centred(correct, chance)  # (n,)
        accuracy[normalisation] = float(correct.mean())
        centred_mean[normalisation] = float(item_scores.mean())
        interval[normalisation] = bootstrap_interval(item_scores, seed=seed)
    return Result(len(scored), float(chance.mean()), accuracy, centred_mean, interval, scored)


def evaluate(model, tokenizer, items: list[Item], prompt: PromptFormat = QUESTION_ANSWER, seed: int = 0) -> Result:
    """Score every item (``score_items``) and summarise (``summarise``): the whole benchmark in one call."""
    return summarise(score_items(model, tokenizer, items, prompt), seed=seed)


def disagreements(scored: list[ScoredItem], first: str = "sum", second: str = "per byte") -> list[ScoredItem]:
    """The items where two normalisations pick different choices."""
    return [s for s in scored if s.predicted(first) != s.predicted(second)]


def figures(model_name: str, result: Result, benchmark: str = "everyday", normalisation: str = "per byte") -> dict:
    """Report-card figures with names that say what they are, e.g.
    ``"everyday multiple choice, SmolLM2 after DPO: centred accuracy (per byte)"``."""
    name = f"{benchmark} multiple choice, {model_name}"
    return {f"{name}: accuracy ({normalisation})": round(result.accuracy[normalisation], 4),
            f"{name}: centred accuracy ({normalisation})": round(result.centred[normalisation], 4),
            f"{name}: items": result.n_items}


def describe(item: ScoredItem) -> str:
    """One item's choices with their scores, for printing: which one each normalisation picks."""
    lines = [f"Q: {item.item.question}"]
    for i, choice in enumerate(item.item.choices):
        marks = "".join(f" <- {n}" for n in NORMALISATIONS if item.predicted(n) == i)
        right = " (right)" if i == item.item.answer else ""
        lines.append(f"  {choice!r:<40} sum {item.logprobs[i]:7.2f} nats, {item.n_tokens[i]:>2} tokens, "
                     f"{item.n_bytes[i]:>3} bytes: per token {item.logprobs[i] / item.n_tokens[i]:6.3f}, "
                     f"per byte {item.logprobs[i] / item.n_bytes[i]:6.3f}{right}{marks}")
    return "\n".join(lines)
