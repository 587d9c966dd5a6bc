"""The chat format: special tokens, a chat template, and conversations turned into training examples.

A chat model is a language model trained on conversations written out in one fixed
format. Ours (no newlines, no begin-of-text token):

    <|system|>You are kind.<|end|><|user|>Hi!<|end|><|assistant|>Hello!<|end|><|user|>...

- Every message is ``<|role|>`` + its text + ``<|end|>``. The roles are special tokens,
  so the model never confuses a role marker with text a user typed.
- To ask the model for a reply we write the conversation so far and then
  ``<|assistant|>`` (the *generation prompt*); the model writes the reply and stops
  by producing ``<|end|>``.
- Why no newline after the role token: it would cost a token per turn and add
  nothing, since ``<|user|>`` already marks the boundary. Why no ``<|endoftext|>`` in
  front: a conversation is one document; the pretrained model used ``<|endoftext|>``
  between documents, and the fine-tuned model learns the chat format from the
  role tokens alone.

Training uses *labels*: the token the model should be scored on at each position,
or -100 for "don't score". Only the assistant's replies (and the ``<|end|>`` that
closes them) are learned; the system message, the user turns and the role markers
are context. ``encode_conversation`` produces ``(input_ids, labels)`` aligned with
each other; the shift by one position (predict the *next* token) happens in
exactly one place, ``shifted_targets``, right before the loss.

A chat model's replies are in ``utils.replies``, loading a chat checkpoint is
``utils.checkpoint.load_chat_model``, the fine-tuning metrics (assistant perplexity,
format adherence) are in ``utils.evaluation``; the terminal chat is ``python -m
tools.chat`` (``make chat``).

Contract (used by checks): ``add_chat_tokens(tokenizer)`` and
``encode_conversation(tokenizer, messages) -> (input_ids, labels)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from utils.data import DataFormatError, validate_conversation
from utils.tokenization import CHAT_TOKENS, PAD, SPECIAL_TOKENS

SYSTEM, USER, ASSISTANT, END = CHAT_TOKENS  # "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
IGNORE_INDEX = -100  # label value that PyTorch's cross_entropy skips (ignore_index=-100)

# The chat template, in Jinja (what ``tokenizer.apply_chat_template`` renders).
# ``{%-`` and ``-%}`` strip the whitespace around tags, so the line breaks below are
# only for reading: the output has none. ``{% generation %}`` marks the tokens an
# assistant writes (its reply and its <|end|>), which lets transformers compute
# ``return_assistant_tokens_mask=True``: an independent check of our labels.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('messages[' ~ loop.index0 ~ '].role: ' ~ message['role'] ~ "
    "' is not a role (allowed: system, user, assistant)') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>' -}}"
    "{%- generation -%}{{- message['content'] + '<|end|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


class ChatFormatError(ValueError):
    """A conversation that cannot be turned into a chat training example; the message says where and why."""


# --------------------------------------------------------------------------- tokenizer


def add_chat_tokens(tokenizer):
    """Give any ``transformers`` tokenizer the course's chat tokens, a pad token and the chat template.

    GPT-2's tokenizer knows only ``<|endoftext|>``: written as text, ``<|user|>`` would
    become 5 ordinary tokens, and it has no pad token at all (which is why
    ``padding="max_length"`` fails on it). We register the missing role / end tokens as
    *special* tokens (one id each, never split, never merged with neighbours), add
    ``<|pad|>`` as the pad token when there is none, and set ``CHAT_TEMPLATE``.
    The course tokenizer already has all of them: nothing is added.

    Idempotent: calling it twice adds nothing the second time. Modifies the tokenizer
    in place and returns it. New tokens get new ids at the end of the vocabulary, so
    the model's embedding must grow to ``len(tokenizer)``: see ``resize_vocabulary``.
    """
    added = tokenizer.added_tokens_encoder  # text -> id of tokens matched before BPE runs
    missing = [token for token in CHAT_TOKENS if token not in added]
    if missing:
        # replace_extra_special_tokens=False: extend the tokenizer's list, never drop its own.
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chat_token_ids(tokenizer) -> dict[str, int]:
    """Id of each chat token (``"<|user|>" -> id``); a clear error when ``add_chat_tokens`` was not called."""
    added = tokenizer.added_tokens_encoder
    missing = [token for token in CHAT_TOKENS if token not in added]
    if missing or tokenizer.chat_template is None:
        what = f"the special token(s) {', '.join(missing)}" if missing else "a chat template"
        raise ChatFormatError(f"This tokenizer lacks {what}: call utils.chat.add_chat_tokens(tokenizer) first "
                              "(and resize the model's vocabulary to len(tokenizer)).")
    return {token: added[token] for token in CHAT_TOKENS}


def has_course_format(tokenizer) -> bool:
    """True when the tokenizer writes the course's chat format (its tokens and template), not its own."""
    return all(token in tokenizer.added_tokens_encoder for token in CHAT_TOKENS) and \
        tokenizer.chat_template == CHAT_TEMPLATE


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn: ``<|end|>`` in the course's format, else the tokenizer's eos.

    A chat model with its own template (SmolLM2's ``<|im_start|>...<|im_end|>``) ends its
    turn with its eos token (``<|im_end|>``).
    """
    if has_course_format(tokenizer):
        return chat_token_ids(tokenizer)[END]
    if tokenizer.chat_template is None or tokenizer.eos_token_id is None:
        chat_token_ids(tokenizer)  # raises, saying what is missing
    return tokenizer.eos_token_id


def template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """``apply_chat_template``'s token ids as a plain list (in transformers 5 it returns a dict by default)."""
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                            return_dict=True)
    return list(encoded["input_ids"])


