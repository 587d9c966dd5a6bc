"""A chat model's replies: the one path from conversations to the assistant's answers.

Every reply in the course comes from here. The chat box and the terminal chat ask for one
reply and stream it (``reply_to``, ``chat_fn``). Format adherence (06), Make it yours (06),
preference sampling (07), refusals and moderation (07, 08) ask for many at once
(``generate_replies``). Both follow the same four rules, so they measure the same behaviour:

- **the prompt**: the conversation in the model's chat format plus the generation prompt
  (``utils.chat.crop_prompt``): the course's ``<|user|>...<|end|><|assistant|>``, or a
  tokenizer's own template (SmolLM2's). When it does not fit, the oldest whole turns go;
- **the tokens**: ``GPT.generate``, the course's one generation loop. Conversations of
  different lengths share a batch (left padding with a mask), and each row gets the tokens
  it would get alone;
- **the stop**: the reply ends at the first special token the model writes. ``<|end|>``
  (SmolLM2: ``<|im_end|>``) closes the turn properly (``ended``); ``<|user|>`` or another
  special token means the model began a part that is not its own, so it ends there too;
- **the text**: the reply's tokens decoded without special tokens, stripped of spaces.

An aligned model (07) comes with a refusal probe (``utils.refusal_probe``): given ``probe=``,
a conversation the probe flags gets a reply that begins with the probe's refusal prefix, and
the model writes the rest with its LoRA adapters on; every other reply is written with them off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from utils.chat import crop_prompt, end_of_turn_id
from utils.model import left_pad


@dataclass
class Reply:
    """What the model answered, and how it stopped."""

    text: str  # the reply, without special tokens, stripped
    token_ids: list[int]  # its tokens, without the stop token
    ended: bool  # closed its turn with the end-of-turn token (<|end|>, <|im_end|>) within the budget
    probe_declined: bool = False  # a refusal probe decided to decline: the reply starts with its prefix

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def stop_ids(tokenizer) -> list[int]:
    """Every special token of the tokenizer: a reply ends at the first one the model writes."""
    return sorted(set(tokenizer.all_special_ids))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _messages(conversation) -> list[dict]:
    return list(conversation["messages"] if isinstance(conversation, dict) else conversation)


def _as_reply(tokenizer, new_tokens: list[int], stops: set[int], end_id: int, start: list[int]) -> Reply:
    """The tokens written after the prompt (``start``: the refusal prefix, if any) -> a Reply, cut at a special token."""
    cut = next((i for i, token in enumerate(new_tokens) if token in stops), None)
    written = start + (new_tokens if cut is None else new_tokens[:cut])
    ended = cut is not None and new_tokens[cut] == end_id
    return Reply(tokenizer.decode(written, skip_special_tokens=True).strip(), written, ended, bool(start))


def _adapters(model, declining: bool, probe):
    """With a probe, the adapters are on exactly while declining; without one the model stays as it is."""
    import contextlib

    if probe is None:
        return contextlib.nullcontext()
    from utils.refusal_probe import adapters

    return adapters(model, on=declining)


def _starts(model, tokenizer, prompts: list[list[int]], probe, starts: list[str] | None) -> list[list[int]]:
    """Per prompt, the tokens its reply must begin with: ``starts`` if given, the probe's prefix where it declines."""
    if starts is not None:
        return [tokenizer.encode(start, add_special_tokens=False) if start else [] for start in starts]
    if probe is None:
        return [[] for _ in prompts]
    prefix = tokenizer.encode(probe.prefix, add_special_tokens=False)
    return [prefix if p >= probe.threshold else [] for p in probe.score_prompts(model, prompts)]


