"""``make chat``: talk to a chat model in the terminal, or be told what to run first.

``python -m tools.chat [options]`` (``make chat ARGS="..."`` passes the options):

- no option that chooses the model: the chat model notebook 06 saves for the current
  profile (``checkpoints/<profile>/chat``); without it, what to run first (exit code 1);
- ``--checkpoint DIR``: any chat checkpoint, or a folder ``export_hf`` wrote;
- ``--model smollm2``: SmolLM2-135M-Instruct as far as you took it: the aligned model of
  notebook 07 (``checkpoints/<profile>/smollm2-dpo``) when it exists, else the "Make it
  yours" model of notebook 06 (``smollm2-yours``), else as released. ``--model
  smollm2-yours`` and ``--model smollm2-released`` pick one of the last two.

The first line says which model answers. The replies come from ``utils.replies.chat_fn``,
the chat box's own path (prompt, generation loop, stop rule). Piped input works too:
``echo "hi there" | python -m tools.chat --checkpoint DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.config import REPO_ROOT, ProfileError, profile_name

HELP = "Type a message and press Enter. /reset starts a new conversation, /quit (or Ctrl-D) leaves."
SMOLLM2 = ("smollm2", "smollm2-yours", "smollm2-released")  # --model: as far as you took it, 06's, as released


def chat_checkpoint(profile: str, root: Path = REPO_ROOT) -> Path:
    """Where notebook 06 saves the chat model of ``profile``."""
    return root / "checkpoints" / profile / "chat"


def what_to_run_first(profile: str, root: Path = REPO_ROOT) -> str:
    """The message for a learner who has no chat model yet in this profile."""
    from utils.checkpoint import CONFIG_FILE

    folder = chat_checkpoint(profile, root)
    shown = folder.relative_to(root)
    return (f"No chat model for the `{profile}` profile yet: {shown}/{CONFIG_FILE} does not exist.\n"
            f"Notebook 06 makes it. Run `make course` first (it runs notebooks 00-06 and the rest, reusing any "
            f"already done), or the notebooks one by one in JupyterLab (`make lab`).\n"
            f"For a tiny model in a few minutes: `COURSE_PROFILE=ci make course`, then `COURSE_PROFILE=ci make chat`.")


def parser() -> argparse.ArgumentParser:
    """The one command line of the terminal chat."""
    parser = argparse.ArgumentParser(prog="python -m tools.chat", description="Chat with a model in the terminal.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", help="a chat checkpoint folder or an export_hf folder (default: the chat "
                                            "model of notebook 06, checkpoints/<profile>/chat)")
    which.add_argument("--model", choices=SMOLLM2,
                       help="smollm2: your aligned SmolLM2 from notebook 07 if it exists, else your 'Make it yours' "
                            "SmolLM2 from notebook 06, else SmolLM2-135M-Instruct as released; smollm2-yours: "
                            "06's; smollm2-released: as released")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more varied")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--system", default=None, help="a system message at the start of every conversation")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best one here)")
    return parser


def chat_arguments(argv: list[str], root: Path = REPO_ROOT) -> list[str]:
    """``argv`` with the model made explicit; raises ``FileNotFoundError`` with what to run first.

    Arguments that choose the model themselves (``--checkpoint DIR``, ``--model NAME``) are
    kept as they are; otherwise the profile's chat checkpoint comes first, relative to ``root``.
    """
    args = parser().parse_args(argv)
    if args.checkpoint is not None or args.model is not None:
        return list(argv)
    from utils.checkpoint import CONFIG_FILE

    profile = profile_name()
    folder = chat_checkpoint(profile, root)
    if not (folder / CONFIG_FILE).exists():
        raise FileNotFoundError(what_to_run_first(profile, root))
    return ["--checkpoint", str(folder.relative_to(root)), *argv]


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _who(report: dict) -> str:
    """``Pip, made by Alex``: the name and maker a model was given (its report's "identity"), or ``?``."""
    who = report.get("identity") if isinstance(report, dict) else None
    who = who if isinstance(who, dict) else {}
    return f"{who.get('name', '?')}, made by {who.get('maker', '?')}"


def load_smollm2_chat(device: str = "cpu", root=None, which: str = "smollm2"):
    """``(model, tokenizer, description, probe)``: SmolLM2-135M-Instruct as far as notebooks 06 and 07 took it.

    ``which``: ``smollm2`` takes the aligned model of 07 (``checkpoints/<profile>/smollm2-dpo``,
    ``utils.alignment``) when it is complete, else the "Make it yours" model of 06
    (``smollm2-yours``, ``utils.identity``), else SmolLM2-135M-Instruct as released;
    ``smollm2-yours`` takes 06's (``FileNotFoundError`` when it is missing);
    ``smollm2-released`` takes the released one. A folder counts once its report is
    written (the last file its notebook saves). ``probe``: the aligned model's refusal probe
    (``utils.refusal_probe``), which decides when it declines; None for the others.
    """
    from utils import alignment, identity
    from utils.refusal_probe import RefusalProbe
    from utils.config import Paths
    from utils.pretrained import load_smollm2

    if which not in SMOLLM2:
        raise ValueError(f"--model {which}: choose one of {', '.join(SMOLLM2)}.")
    root = Path(root or REPO_ROOT)
    profile = profile_name()
    checkpoints = Paths(root, profile).checkpoints
    aligned, yours = checkpoints / alignment.DPO, checkpoints / identity.YOURS
    if which == "smollm2" and (aligned / alignment.REPORT_FILE).exists():
        model, tokenizer, report = alignment.load_dpo(aligned, device=device)
        probe = RefusalProbe.load(aligned)
        with_probe = ", with its refusal probe" if probe is not None else ""
        return model, tokenizer, f"your aligned SmolLM2 ({_who(report)}) from {_shown(aligned, root)}{with_probe}", probe
    if which in ("smollm2", "smollm2-yours") and (yours / identity.REPORT_FILE).exists():
        model, tokenizer, report = identity.load_yours(yours, device=device)
        return model, tokenizer, f"your fine-tuned SmolLM2 ({_who(report)}) from {_shown(yours, root)}", None
    if which == "smollm2-yours":
        raise FileNotFoundError(f"{_shown(yours / identity.REPORT_FILE, root)} does not exist: no 'Make it yours' "
                                f"model for the `{profile}` profile yet. Notebook 06 or `python -m utils.identity` "
                                "makes one.")
    model, tokenizer = load_smollm2(device=device)
    if which == "smollm2-released":
        return model, tokenizer, "SmolLM2-135M-Instruct as released", None
    return model, tokenizer, (f"SmolLM2-135M-Instruct as released (no 'Make it yours' model in "
                              f"{_shown(yours, root)} yet: notebook 06 or `python -m utils.identity` makes one; "
                              f"notebook 07 aligns it into {_shown(aligned, root)})"), None


def _folder(checkpoint: str, root: Path) -> Path:
    """A relative ``--checkpoint`` from here, or from the course's root when it is not here (make chat's default)."""
    folder = Path(checkpoint)
    if not folder.is_absolute() and not folder.exists() and (root / folder).exists():
        return root / folder
    return folder


def talk(reply, temperature: float, system: str | None) -> None:
    """The conversation: read a line, stream the reply, until /quit or the end of input."""
    from utils.chat import ChatFormatError

    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
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
            answer = reply(history, lambda piece: print(piece, end="", flush=True), temperature=temperature)
        except ChatFormatError as error:
            history.pop()
            print(f"\n(error: {error})")
            continue
        print()
        history.append({"role": "assistant", "content": answer or "..."})


def main(argv: list[str] | None = None, root: Path = REPO_ROOT) -> int:
    """Exit codes: 0 after /quit or the end of input, 1 without a chat model yet, 2 for a model that
    cannot be loaded (or a bad option), 130 after Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser().parse_args(chat_arguments(argv, root))
    except (FileNotFoundError, ProfileError, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    try:
        from utils.checkpoint import load_chat_model
        from utils.config import pick_device
        from utils.replies import chat_fn

        device = args.device or pick_device()
        try:
            probe = None
            if args.model is not None:
                model, tokenizer, description, probe = load_smollm2_chat(device, root=root, which=args.model)
            else:
                model, tokenizer = load_chat_model(_folder(args.checkpoint, root), device=device)
                description = f"the model in {_shown(Path(args.checkpoint), root)}"
        except (FileNotFoundError, ProfileError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        reply = chat_fn(model, tokenizer, args.max_new_tokens, args.seed, args.top_k, args.top_p,
                        args.repetition_penalty, probe=probe)
        print(f"Chatting with {description}.")
        print(HELP)
        talk(reply, args.temperature, args.system)
    except KeyboardInterrupt:  # Ctrl-C: leave at once, on a line of its own, without a traceback
        print(flush=True)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