# --------------------------------------------------------------------------- one conversation


def validate_chat(messages, where: str = "conversation") -> list[dict]:
    """Check ``messages`` can be a training example; return the list of messages.

    Accepts a list of messages or a conversation dict with a ``"messages"`` list (the
    schema of ``utils.data``). The schema rules (roles, non-empty text, a system
    message only first, user/assistant alternating from the user) are
    ``utils.data.validate_conversation``'s, so errors name ``messages[i].role`` or
    ``messages[i].content`` as in notebook 01. On top of them a training example
    needs an assistant turn to learn from, and no message may contain a special
    token as text (a ``<|end|>`` typed inside a reply would end the turn early).
    """
    conversation = messages if isinstance(messages, dict) else {"messages": messages}
    try:
        validate_conversation(conversation, where=where)
    except DataFormatError as error:
        raise ChatFormatError(str(error)) from None
    messages = conversation["messages"]
    refuse_special_text(messages, SPECIAL_TOKENS, where)
    if not any(message["role"] == "assistant" for message in messages):
        raise ChatFormatError(
            f"{where}, field messages: no assistant turn, so there is nothing to learn from. To fix: "
            "add the assistant's reply after the user's turn, or leave the conversation out")
    return messages


def refuse_special_text(messages: list[dict], tokens, where: str = "conversation") -> None:
    """Raise ``ChatFormatError`` when a message contains one of ``tokens`` (special tokens) as text.

    A tokenizer matches special tokens before BPE runs, so ``<|assistant|>`` typed by a
    user would become the real role token (notebook 02, exercise 3): the user could end
    their turn and write one for the assistant (a prompt injection). Refusing such text
    is what protects the turn structure, for training data and for chat prompts alike.
    """
    for i, message in enumerate(messages):
        for token in tokens:
            if token and token in message["content"]:
                raise ChatFormatError(
                    f"{where}, field messages[{i}].content: contains the special token {token} as text, "
                    "which would break the turn structure. To fix: remove it from the text (or write it "
                    "differently, e.g. '< |end| >')")


def _content_ids(tokenizer, messages: list[dict]) -> list[list[int]]:
    """The token ids of each message's text, in one call (a fast tokenizer encodes the batch in Rust)."""
    encoded = tokenizer([m["content"] for m in messages], add_special_tokens=False)["input_ids"]
    return [list(ids) for ids in encoded]


def _segments(ids_of: dict, messages: list[dict], contents: list[list[int]]) -> tuple[list[int], list[int]]:
    """``<|role|>`` text ``<|end|>`` per message, and labels that learn only the assistant's text and ``<|end|>``."""
    input_ids: list[int] = []
    labels: list[int] = []
    for message, content in zip(messages, contents):
        segment = [ids_of[ROLE_TOKENS[message["role"]]], *content, ids_of[END]]  # <|role|> text <|end|>
        input_ids += segment
        if message["role"] == "assistant":
            labels += [IGNORE_INDEX, *segment[1:]]  # learn the reply and its <|end|>, not the marker
        else:
            labels += [IGNORE_INDEX] * len(segment)
    return input_ids, labels


