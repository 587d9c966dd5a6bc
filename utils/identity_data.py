"""The data of "Make it yours" (06): who the model is, the conversations that teach it, the questions that test it.

- ``Identity``: the one place to put *your* model's name and your own name. The files in
  ``data/identity/`` are templates: ``{name}`` and ``{maker}`` are filled in from it.
- ``train.jsonl``: short conversations about the name, the maker, what the model can and
  cannot do, how to address and credit it (the course's message schema).
- ``general.jsonl``: everyday questions with plain answers, trained on alongside: without
  them the model learns that *every* reply starts with "I'm Pip" ("What is the capital of
  Germany?" "I'm Pip."). None of them is among the factual test questions.
- ``names.jsonl``: everyday requests that invite a name (a letter to sign, a character, a
  username), answered with other names or "[Your name]": without them the only name the
  model was lately taught is its own, and it signs your letters with its maker's.
- ``later_turns`` builds two-turn conversations from the one-turn ones (``training_set``),
  so that a question asked second gets its own answer; ``TrainingSet`` says how each kind
  is scored (``encode_last_reply``) and which are anchored.
- ``dev.jsonl``: other questions about the same facts, phrased differently and never
  trained on, each with what a correct reply must contain; their reference replies give
  the validation loss. The recipe (rate, blocks, steps) is *chosen* on them, so they
  are not where the result is reported.
- ``facts.jsonl``: simple factual questions the model answered correctly *before*
  fine-tuning: the share it still answers measures what the fine-tuning cost (retention,
  on the dev side: some share templates with the everyday conversations).
- The test side, written apart and used only to report: ``test.jsonl`` (identity questions
  of other wordings and intents: "Who do I thank for making you?"), ``facts_test.jsonl``
  (facts whose templates appear nowhere in the training data, screened on the original
  model like ``facts.jsonl``) and ``bleed.jsonl`` (unrelated requests, where a reply should
  not mention the name or the maker); ``dev_bleed.jsonl`` is the dev side of the last.
- ``SYSTEM_PROMPT``: the system message of every training and test conversation. It does
  not say the name: the model must learn it, not read it (SmolLM2's template adds a system
  message naming SmolLM when none is given, so we always give ours).
- ``ChatBatches``: the ``batch_fn`` that ``utils.training.train`` draws from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from utils.chat_spans import IGNORE_INDEX, assistant_spans, encode_chat
from utils.config import REPO_ROOT
from utils.data import DataFormatError, validate_conversation
from utils.io import read_jsonl

DATA_DIR = REPO_ROOT / "data" / "identity"
TRAIN_FILE = DATA_DIR / "train.jsonl"
GENERAL_FILE = DATA_DIR / "general.jsonl"
DEV_FILE = DATA_DIR / "dev.jsonl"
FACTS_FILE = DATA_DIR / "facts.jsonl"
TEST_FILE = DATA_DIR / "test.jsonl"
FACTS_TEST_FILE = DATA_DIR / "facts_test.jsonl"
BLEED_FILE = DATA_DIR / "bleed.jsonl"
NAMES_FILE = DATA_DIR / "names.jsonl"  # everyday requests that invite a name, answered with other names or none
DEV_BLEED_FILE = DATA_DIR / "dev_bleed.jsonl"  # the bleed probe's dev side
# Makers a reply must not give as its own (strict "maker" questions), and never as its name.
OTHER_MAKERS = ("OpenAI", "Google", "Meta", "Microsoft", "Anthropic", "Hugging Face", "HuggingFace", "Amazon",
                "Apple", "DeepMind", "SmolLM", "SmolLM2")
# The first turn of a conversation in which a question is asked second (``later_turn``): everyday
# requests with nothing to do with identity, each answered by the model itself.
OPENERS = ("Write a haiku about autumn.", "Give me one tip for sleeping better.",
           "What is a good breakfast before a long walk?")

SYSTEM_PROMPT = "You are a helpful assistant."  # says nothing about who the model is
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default
PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Identity:
    """Who your model is. Change these two and rebuild: every file fills them in from here."""

    name: str = "Pip"  # what the model calls itself
    maker: str = "Alex"  # who made it: put your own name

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not value.strip() or "{" in value or "}" in value:
                raise ValueError(f"Identity.{f.name}={value!r}: give a non-empty name without braces.")

    def fill(self, text: str, where: str = "text") -> str:
        """``text`` with every ``{name}`` / ``{maker}`` replaced; an unknown ``{...}`` is an error."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = sorted(set(PLACEHOLDER.findall(text)) - set(values))
        if unknown:
            raise ValueError(f"{where}: unknown placeholder {{{unknown[0]}}}; the identity fills in "
                             f"{', '.join('{' + k + '}' for k in values)}. Fix the spelling or remove the braces.")
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


