"""Talking to a chat model: one reply, streamed as it is written, and the terminal chat.

Notebook 06's chat box, the terminal chat (``python -m utils.chat --checkpoint DIR``),
07's red-team prompts and 06's format-adherence metric all get their replies from
``reply_to``, so they measure the same behaviour:

- the prompt is the conversation in the chat format plus ``<|assistant|>``
  (``utils.chat.crop_prompt``: the oldest whole turns go when it does not fit);
- the tokens come from ``GPT.generate``, the course's one generation loop (KV cache,
  sliding window, temperature / top-k / top-p);
- the reply ends at the first special token the model writes: ``<|end|>`` closes the
  turn properly; ``<|user|>`` or another special token means the model began to write
  a part that is not its own, so it ends there too (and does not count as a proper end).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.chat import END, ChatFormatError, chat_token_ids, crop_prompt


@dataclass
class Reply:
    """What the model answered, and how it stopped."""

    text: str  # the reply, without special tokens
    token_ids: list[int]  # its tokens, without the stop token
    stop_id: int | None  # the special token that ended it; None when max_new_tokens ran out
    ended: bool  # True when that token was <|end|>: the model closed its turn as trained


@torch.no_grad()
def reply_to(model, tokenizer, messages, max_new_tokens: int = 64, temperature: float = 0.8,
             top_k: int | None = 50, top_p: float | None = None, generator: torch.Generator | None = None,
             stream=None, repetition_penalty: float = 1.0) -> Reply:
    """The model's next assistant turn after ``messages`` (which end with the user's turn).

    - The prompt is ``crop_prompt``: ``format_prompt`` of the newest whole turns that leave
      room for the reply (a single message that is too long raises ``ChatFormatError``).
    - ``GPT.generate`` writes at most ``max_new_tokens`` tokens and stops at any special
      token of the tokenizer (``stop_ids``).
    - ``stream``: called with each new piece of text as soon as it is known (a chat box, a
      terminal). Pieces are whole characters: a character whose UTF-8 bytes span two
      tokens is sent when its last byte arrives.
    - ``generator``: a ``torch.Generator`` on the model's device, for reproducible sampling.
    """
    ids = crop_prompt(tokenizer, messages, model.config.block_size, max_new_tokens)
    end_id = chat_token_ids(tokenizer)[END]
    stop_ids = set(tokenizer.all_special_ids)
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)

    written: list[int] = []
    sent = ""  # the text already streamed

    def on_token(token_id: int) -> None:
        nonlocal sent
        written.append(token_id)
        text = tokenizer.decode(written, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
            stream(text[len(sent):])
            sent = text

    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         generator=generator, stop_ids=stop_ids, on_token=on_token if stream else None,
                         repetition_penalty=repetition_penalty)  # (1, T + new)
    new = out[0, len(ids):].tolist()
    stop_id = new[-1] if new and new[-1] in stop_ids else None  # generate stops right after a stop id
    token_ids = new[:-1] if stop_id is not None else new
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    if stream is not None and text[len(sent):]:
        stream(text[len(sent):])
    return Reply(text, token_ids, stop_id, stop_id == end_id)


def generate_reply(model, tokenizer, messages, max_new_tokens: int = 64, temperature: float = 0.8,
                   top_k: int | None = 50, top_p: float | None = None, generator: torch.Generator | None = None,
                   stream=None, repetition_penalty: float = 1.0) -> str:
    """The text of ``reply_to``: the model's next assistant reply to ``messages``."""
    return reply_to(model, tokenizer, messages, max_new_tokens, temperature, top_k, top_p, generator, stream,
                    repetition_penalty).text


def load_chat_model(folder, device: str = "cpu"):
    """``(model, tokenizer)`` from a chat checkpoint (``folder`` + ``folder/tokenizer``) or an ``export_hf`` folder.

    The vocabulary sizes are checked (``load_checkpoint`` refuses a tokenizer the model
    was not trained with) and the tokenizer must have the chat tokens.
    """
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    from utils.checkpoint import CONFIG_FILE, load_checkpoint
    from utils.model import GPT

    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist: {folder} is not a checkpoint folder "
                                "(fine-tune one in notebook 06, or pass the folder export_hf wrote).")
    card = json.loads(config_path.read_text(encoding="utf-8"))
    if card.get("model_type") in ("gpt2", "llama"):  # a Hugging Face folder (export_hf)
        from transformers import AutoModelForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = GPT.from_hf(AutoModelForCausalLM.from_pretrained(str(folder))).to(device).eval()
    else:
        tokenizer_dir = folder / "tokenizer"
        if not tokenizer_dir.exists():
            raise FileNotFoundError(f"{tokenizer_dir} does not exist: a chat checkpoint keeps its tokenizer "
                                    "there (utils.finetune.fine_tune saves it).")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        model = load_checkpoint(folder, tokenizer=tokenizer, device=device)
    chat_token_ids(tokenizer)  # a clear error when the tokenizer has no chat tokens
    return model, tokenizer


HELP = "Type a message and press Enter. /reset starts a new conversation, /quit (or Ctrl-D) leaves."


def main(argv=None) -> int:
    """``python -m utils.chat --checkpoint DIR``: chat with a model in the terminal (stdin lines).

    Works with piped input too: ``echo "hi there" | python -m utils.chat --checkpoint DIR``.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m utils.chat", description="Chat with a fine-tuned model.")
    parser.add_argument("--checkpoint", required=True, help="chat checkpoint folder (or an export_hf folder)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more varied")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--system", default=None, help="a system message at the start of every conversation")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    try:
        model, tokenizer = load_chat_model(args.checkpoint, device=args.device)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    print(HELP)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            history = list(start)
            print("(new conversation)")
            continue
        history.append({"role": "user", "content": text})
        print("assistant> ", end="", flush=True)
        try:
            reply = generate_reply(model, tokenizer, history, args.max_new_tokens, args.temperature, args.top_k,
                                   args.top_p, generator, stream=lambda piece: print(piece, end="", flush=True),
                                   repetition_penalty=args.repetition_penalty)
        except ChatFormatError as error:
            history.pop()
            print(f"\n(error: {error})")
            continue
        print()
        history.append({"role": "assistant", "content": reply or "..."})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