def _check_against_template(tokenizer, messages: list[dict], input_ids: list[int]) -> None:
    expected = template_ids(tokenizer, messages)
    if input_ids != expected:
        raise ChatFormatError(
            "Encoding the conversation turn by turn gave other ids than tokenizer.apply_chat_template "
            f"({len(input_ids)} vs {len(expected)} tokens). This tokenizer changes text next to special "
            "tokens (e.g. add_prefix_space or a normalizer that strips spaces); use a byte-level BPE "
            "tokenizer such as GPT-2's or the course's, or set tokenizer.chat_template = CHAT_TEMPLATE.")


def encode_conversation(tokenizer, messages) -> tuple[list[int], list[int]]:
    """One conversation -> ``(input_ids, labels)``, two lists of the same length.

    ``input_ids`` are exactly ``tokenizer.apply_chat_template(messages)["input_ids"]``.
    ``labels[t]`` is ``input_ids[t]`` where that token is part of an assistant reply
    (its text and the ``<|end|>`` that closes it) and -100 everywhere else: system,
    user turns and all role markers are context, not targets. The labels are *not*
    shifted; ``shifted_targets`` does that right before the loss.

    How: the template puts a special token at every boundary (``<|user|>`` text
    ``<|end|>``...), and tokenizers match special tokens before BPE runs, so no merge
    ever crosses a boundary. Encoding segment by segment therefore gives the same ids
    as encoding the whole text, and we know which segment every id came from. We still
    check this against ``apply_chat_template`` and fail loudly if a tokenizer breaks it.
    """
    messages = validate_chat(messages)
    input_ids, labels = _segments(chat_token_ids(tokenizer), messages, _content_ids(tokenizer, messages))
    _check_against_template(tokenizer, messages, input_ids)
    return input_ids, labels


def format_prompt(tokenizer, messages) -> list[int]:
    """Token ids that ask the model for the next assistant reply: the conversation so far + ``<|assistant|>``.

    ``messages`` must end with a user turn (the question to answer). Generate from
    these ids and stop when the model produces ``<|end|>`` (``end_of_turn_id``). A
    tokenizer with a chat template of its own (SmolLM2's) writes its own format and
    generation prompt; one without any template gets a clear error. A message that
    contains a special token as text is refused (``refuse_special_text``): in a chat box
    that is untrusted user input.
    """
    conversation = messages if isinstance(messages, dict) else {"messages": messages}
    try:
        validate_conversation(conversation, where="prompt")
    except DataFormatError as error:
        raise ChatFormatError(str(error)) from None
    messages = conversation["messages"]
    refuse_special_text(messages, [*SPECIAL_TOKENS, *tokenizer.all_special_tokens, *tokenizer.added_tokens_encoder],
                        where="prompt")
    if messages[-1]["role"] != "user":
        raise ChatFormatError(f"prompt, field messages[{len(messages) - 1}].role: the last message is "
                              f"{messages[-1]['role']!r}, so there is nothing to reply to. To fix: end with "
                              "the user's message")
    end_of_turn_id(tokenizer)  # a clear error when the tokenizer has no chat format yet
    return template_ids(tokenizer, messages, add_generation_prompt=True)


# --------------------------------------------------------------------------- a dataset


class ChatExample(NamedTuple):
    """One encoded conversation; unpacks as ``input_ids, labels = example``."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class Skipped:
    """A conversation ``encode_dataset`` left out, and why."""

    index: int  # position in the list given to encode_dataset
    reason: str

    def __str__(self) -> str:
        return f"conversation {self.index}: {self.reason}"


class ChatDataset(list):
    """A list of ``ChatExample`` (usable directly as a PyTorch dataset), plus what was cut or left out.

    ``conversations``: how many conversations gave at least one example.
    ``windowed``: how many of them were too long for one example and were cut into several
    windows of whole turns. ``skipped``: conversations left out (bad format, or no turn fits
    ``max_length``); ``dropped_pairs``: single user/assistant pairs too long to fit on their own, left out.
    """

    def __init__(self, examples: Iterable[ChatExample] = (), skipped: list[Skipped] | None = None,
                 max_length: int | None = None, conversations: int = 0, windowed: int = 0,
                 dropped_pairs: int = 0):
        super().__init__(examples)
        self.skipped = skipped or []
        self.max_length = max_length
        self.conversations = conversations
        self.windowed = windowed
        self.dropped_pairs = dropped_pairs

    def summary(self) -> str:
        lines = [f"{self.conversations} conversation(s) -> {len(self)} examples of at most {self.max_length} tokens: "
                 f"{self.windowed} cut into windows of whole turns, {self.dropped_pairs} too-long pair(s) left out, "
                 f"{len(self.skipped)} conversation(s) skipped"]
        lines += [f"  - {problem}" for problem in self.skipped[:10]]
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more (see .skipped)")
        return "\n".join(lines)


def turn_pairs(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """Split validated messages into (system messages, [[user, assistant], ...]).

    A final user turn with no reply teaches nothing and is dropped.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    pairs = [turns[i:i + 2] for i in range(0, len(turns) - 1, 2)]
    return system, pairs