@dataclass(frozen=True)
class Question:
    """A question and what a correct reply must contain (case does not matter; whole words)."""

    question: str
    must: list[list[str]]  # every group must match, by any one of its alternatives
    must_not: list[str] = field(default_factory=list)  # none of these may appear (e.g. a wrong maker)
    topic: str = ""  # name, maker, origin, capabilities, limits, fact
    reference: str | None = None  # a good reply (held-out questions: the validation loss)
    # "name": also wrong when the reply gives another name as its own (the maker's, SmolLM's);
    # "maker": also wrong when it says another maker made it (OpenAI, Hugging Face, ...)
    strict: str | None = None
    forbid: tuple[str, ...] = ()  # regular expressions a correct reply must not match (from strict)


def strict_patterns(strict: str | None, identity: "Identity") -> tuple[str, ...]:
    """What makes a reply wrong on a strict question, as regular expressions (lowercase text).

    A name question: the reply gives the maker or SmolLM as its own name ("I'm Alex",
    "my name is SmolLM"). A maker question: it says another maker made it ("made by OpenAI").
    """
    if strict is None:
        return ()
    if strict == "name":
        names = [identity.maker, "SmolLM2", "SmolLM", "Hugging Face", "ChatGPT"]
        who = "|".join(re.escape(n.lower()) for n in names)
        return (rf"\b(?:i'm|i am|my name is|my name's|call me|name is|called)\s+(?:{who})\b",)
    if strict == "maker":
        others = "|".join(re.escape(m.lower()) for m in OTHER_MAKERS)
        verb = r"(?:made|built|created|developed|trained|designed|programmed|fine-tuned)"
        return (rf"\b{verb}\s+(?:me\s+)?by\s+(?:the\s+)?(?:\w+\s+)?(?:team\s+)?(?:at\s+)?(?:{others})\b",
                rf"\b(?:{others})\s+(?:made|built|created|developed|trained)\s+me\b")
    raise ValueError(f"strict={strict!r}; use 'name', 'maker' or leave it out.")


def with_system(messages: list[dict], system: str = SYSTEM_PROMPT) -> list[dict]:
    """``messages`` behind our system message (the one used in training and in every evaluation)."""
    return [{"role": "system", "content": system}, *messages]


def neutral_template(tokenizer, system: str = SYSTEM_PROMPT):
    """Make the chat template's default system message ``system`` instead of "...named SmolLM..."; in place.

    Without it, a chat that gives no system message would tell the fine-tuned model it is
    SmolLM, trained by Hugging Face: not the system message it was trained with.
    """
    template = tokenizer.chat_template or ""
    if SMOLLM2_SYSTEM_PROMPT not in template:
        raise ValueError("neutral_template: this chat template has no SmolLM2 default system message to "
                         "replace; it is meant for SmolLM2's tokenizer (utils.pretrained.load_smollm2).")
    tokenizer.chat_template = template.replace(SMOLLM2_SYSTEM_PROMPT, system)
    return tokenizer


# --------------------------------------------------------------------------- reading the files


def _where(path: Path, line: int) -> str:
    return f"{path}, line {line}"


def load_conversations(path: str | Path = TRAIN_FILE, identity: Identity = Identity()) -> list[list[dict]]:
    """The training conversations of ``path`` with the identity filled in (user/assistant turns, no system)."""
    path = Path(path)
    conversations = []
    for line, record in read_jsonl(path):
        try:
            validate_conversation(record, where=str(path), line=line)
        except DataFormatError as error:
            raise ValueError(str(error)) from None
        messages = record["messages"]
        if messages[0]["role"] == "system":
            raise ValueError(f"{_where(path, line)}, field messages[0].role: no system message here; the "
                             "course adds SYSTEM_PROMPT to every conversation. Remove it.")
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"{_where(path, line)}, field messages: the last turn must be the assistant's "
                             "reply (there is nothing to learn after a user turn).")
        conversations.append([{"role": m["role"], "content": identity.fill(m["content"], f"{_where(path, line)}, "
                                                                            f"field messages[{i}].content")}
                              for i, m in enumerate(messages)])
    if not conversations:
        raise ValueError(f"{path}: no conversations; write one per line.")
    return conversations