@torch.no_grad()
def generate_replies(model, tokenizer, conversations: Sequence, max_new_tokens: int = 64, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                     generator: torch.Generator | None = None, batch_size: int = 16,
                     crop_long_message: bool = True, probe=None, starts: list[str] | None = None) -> list[Reply]:
    """The model's next assistant turn after each conversation (each ends with the user's turn), in order.

    Conversations are sorted by prompt length and go through ``GPT.generate`` ``batch_size``
    at a time, so little padding is computed; on a CPU a batch of 16 costs a few rows' time
    (each step reads the weights once for all of them). Greedy by default (``temperature=0``);
    sampled with a ``torch.Generator`` on the model's device, a batch's rows draw in turn from
    it. ``crop_long_message``: a last message too long for the context keeps its end (else
    ``ChatFormatError``, as in a chat box). ``probe``: a ``RefusalProbe``; the replies it declines
    begin with its prefix. ``starts``: a text each reply must begin with ("" for none), given instead.
    """
    block_size = model.config.block_size
    prompts = [crop_prompt(tokenizer, _messages(c), block_size, max_new_tokens, crop_long_message)
               for c in conversations]
    starts = _starts(model, tokenizer, prompts, probe, starts)
    prompts = [prompt + start for prompt, start in zip(prompts, starts)]
    stops, end_id = stop_ids(tokenizer), end_of_turn_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id  # never seen: masked
    device = model_device(model)
    replies: list[Reply | None] = [None] * len(prompts)
    for declined in (False, True):  # with a probe: the declines with the adapters on, the rest with them off
        group = [i for i in range(len(prompts)) if bool(starts[i]) == declined or probe is None]
        order = sorted(group, key=lambda i: len(prompts[i]))
        with _adapters(model, declined, probe):
            for first in range(0, len(order), batch_size):
                rows = order[first:first + batch_size]
                idx, attention_mask = left_pad([prompts[i] for i in rows], pad_id, device)  # 2 x (b, T)
                out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                     generator=generator, stop_ids=stops, repetition_penalty=repetition_penalty,
                                     attention_mask=attention_mask)  # (b, T + new)
                for row, i in enumerate(rows):
                    replies[i] = _as_reply(tokenizer, out[row, idx.size(1):].tolist(), set(stops), end_id, starts[i])
        if probe is None:
            break
    return replies


@torch.no_grad()
def reply_to(model, tokenizer, messages, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             generator: torch.Generator | None = None, stream: Callable[[str], None] | None = None,
             probe=None) -> Reply:
    """The model's next assistant turn after one conversation, streamed to ``stream`` as it is written.

    The prompt, the stop rule and the text are ``generate_replies``'s; a last message too long
    for the context is a ``ChatFormatError`` (a person can shorten it). ``stream`` is called with
    each new piece of text as soon as it is known, in whole characters: a character whose UTF-8
    bytes span two tokens is sent when its last byte arrives. ``probe``: as in ``generate_replies``.
    """
    ids = crop_prompt(tokenizer, _messages(messages), model.config.block_size, max_new_tokens)
    start = _starts(model, tokenizer, [ids], probe, None)[0]
    stops, end_id = stop_ids(tokenizer), end_of_turn_id(tokenizer)
    written: list[int] = list(start)
    sent = ""  # the text already streamed

    def on_token(token_id: int) -> None:
        nonlocal sent
        written.append(token_id)
        text = tokenizer.decode(written, skip_special_tokens=True).strip()  # spaces at the end wait for what follows
        if not text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
            stream(text[len(sent):])
            sent = text

    idx = torch.tensor([ids + start], dtype=torch.long, device=model_device(model))  # (1, T)
    with _adapters(model, bool(start), probe):
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             generator=generator, stop_ids=stops, on_token=on_token if stream else None,
                             repetition_penalty=repetition_penalty)  # (1, T + new)
    reply = _as_reply(tokenizer, out[0, idx.size(1):].tolist(), set(stops), end_id, start)
    if stream is not None and reply.text[len(sent):]:
        stream(reply.text[len(sent):])
    return reply


def chat_fn(model, tokenizer, max_new_tokens: int = 64, seed: int | None = None, top_k: int | None = 50,
            top_p: float | None = None, repetition_penalty: float = 1.0, probe=None):
    """``reply(messages, on_token=None, temperature=0.8) -> str``: this model's replies, streamed, for a chat.

    ``utils.widgets.chat_box(chat_fn(model, tokenizer))`` is 06's chat box; the terminal chat
    uses it too. The sampling generator lives on the model's device (a CPU generator cannot
    drive sampling on a GPU); with ``seed`` the same conversation gets the same replies run after run.
    """
    generator = torch.Generator(device=model_device(model))
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    def reply(messages, on_token=None, temperature: float = 0.8) -> str:
        return reply_to(model, tokenizer, messages, max_new_tokens, temperature, top_k if temperature else None,
                        top_p, repetition_penalty, generator, stream=on_token, probe=probe).text

    return reply