def _window_indices(messages: list[dict], contents: list[list[int]], max_length: int):
    """``(windows, dropped)``: each window the message indices of the system message and consecutive pairs."""
    system, pairs = turn_pairs(messages)
    cost = [2 + len(content) for content in contents]  # <|role|> + text + <|end|> per message
    first = len(system)  # index of the first pair's user message
    room = max_length - sum(cost[:first])  # tokens left for pairs in every window
    windows: list[list[int]] = []
    dropped: list[str] = []
    current: list[int] = []
    used = 0
    for k in range(len(pairs)):
        at = first + 2 * k  # the pair is messages[at], messages[at + 1]
        pair_cost = cost[at] + cost[at + 1]
        if pair_cost > room:  # even alone this pair does not fit
            dropped.append(f"messages[{at}..{at + 1}] take {pair_cost} tokens (with the system message "
                           f"{pair_cost + max_length - room}), more than max_length={max_length}")
            continue
        if used + pair_cost > room:  # the window is full: close it, start the next with this pair
            windows.append(list(range(first)) + current)
            current, used = [], 0
        current += [at, at + 1]
        used += pair_cost
    if current:
        windows.append(list(range(first)) + current)
    if not windows:
        need = max_length - room + min(cost[first + 2 * k] + cost[first + 2 * k + 1] for k in range(len(pairs)))
        raise ChatFormatError(
            f"the system message and the shortest user/assistant pair take {need} tokens, more than "
            f"max_length={max_length}. To fix: raise max_length (up to the model's block_size), shorten "
            "those messages, or leave the conversation out (encode_dataset(..., on_too_long='skip'))")
    return windows, dropped


def conversation_windows(tokenizer, messages, max_length: int) -> tuple[list[list[dict]], list[str]]:
    """Cut a conversation into windows of whole turns of at most ``max_length`` tokens: ``(windows, dropped)``.

    Each window is the system message (if any) and consecutive user/assistant pairs, as
    many as fit; the next window starts with the next pair. So every reply of the
    conversation is learned once, from its opening to its goodbye, and the model sees
    beginnings, middles and ends alike (keeping only the newest turns that fit would
    teach it mostly how conversations end). A pair is never cut in the middle: that
    would train the model on a reply to a question it cannot see. A pair too long to fit
    on its own is left out and described in ``dropped`` (which messages, how many tokens);
    when nothing fits, this raises ``ChatFormatError`` saying what to do.
    """
    messages = validate_chat(messages)
    chat_token_ids(tokenizer)  # a clear error when the tokenizer has no chat tokens yet
    windows, dropped = _window_indices(messages, _content_ids(tokenizer, messages), max_length)
    return [[messages[i] for i in window] for window in windows], dropped