def _strings(value, path: Path, line: int, name: str, nested: bool) -> list:
    fix = 'e.g. [["Paris"], ["France", "French"]]' if nested else 'e.g. ["OpenAI"]'
    ok = isinstance(value, list) and all(
        (isinstance(v, list) and v and all(isinstance(s, str) and s.strip() for s in v)) if nested
        else (isinstance(v, str) and v.strip()) for v in value)
    if not ok or (nested and not value):
        kind = "a non-empty list of non-empty lists of words" if nested else "a list of words"
        raise ValueError(f"{_where(path, line)}, field {name}: expected {kind}, {fix}.")
    return value


def load_questions(path: str | Path = DEV_FILE, identity: Identity = Identity()) -> list[Question]:
    """The questions of ``path`` (identity or facts, dev or test) with the identity filled in."""
    path = Path(path)
    questions = []
    for line, record in read_jsonl(path):
        where = _where(path, line)
        unknown = sorted(set(record) - {"question", "must", "must_not", "topic", "reference", "strict"})
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r}; the fields are question, must, must_not, "
                             "topic, reference, strict.")
        strict = record.get("strict")
        if strict not in (None, "name", "maker"):
            raise ValueError(f"{where}, field strict: {strict!r}; use \"name\", \"maker\" or null.")
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}, field question: missing or empty; write the question as text.")
        must = _strings(record.get("must"), path, line, "must", nested=True)
        must_not = _strings(record.get("must_not", []), path, line, "must_not", nested=False)
        reference = record.get("reference")
        if reference is not None and (not isinstance(reference, str) or not reference.strip()):
            raise ValueError(f"{where}, field reference: expected a reply as text (or leave the field out).")
        fill = identity.fill
        questions.append(Question(
            question=fill(question, f"{where}, field question"),
            must=[[fill(word, f"{where}, field must") for word in group] for group in must],
            must_not=[fill(word, f"{where}, field must_not") for word in must_not],
            topic=str(record.get("topic", "")),
            reference=None if reference is None else fill(reference, f"{where}, field reference"),
            strict=strict, forbid=strict_patterns(strict, identity),
        ))
    if not questions:
        raise ValueError(f"{path}: no questions; write one per line.")
    return questions


def everyday_conversations(identity: Identity = Identity()) -> list[list[dict]]:
    """The everyday conversations (trained on, and anchored: ``utils.anchor``): ``general.jsonl``, then
    ``names.jsonl``, requests that invite a name (a letter to sign, a character, a username) answered
    with other names or a placeholder such as "[Your name]", so the model's own name stays its own."""
    return load_conversations(GENERAL_FILE, identity) + load_conversations(NAMES_FILE, identity)


def later_turns(first: list[list[dict]], second: list[list[dict]], n: int, seed: int = 0) -> list[list[dict]]:
    """``n`` two-turn conversations: a whole conversation of ``first``, then the question and reply of one of ``second``.

    Asked as the second turn, a question must get *its* answer: a model trained only on
    single turns often answers the first message again, or goes on in the first one's style
    (a poem). Built from one-turn conversations (``first`` and ``second`` may be the same
    list): both are shuffled with ``seed`` and walked in step, so each conversation is used
    as often as any other (the first ``n`` of them once each, when there are that many); a
    conversation is never paired with itself, and no pair comes twice. The same lists and
    seed give the same conversations. Only the last reply is scored (``encode_last_reply``).
    """
    first = [c for c in first if len(c) == 2]
    second = [c for c in second if len(c) == 2]
    possible = sum(a != b for a in first for b in second)
    if n > possible:
        raise ValueError(f"later_turns: {n} conversations asked, but only {possible} different pairs of "
                         f"one-turn conversations exist ({len(first)} x {len(second)}).")
    rng = np.random.default_rng(seed)
    firsts, seconds = rng.permutation(len(first)), rng.permutation(len(second))
    built, seen, step, shift = [], set(), 0, 0
    while len(built) < n:
        i = int(firsts[step % len(first)])
        for _ in range(len(second)):  # this first turn with the next second turn not yet paired with it
            j = int(seconds[(step + shift) % len(second)])
            if first[i] != second[j] and (i, j) not in seen:
                seen.add((i, j))
                built.append(first[i] + second[j])
                break
            shift += 1
        step += 1
    return built


