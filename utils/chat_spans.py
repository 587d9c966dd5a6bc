"""Labels on assistant replies for a tokenizer's *own* chat template (SmolLM2's ``<|im_start|>`` format).

Fine-tuning a chat model scores only the assistant's tokens: the reply and the token
that closes it. ``transformers`` can mark them for you (``return_assistant_tokens_mask``)
only when the template wraps replies in a ``{% generation %}`` block, and SmolLM2's
template has none. So we find the spans ourselves, from the template alone:

- the prompt for reply i is ``apply_chat_template(messages[:i], add_generation_prompt=True)``:
  everything before the reply, ending with ``<|im_start|>assistant\\n``;
- the whole conversation's ids begin with exactly those ids (checked, never assumed), so
  the reply starts right after them;
- it ends with the first end-of-turn token after that (``<|im_end|>``, the tokenizer's
  ``eos_token`` for SmolLM2), which is scored too: it is how the model learns to stop.

The ``input_ids`` are ``apply_chat_template(messages)``'s, unchanged, so training sees
exactly what the model sees when it chats (``tests/test_identity.py`` proves it).
"""

from __future__ import annotations

IGNORE_INDEX = -100  # a label the loss skips (utils.training's ignore_index)


class ChatSpanError(ValueError):
    """A conversation whose reply spans cannot be found in the template's ids (the message says why)."""


def template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """``apply_chat_template``'s token ids as a plain list (transformers 5 returns a dict by default)."""
    encoded = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                            add_generation_prompt=add_generation_prompt)
    return list(encoded["input_ids"])


def assistant_spans(tokenizer, messages: list[dict], end_id: int | None = None) -> tuple[list[int], list[tuple]]:
    """``(input_ids, spans)``: the template's ids and, per assistant message, ``(start, end)`` such that
    ``input_ids[start:end]`` is its reply followed by the end-of-turn token ``end_id`` (default: eos).
    """
    end_id = tokenizer.eos_token_id if end_id is None else end_id
    if end_id is None:
        raise ChatSpanError("This tokenizer has no eos_token: pass end_id, the token that closes a turn.")
    input_ids = template_ids(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise ChatSpanError("messages[0] is an assistant reply: a conversation starts with the user "
                                "(or a system message), so the reply has a prompt to answer.")
        prompt = template_ids(tokenizer, messages[:i], add_generation_prompt=True)
        start = len(prompt)
        if input_ids[:start] != prompt:
            raise ChatSpanError(
                f"messages[{i}]: the conversation's ids do not begin with the ids of its prompt, so the "
                "reply's tokens cannot be told apart (the tokenizer merged the template's text with the "
                "reply's first characters; a reply that starts with spaces can do this). Strip the reply's text.")
        try:
            end = input_ids.index(end_id, start) + 1
        except ValueError:
            raise ChatSpanError(f"messages[{i}]: no end-of-turn token (id {end_id}) after the reply; is "
                                "end_id the token this template closes a turn with?") from None
        spans.append((start, end))
    return input_ids, spans


def encode_chat(tokenizer, messages: list[dict], end_id: int | None = None) -> tuple[list[int], list[int]]:
    """One conversation -> ``(input_ids, labels)``, two lists of the same length.

    ``input_ids`` equal ``tokenizer.apply_chat_template(messages)``'s; ``labels[t]`` is
    ``input_ids[t]`` inside an assistant reply span (the reply and its ``<|im_end|>``) and
    -100 everywhere else (system, user, role headers, the newline after each turn). The
    labels are aligned with the ids, not shifted: shift them where the loss is computed.
    """
    input_ids, spans = assistant_spans(tokenizer, messages, end_id)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in spans:
        labels[start:end] = input_ids[start:end]
    return input_ids, labels