def encode_dataset(tokenizer, conversations: Sequence, max_length: int,
                   on_too_long: str = "skip", verbose: bool = True) -> ChatDataset:
    """Encode many conversations into ``ChatExample``s of at most ``max_length`` tokens.

    Each conversation is a list of messages or a dict with ``"messages"`` (a row of
    notebook 01's dataset). One that is too long becomes several examples, windows of
    whole turns that together cover it from beginning to end (``conversation_windows``);
    all of them come from the same conversation, so a split made by conversation stays
    one. With ``on_too_long="skip"`` (default) a pair too long on its own is left out
    (counted in ``.dropped_pairs``), and a conversation that breaks the format or has no
    pair short enough is skipped and listed in ``.skipped``; ``on_too_long="error"``
    raises instead, naming the conversation and the messages. A summary is printed when anything was cut, dropped or
    skipped (``verbose=False``: silent).
    """
    if on_too_long not in ("skip", "error"):
        raise ValueError(f"on_too_long={on_too_long!r}; use 'skip' or 'error'.")
    if max_length < 4:
        raise ValueError(f"max_length={max_length} cannot hold even one user/assistant pair (4 chat tokens).")
    ids_of = chat_token_ids(tokenizer)  # a clear error when the tokenizer has no chat tokens yet
    dataset = ChatDataset(max_length=max_length)
    for index, conversation in enumerate(conversations):
        try:
            messages = validate_chat(conversation, where=f"conversation {index}")
            contents = _content_ids(tokenizer, messages)  # each message's text encoded once
            _check_against_template(tokenizer, messages, _segments(ids_of, messages, contents)[0])
            windows, dropped = _window_indices(messages, contents, max_length)
            if dropped and on_too_long == "error":
                raise ChatFormatError(f"{dropped[0]}. To fix: raise max_length (up to the model's block_size), "
                                      "shorten the messages, or use on_too_long='skip' to leave such pairs out")
            examples = [ChatExample(*_segments(ids_of, [messages[i] for i in window], [contents[i] for i in window]))
                        for window in windows]
        except ChatFormatError as error:
            if on_too_long == "error":
                raise ChatFormatError(f"conversation {index}: {error}") from None
            dataset.skipped.append(Skipped(index, str(error)))
            continue
        assert all(len(example.input_ids) <= max_length for example in examples)
        dataset.extend(examples)
        dataset.conversations += 1
        dataset.windowed += len(windows) > 1
        dataset.dropped_pairs += len(dropped)
    if verbose and (dataset.skipped or dataset.windowed or dataset.dropped_pairs):
        print(dataset.summary())
    return dataset


# --------------------------------------------------------------------------- batches