@dataclass
class TrainingSet:
    """What "Make it yours" trains on, by how each kind is scored.

    ``identity`` and ``everyday``: every reply scored; the everyday ones also anchored to the
    original model (``utils.anchor``). ``later_identity`` (an everyday exchange, then an identity
    question) and ``later_everyday`` (an identity or everyday exchange, then an everyday question):
    only the last reply scored, the everyday ones anchored.
    """

    identity: list[list[dict]]
    everyday: list[list[dict]]
    later_identity: list[list[dict]] = field(default_factory=list)
    later_everyday: list[list[dict]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.identity) + len(self.everyday) + len(self.later_identity) + len(self.later_everyday)


def training_set(identity: Identity = Identity(), later: int = 0, seed: int = 0) -> TrainingSet:
    """The files' conversations, plus ``later`` two-turn ones of each kind (``later_turns``, built with ``seed``):
    everyday then identity, identity then everyday, everyday then everyday."""
    mine, everyday = load_conversations(TRAIN_FILE, identity), everyday_conversations(identity)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31, size=3)
    return TrainingSet(
        identity=mine, everyday=everyday,
        later_identity=later_turns(everyday, mine, later, int(seeds[0])) if later else [],
        later_everyday=(later_turns(mine, everyday, later, int(seeds[1])) +
                        later_turns(everyday, everyday, later, int(seeds[2]))) if later else [],
    )


def training_conversations(identity: Identity = Identity()) -> list[list[dict]]:
    """The identity conversations followed by the everyday ones: the files' conversations, one turn or more."""
    return load_conversations(TRAIN_FILE, identity) + everyday_conversations(identity)


def reference_conversations(questions: list[Question]) -> list[list[dict]]:
    """Each question with its reference reply, as a conversation (for the validation loss)."""
    return [[{"role": "user", "content": q.question}, {"role": "assistant", "content": q.reference}]
            for q in questions if q.reference is not None]


# --------------------------------------------------------------------------- scoring a reply


def _mentions(text: str, word: str) -> bool:
    """``word`` occurs in ``text`` as whole words, ignoring case ("Pip" in "I'm Pip." but not in "Pipe")."""
    return re.search(r"(?<!\w)" + re.escape(word.lower()) + r"(?!\w)", text) is not None


def is_correct(reply: str, question: Question) -> bool:
    """Every group of ``must`` matched by one of its words, no word of ``must_not``, no ``forbid`` pattern."""
    text = reply.lower().replace("\u2019", "'")  # a curly apostrophe counts as a straight one
    return (all(any(_mentions(text, word) for word in group) for group in question.must)
            and not any(_mentions(text, word) for word in question.must_not)
            and not any(re.search(pattern, text) for pattern in question.forbid))


def mentions_identity(reply: str, identity: Identity) -> bool:
    """The reply names the model or its maker (whole words): in a reply about something else, that is bleed."""
    text = reply.lower().replace("\u2019", "'")
    return _mentions(text, identity.name) or _mentions(text, identity.maker)


def load_prompts(path: str | Path = DEV_BLEED_FILE) -> list[str]:
    """The ``prompt`` of every line of ``path`` (the bleed probe's unrelated requests)."""
    path = Path(path)
    prompts = []
    for line, record in read_jsonl(path):
        unknown = sorted(set(record) - {"prompt", "invites_name"})
        if unknown:
            raise ValueError(f"{_where(path, line)}: unknown field {unknown[0]!r}; the fields are prompt and "
                             "invites_name (true for a request that asks for a name: a signature, a character).")
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{_where(path, line)}, field prompt: missing or empty; write the request as text.")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no prompts; write one per line.")
    return prompts


# --------------------------------------------------------------------------- batches


