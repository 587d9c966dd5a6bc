"""The terminal chat, and loading a chat model to talk to.

``python -m utils.chat --checkpoint DIR`` or ``--model smollm2``: the replies come from
``utils.replies.chat_fn``, the chat box's own path (prompt, generation loop, stop rule).
"""

from __future__ import annotations

from utils.chat import ChatFormatError, end_of_turn_id
from utils.replies import chat_fn


def not_a_chat_model(folder) -> str:
    """What to tell a learner who points the chat at a pretrained (not fine-tuned) checkpoint."""
    from pathlib import Path

    folder = Path(folder)
    in_course = folder.parent.parent.name == "checkpoints"  # checkpoints/<profile>/<name>
    chat = folder.parent / "chat" if in_course else "checkpoints/<profile>/chat"
    return (f"{folder} is a pretrained model without the chat format: fine-tune it in notebook 06, "
            f"or pass {chat} (the chat model 06 saves).")


def load_chat_model(folder, device: str = "cpu"):
    """``(model, tokenizer)`` from a chat checkpoint (``folder`` + ``folder/tokenizer``) or an ``export_hf`` folder.

    The vocabulary sizes are checked (``load_checkpoint`` refuses a tokenizer the model
    was not trained with). A checkpoint whose tokenizer has no chat template (04's
    pretrained model) is refused with what to do instead (``not_a_chat_model``).
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
        if tokenizer.chat_template is None:
            raise ChatFormatError(not_a_chat_model(folder))
        model = GPT.from_hf(AutoModelForCausalLM.from_pretrained(str(folder))).to(device).eval()
    else:
        tokenizer_dir = folder / "tokenizer"
        if not tokenizer_dir.exists():
            raise FileNotFoundError(f"{tokenizer_dir} does not exist: a chat checkpoint keeps its tokenizer "
                                    "there (utils.finetune.fine_tune saves it).")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if tokenizer.chat_template is None:
            raise ChatFormatError(not_a_chat_model(folder))
        model = load_checkpoint(folder, tokenizer=tokenizer, device=device)
    end_of_turn_id(tokenizer)  # a clear error when the chat format is incomplete
    return model, tokenizer


def load_smollm2_chat(device: str = "cpu", root=None):
    """``(model, tokenizer, description)``: your "Make it yours" SmolLM2 when 06 has made it, else the instruct model.

    06's "Make it yours" saves the fine-tuned model in ``checkpoints/<profile>/smollm2-yours``
    (``utils.identity``); without it this is SmolLM2-135M-Instruct as released.
    """
    from utils import identity
    from utils.config import REPO_ROOT, Paths, profile_name
    from utils.pretrained import load_smollm2

    folder = Paths(root or REPO_ROOT, profile_name()).checkpoints / identity.YOURS
    if (folder / identity.REPORT_FILE).exists():
        model, tokenizer, report = identity.load_yours(folder, device=device)
        who = report.get("identity", {})
        return model, tokenizer, (f"your fine-tuned SmolLM2 ({who.get('name', '?')}, made by {who.get('maker', '?')}) "
                                  f"from {folder}")
    model, tokenizer = load_smollm2(device=device)
    return model, tokenizer, (f"SmolLM2-135M-Instruct as released (no 'Make it yours' model in {folder} yet: "
                              "notebook 06 or `python -m utils.identity` makes one)")


HELP = "Type a message and press Enter. /reset starts a new conversation, /quit (or Ctrl-D) leaves."


def main(argv=None) -> int:
    """``python -m utils.chat --checkpoint DIR`` or ``--model smollm2``: chat with a model in the terminal.

    Works with piped input too: ``echo "hi there" | python -m utils.chat --checkpoint DIR``.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m utils.chat", description="Chat with a model in the terminal.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a chat checkpoint folder (checkpoints/<profile>/chat) or an export_hf folder")
    which.add_argument("--model", choices=["smollm2"],
                       help="smollm2: your 'Make it yours' SmolLM2 from notebook 06 if it exists, else "
                            "SmolLM2-135M-Instruct")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more varied")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--system", default=None, help="a system message at the start of every conversation")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best one here)")
    args = parser.parse_args(argv)

    from utils.config import pick_device

    device = args.device or pick_device()
    try:
        if args.model == "smollm2":
            model, tokenizer, description = load_smollm2_chat(device)
        else:
            model, tokenizer = load_chat_model(args.checkpoint, device=device)
            description = f"the model in {args.checkpoint}"
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    reply = chat_fn(model, tokenizer, args.max_new_tokens, args.seed, args.top_k, args.top_p,
                    args.repetition_penalty)
    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    print(f"Chatting with {description}.")
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
            answer = reply(history, lambda piece: print(piece, end="", flush=True), temperature=args.temperature)
        except ChatFormatError as error:
            history.pop()
            print(f"\n(error: {error})")
            continue
        print()
        history.append({"role": "assistant", "content": answer or "..."})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