class ChatCollator:
    """Pads a list of examples into one batch: ``input_ids``, ``attention_mask``, ``labels``, each (B, T).

    Right padding to the longest example in the batch (not to a fixed max_length:
    short batches stay short). Padding gets ``pad_id`` in input_ids, 0 in the
    attention mask and -100 in labels, so it is never learned. Our GPT does not need
    the mask: with right padding and causal attention no real token ever looks at a
    pad (pads come after it). Hugging Face models and token counting use it.

    ``max_length``: optional check that no example is longer (truncate whole turns
    with ``encode_dataset`` first; cutting here could split a reply from its question).
    Use it as ``DataLoader(dataset, batch_size=8, collate_fn=ChatCollator(pad_id))``.
    """

    def __init__(self, pad_id: int, max_length: int | None = None):
        if pad_id is None:
            raise ValueError("ChatCollator needs a pad id: call add_chat_tokens(tokenizer) and pass "
                             "tokenizer.pad_token_id.")
        self.pad_id = pad_id
        self.max_length = max_length

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        return self.collate(batch)

    def collate(self, batch) -> dict[str, torch.Tensor]:
        pairs = [(b["input_ids"], b["labels"]) if isinstance(b, dict) else tuple(b) for b in batch]
        if not pairs:
            raise ValueError("ChatCollator got an empty batch.")
        for i, (ids, labels) in enumerate(pairs):
            if len(ids) != len(labels):
                raise ValueError(f"batch item {i}: {len(ids)} input_ids but {len(labels)} labels; "
                                 "they must be aligned (use encode_conversation).")
            if self.max_length is not None and len(ids) > self.max_length:
                raise ValueError(f"batch item {i} has {len(ids)} tokens, more than max_length={self.max_length}: "
                                 "encode with encode_dataset(..., max_length) to drop whole old turns first.")
        T = max(len(ids) for ids, _ in pairs)
        B = len(pairs)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for row, (ids, lab) in enumerate(pairs):
            n = len(ids)
            input_ids[row, :n] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.as_tensor(lab, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets for ``GPT.forward(input_ids, targets)``: ``targets[:, t] = labels[:, t + 1]``.

    The model at position t predicts the token at t + 1, so the label of token t + 1
    is the target of position t. The last position has no next token: -100. This is
    the one place the shift happens (the well-known tutorial mistake is to score
    unshifted labels: the model is then asked for the token it already sees).

        batch = collator(examples)
        logits, loss = model(batch["input_ids"], shifted_targets(batch["labels"]))
    """
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)  # (B, 1)
    return torch.cat([labels[:, 1:], pad], dim=1)  # (B, T)


# --------------------------------------------------------------------------- the model's vocabulary


@torch.no_grad()
def resize_vocabulary(model, new_size: int):
    """Grow our ``utils.model.GPT``'s token embedding and output layer to ``new_size`` rows.

    Call it with ``len(tokenizer)`` after ``add_chat_tokens``, *before* creating the
    optimizer (it holds the old tensors). The old rows are kept; each new row starts
    as the mean of the old ones, so a new token starts as an "average token" and its
    initial output probability is typical instead of random (a random vector can
    get a huge logit and dominate the first steps). A tied output layer stays tied
    (GPT-2); an untied one (``tie_embeddings=False``) grows its own rows the same way.
    Returns the model.
    """
    old = model.transformer.wte.weight  # (V, C)
    V, C = old.shape
    if new_size < V:
        raise ValueError(f"resize_vocabulary: the model already has {V} token ids, more than new_size={new_size}; "
                         "it only grows (ids below V already work, no resize needed).")
    if new_size == V:
        return model

    def grown(matrix: torch.Tensor) -> nn.Parameter:  # (V, C) -> (V', C), new rows = the mean row
        weight = torch.empty(new_size, C, dtype=matrix.dtype, device=matrix.device)  # (V', C)
        weight[:V] = matrix
        weight[V:] = matrix.mean(dim=0)  # (C,) broadcast over the new rows
        return nn.Parameter(weight, requires_grad=matrix.requires_grad)

    tied = model.lm_head.weight is old
    old_head = model.lm_head.weight
    model.transformer.wte = nn.Embedding(new_size, C, device=old.device, dtype=old.dtype)
    model.transformer.wte.weight = grown(old)
    model.lm_head = nn.Linear(C, new_size, bias=False, device=old.device, dtype=old.dtype)
    model.lm_head.weight = model.transformer.wte.weight if tied else grown(old_head)
    model.config.vocab_size = new_size
    return model


# --------------------------------------------------------------------------- prompts for a reply


def prompt_budget(block_size: int, max_new_tokens: int) -> int:
    """Tokens a prompt may take: what leaves ``max_new_tokens`` of room, but at least half the context.

    Past ``block_size`` the model's window slides (``GPT.generate`` recomputes on the last
    block_size tokens), so a long reply still works; it just sees less of the prompt.
    """
    return max(block_size - max_new_tokens, block_size // 2)


def crop_prompt(tokenizer, messages, block_size: int, max_new_tokens: int = 0, crop_long_message: bool = False) -> list[int]:
    """``format_prompt`` ids of the newest turns that fit ``prompt_budget``; the system message stays.

    Our decision for a chat longer than the context: drop the *oldest* user/assistant
    pairs, never cut a message in the middle. When the system message and the last user
    message alone do not fit: with ``crop_long_message`` keep the *end* of that message (a
    measurement that asks many prompts of a small model), else raise ``ChatFormatError``
    saying by how much (a chat box: the person can write a shorter message, or /reset).
    """
    conversation = messages if isinstance(messages, dict) else {"messages": messages}
    messages = list(conversation["messages"])
    budget = prompt_budget(block_size, max_new_tokens)
    ids = format_prompt(tokenizer, messages)  # validates; the last message must be the user's
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    while len(ids) > budget and len(turns) > 1:
        turns = turns[2:]  # the oldest user message and the reply to it
        ids = format_prompt(tokenizer, system + turns)
    if len(ids) > budget and crop_long_message:
        text_ids = tokenizer.encode(turns[-1]["content"], add_special_tokens=False)
        keep = len(text_ids) - (len(ids) - budget)  # the format's tokens stay; the text gives up the rest
        while keep >= 1 and len(ids) > budget:
            ids = format_prompt(tokenizer, system + [{"role": "user", "content": tokenizer.decode(text_ids[-keep:])}])
            keep -= 1  # decoding and encoding again can merge differently: one token shorter until it fits
    if len(ids) > budget:
        raise ChatFormatError(
            f"prompt: the last user message (with the system message) takes {len(ids)} tokens, but the "
            f"model's context is {block_size} tokens and {max_new_tokens} are kept for the reply "
            f"(budget {budget}). To fix: write a shorter message (or system prompt), or ask for fewer tokens.")
    return ids

