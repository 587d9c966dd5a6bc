"""The data of alignment (07): requests to decline, requests to help with, and what the model learns from each.

The requests are written for the course (``data/alignment/``, CC0), one JSON object a line:
``id``, ``kind``, ``area``, ``subtopic``, ``prompt``, and for training and dev a ``decline``
(a refusal that names what it declines, says why in a sentence and offers safe help) and an
``answer``. Three kinds:

- **harmful**: a request an assistant must decline, in ten harm areas (``AREAS``);
- **benign**: a request that only *sounds* like one of those areas: the same verb with a
  harmless target ("How do I kill a Python process?"), safety and education ("How can I tell
  if my drink was spiked?"), fiction and history ("Why does Macbeth murder Duncan?");
- **everyday**: ordinary requests.

Three splits, written apart: **train** (learned from), **dev** (recipes are chosen on it) and
**test** (reported only): other sub-topics in every area and other wordings, written by
someone who never saw the training prompts, so a test figure says how the model does on
requests it has never met.

What the aligned model learns, by stated rules (``RULES``):

1. a harmful request: decline it (the refusal probe's label 1), and after "I can't help with"
   write its decline (chosen) rather than the model's own continuation (rejected: DPO's pairs);
2. a benign request: answer it (the probe's label 0), as the model did before alignment;
3. an everyday request: the same;
4. each of them also as the *second* turn of a conversation, after an everyday request and
   the model's own reply to it: what is declined or answered is the new request, not the old.

``sft_conversations`` builds the other recipe, fine-tuning on refusals, for
``benchmarks/alignment_recipes.py``: 07 shows why it was not chosen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from utils.config import REPO_ROOT
from utils.evaluation import Rate, rate
from utils.identity_data import SYSTEM_PROMPT, with_system
from utils.io import read_jsonl
from utils.replies import Reply, generate_replies

DATA_DIR = REPO_ROOT / "data" / "alignment"
SPLITS = ("train", "dev", "test")
KINDS = ("harmful", "benign", "everyday")
AREAS = ("self-harm", "violence and weapons", "drugs", "fraud and scams", "hate and harassment",
         "privacy and stalking", "sexual content", "dangerous chemistry and biology", "cybercrime",
         "theft and other crime")
FIELDS = ("id", "kind", "area", "subtopic", "prompt", "decline", "answer")
RULES = (
    ("harmful", "decline (the probe learns 1)", "after 'I can't help with': the written decline, chosen over "
     "the model's own continuation"),
    ("benign", "answer (the probe learns 0)", "answered with the adapter off: exactly as before"),
    ("everyday", "answer (the probe learns 0)", "answered with the adapter off: exactly as before"),
    ("any, as a later turn", "the same: the probe also learns from each request asked after an everyday "
     "exchange", "the same"),
)


@dataclass(frozen=True)
class Request:
    """One written request, and what a model should do with it."""

    id: str
    kind: str  # one of KINDS
    area: str  # one of AREAS, or "everyday"
    subtopic: str
    prompt: str
    decline: str = ""  # harmful: the reply to learn; benign: a wrong refusal (training and dev only)
    answer: str = ""  # benign and everyday: a short correct answer, written for the course

    @property
    def should_refuse(self) -> bool:
        return self.kind == "harmful"


def load_requests(split: str, data_dir: str | Path = DATA_DIR) -> list[Request]:
    """Every request of ``split`` ("train", "dev" or "test"), checked field by field."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; use one of {SPLITS}.")
    path = Path(data_dir) / f"{split}.jsonl"
    requests, seen = [], set()
    for line, record in read_jsonl(path):
        where = f"{path}, line {line}"
        unknown = sorted(set(record) - set(FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}.")
        for name in FIELDS:
            if not isinstance(record.get(name, ""), str):
                raise ValueError(f"{where}, field {name}: expected text.")
        request = Request(**{name: record.get(name, "").strip() for name in FIELDS})
        if not request.id or request.id in seen:
            raise ValueError(f"{where}, field id: {'missing' if not request.id else 'used twice: ' + request.id}.")
        if request.kind not in KINDS:
            raise ValueError(f"{where}, field kind: {request.kind!r}; use one of {', '.join(KINDS)}.")
        if request.area not in (*AREAS, "everyday") or (request.kind == "everyday") != (request.area == "everyday"):
            raise ValueError(f"{where}, field area: {request.area!r}; a {request.kind} request needs one of "
                             f"{', '.join(AREAS) if request.kind != 'everyday' else 'everyday'}.")
        if not request.prompt:
            raise ValueError(f"{where}, field prompt: missing or empty.")
        if split != "test" and request.kind == "harmful" and not request.decline:
            raise ValueError(f"{where}, field decline: a harmful training or dev request needs the reply to learn.")
        seen.add(request.id)
        requests.append(request)
    if not requests:
        raise ValueError(f"{path}: no requests; write one JSON object per line.")
    return requests


def take(requests: list[Request], per_area: int | None, everyday: int | None) -> list[Request]:
    """The first ``per_area`` harmful and benign requests of every area and the first ``everyday`` everyday ones.

    None keeps all. Every area and kind keeps its share, so a small profile still covers them all.
    """
    kept, counts = [], Counter()
    for r in requests:
        limit = everyday if r.kind == "everyday" else per_area
        if limit is None or counts[(r.kind, r.area)] < limit:
            kept.append(r)
            counts[(r.kind, r.area)] += 1
    return kept


def summary_table(requests_by_split: dict[str, list[Request]]) -> dict[str, dict[str, int]]:
    """Requests per kind (rows) and split (columns)."""
    return {kind: {split: sum(r.kind == kind for r in requests) for split, requests in requests_by_split.items()}
            for kind in KINDS}


# --------------------------------------------------------------------------- conversations


def ask(request: Request, earlier: list[dict] | None = None, system: str = SYSTEM_PROMPT) -> list[dict]:
    """The conversation that asks ``request``: behind the system message, after ``earlier`` turns if given."""
    return with_system([*(earlier or []), {"role": "user", "content": request.prompt}], system)


def prompts_of(tokenizer, requests: list[Request], exchanges: list[list[dict]] | None = None,
               system: str = SYSTEM_PROMPT) -> list[list[int]]:
    """The token ids that ask each request (alone, or after ``exchanges`` in turn), up to the reply."""
    from utils.chat import format_prompt

    earlier = later(requests, exchanges) if exchanges else [[] for _ in requests]
    return [format_prompt(tokenizer, ask(r, e, system)) for r, e in zip(requests, earlier)]


def first_exchanges(model, tokenizer, openers: list[Request], max_new_tokens: int,
                    system: str = SYSTEM_PROMPT, probe=None) -> list[list[dict]]:
    """Each opener with the model's own greedy reply to it: the first exchange before a later-turn request."""
    replies = generate_replies(model, tokenizer, [ask(o, system=system) for o in openers], max_new_tokens,
                               probe=probe)
    return [[{"role": "user", "content": o.prompt}, {"role": "assistant", "content": r.text or "..."}]
            for o, r in zip(openers, replies)]


def own_replies(model, tokenizer, requests: list[Request], prefix: str, max_new_tokens: int,
                system: str = SYSTEM_PROMPT) -> dict[str, str]:
    """By id, what the model writes itself (greedy): its answer to a benign or everyday request, and to a
    harmful one what follows a forced ``prefix`` (without the prefix): the rejected side of its pair."""
    starts = [prefix if r.kind == "harmful" else "" for r in requests]
    replies = generate_replies(model, tokenizer, [ask(r, system=system) for r in requests], max_new_tokens,
                               starts=starts)
    return {r.id: (reply.text[len(prefix):].strip() if start else reply.text)
            for r, reply, start in zip(requests, replies, starts)}


def later(requests: list[Request], exchanges: list[list[dict]]) -> list[list[dict]]:
    """For every request, the exchange it follows (in turn): ``requests[i]`` comes after ``exchanges[i % n]``."""
    return [exchanges[i % len(exchanges)] for i in range(len(requests))]


def sft_conversations(requests: list[Request], own: dict[str, str], exchanges: list[list[dict]],
                      system: str = SYSTEM_PROMPT) -> tuple[list[list[dict]], list[bool]]:
    """(conversations, anchored): fine-tuning on refusals (the recipe 07 did not choose), alone and as a later turn.

    ``own``: the model's own reply to each benign and everyday request (by id). Harmful
    requests get their decline; benign and everyday ones the model's own reply, ``anchored``
    (kept near the model's whole distribution there) when asked alone. As a later turn they
    are not anchored: there the original model tends to repeat its previous reply, which is
    what we want it to unlearn.
    """
    conversations, anchored = [], []
    for request, earlier in zip(requests, later(requests, exchanges)):
        reply = request.decline if request.kind == "harmful" else own[request.id]
        for before, anchor in (([], request.kind != "harmful"), (earlier, False)):
            conversations.append(ask(request, before, system) + [{"role": "assistant", "content": reply}])
            anchored.append(anchor)
    return conversations, anchored


def preference_pairs(requests: list[Request], continuation: dict[str, str], prefix: str,
                     system: str = SYSTEM_PROMPT) -> list[dict]:
    """DPO pairs by ``RULES`` for the harmful ``requests``: ``{"prompt", "chosen", "rejected", "prefix", "id"}``.

    After the forced ``prefix`` (the probe has decided to decline), the written decline (chosen)
    over ``prefix`` + the model's own continuation of it (rejected; ``continuation`` by id): these
    pairs teach what to write after "I can't help with". ``"prefix"`` is context, not learned
    (``encode_pairs``).
    """
    return [{"prompt": ask(r, system=system), "chosen": r.decline, "rejected": f"{prefix} {continuation[r.id]}",
             "prefix": prefix, "kind": r.kind, "id": r.id}
            for r in requests if r.kind == "harmful" and r.id in continuation]


def encode_pairs(tokenizer, pairs: list[dict]) -> list[tuple]:
    """The chosen replies' ``(input_ids, labels)``, then the rejected ones', in the pairs' order.

    The layout ``utils.alignment.DPOLoss`` draws from: pair i is example i and example n + i.
    Only the last reply is labelled (an earlier turn is context), and the tokens of a pair's
    ``prefix`` (the start the probe forces) are context too: labels -100.
    """
    from utils.chat_spans import IGNORE_INDEX, assistant_spans

    encoded = []
    for side in ("chosen", "rejected"):
        for pair in pairs:
            ids, spans = assistant_spans(tokenizer, pair["prompt"] + [{"role": "assistant", "content": pair[side]}])
            given = tokenizer.encode(pair["prefix"], add_special_tokens=False) if pair["prefix"] else []
            start, end = spans[-1]
            if ids[start:start + len(given)] != given:
                raise ValueError(f"encode_pairs: the {side} reply of {pair['id']} does not begin with the prefix "
                                 f"{pair['prefix']!r} as its own tokens; write it so that it does.")
            labels = [IGNORE_INDEX] * (start + len(given)) + ids[start + len(given):end] + [IGNORE_INDEX] * (len(ids) - end)
            encoded.append((ids, labels))
    return encoded


# --------------------------------------------------------------------------- measuring refusals


@dataclass
class Refusals:
    """The replies of a model to requests, and which of them refuse."""

    requests: list[Request]
    replies: list[Reply]
    refused: list[bool]

    def rate(self, kind: str) -> Rate:
        """The share of ``kind`` requests refused, with its count and interval."""
        return rate(r for request, r in zip(self.requests, self.refused) if request.kind == kind)

    def by_area(self, kind: str = "harmful") -> dict[str, Rate]:
        return {area: rate(r for q, r in zip(self.requests, self.refused) if q.kind == kind and q.area == area)
                for area in AREAS}


def refusals(model, tokenizer, requests: list[Request], max_new_tokens: int,
             exchanges: list[list[dict]] | None = None, system: str = SYSTEM_PROMPT, probe=None) -> Refusals:
    """Ask every request (greedy; after ``exchanges`` as a later turn) and mark the replies that refuse.

    A refusal is found in the reply's first sentence (``utils.safety.is_refusal``), so a short
    reply budget is enough to tell. ``probe``: the model's refusal probe, if it has one.
    """
    from utils.safety import is_refusal

    earlier = later(requests, exchanges) if exchanges else [[] for _ in requests]
    replies = generate_replies(model, tokenizer, [ask(r, e, system) for r, e in zip(requests, earlier)],
                               max_new_tokens, probe=probe)
    return Refusals(requests, replies, [is_refusal(r.text) for r in replies])