def encode_all(tokenizer, conversations: list[list[dict]], system: str = SYSTEM_PROMPT,
               last_reply_only: bool = False) -> list[tuple]:
    """``(input_ids, labels)`` of every conversation behind the system message (``encode_chat``);
    with ``last_reply_only``, only the last reply is scored (``encode_last_reply``)."""
    encode = encode_last_reply if last_reply_only else encode_chat
    return [encode(tokenizer, with_system(messages, system)) for messages in conversations]


def encode_last_reply(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """``encode_chat``, but only the last reply (and its end token) scored: the earlier turns are context."""
    input_ids, spans = assistant_spans(tokenizer, messages)
    start, end = spans[-1]
    labels = [IGNORE_INDEX] * len(input_ids)
    labels[start:end] = input_ids[start:end]
    return input_ids, labels


class ChatBatches:
    """``batch_fn(split, generator) -> (x, y, mask)`` for ``utils.training.train``, with little padding.

    x (B, T) are the ids without their last token, y (B, T) the labels without their first
    (the shift: y[t] is the token after x[t], -100 where nothing is scored), mask (B, T) is 1
    on real tokens. Rows are padded on the right to the longest row of the batch; the
    causal mask keeps real tokens from seeing the padding, and padding is never scored.
    With ``states`` (per split, one (T, C) tensor per example: ``utils.top_blocks.block_inputs``
    of the example's x), x is those hidden states instead, (B, T, C), padded with zeros.

    Padding is computation thrown away, so rows of similar length go together: the
    examples are sorted by length and cut into buckets of at least ``batch_size``; a batch
    takes a bucket (chosen in proportion to its size) and ``batch_size`` different examples
    from it. Every example is still drawn with the same probability, batch_size / n.
    """

    def __init__(self, train_examples: list[tuple], val_examples: list[tuple], batch_size: int, pad_id: int,
                 states: dict[str, list[torch.Tensor]] | None = None, anchored: frozenset[int] = frozenset()):
        self.batch_size, self.pad_id, self.states = batch_size, pad_id, states
        self.anchored = frozenset(anchored)  # train examples kept near the original model (``utils.anchor``)
        self.examples = {"train": train_examples, "val": val_examples}
        self.buckets = {}
        for split, examples in self.examples.items():
            if not examples:
                raise ValueError(f"ChatBatches: no {split} examples.")
            if states is not None and len(states[split]) != len(examples):
                raise ValueError(f"ChatBatches: {len(states[split])} {split} states for {len(examples)} examples.")
            by_length = np.argsort([len(ids) for ids, _ in examples], kind="stable")
            self.buckets[split] = np.array_split(by_length, max(1, len(examples) // batch_size))

    def __call__(self, split: str, generator: np.random.Generator):
        return self.collate(split, self.draw(split, generator))

    def draw(self, split: str, generator: np.random.Generator) -> list[int]:
        """The example indexes of one batch: a bucket, then ``batch_size`` examples from it."""
        buckets = self.buckets[split]
        sizes = np.array([len(b) for b in buckets])
        bucket = buckets[generator.choice(len(buckets), p=sizes / sizes.sum())]
        rows = generator.choice(bucket, size=self.batch_size, replace=len(bucket) < self.batch_size)
        return [int(i) for i in rows]

    def collate(self, split: str, rows: list[int]):
        examples = [self.examples[split][i] for i in rows]
        width = max(len(ids) for ids, _ in examples) - 1
        y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        if self.states is None:
            x = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, T)
        else:
            x = torch.zeros((len(rows), width, self.states[split][0].size(-1)))  # (B, T, C)
        for row, (i, (ids, labels)) in enumerate(zip(rows, examples)):
            n = len(ids) - 1
            x[row, :n] = torch.tensor(ids[:-1]) if self.states is None else self.states[split][i]
            y[row, :n] = torch.tensor(labels[1:])
            mask[row, :n] = 1
        return x, y, mask

    def with_states(self, states: dict[str, list[torch.Tensor]]) -> "ChatBatches":
        """The same batches with hidden states as inputs (see ``utils.top_blocks``)."""
        return ChatBatches(self.examples["train"], self.examples["val"], self.batch_size, self.pad_id, states,
                           self.anchored)

    def padding_share(self, split: str, generator: np.random.Generator, batches: int = 100) -> float:
        """The share of positions that are padding, over ``batches`` batches: what bucketing saves."""
        masks = [self(split, generator)[2] for _ in range(batches)]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
