"""``make chat``: talk to your fine-tuned model in the terminal, or be told what to run first.

Runs ``python -m utils.chat --checkpoint checkpoints/<profile>/chat`` (the chat model
notebook 06 saves) with any extra arguments: ``make chat ARGS="--temperature 0.5"``.
Arguments that choose the model themselves (``--checkpoint DIR``, ``--model NAME``)
are passed on as they are, without looking for the course's checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from utils.config import REPO_ROOT, ProfileError, profile_name
from utils.checkpoint import CONFIG_FILE

CHOOSES_A_MODEL = ("--checkpoint", "--model")


def chat_checkpoint(profile: str, root: Path = REPO_ROOT) -> Path:
    """Where notebook 06 saves the chat model of ``profile``."""
    return root / "checkpoints" / profile / "chat"


def what_to_run_first(profile: str, root: Path = REPO_ROOT) -> str:
    """The message for a learner who has no chat model yet in this profile."""
    folder = chat_checkpoint(profile, root)
    shown = folder.relative_to(root)
    return (f"No chat model for the `{profile}` profile yet: {shown}/{CONFIG_FILE} does not exist.\n"
            f"Notebook 06 makes it. Run `make course` first (it runs notebooks 00-06 and the rest, reusing any "
            f"already done), or the notebooks one by one in JupyterLab (`make lab`).\n"
            f"For a tiny model in a few minutes: `COURSE_PROFILE=ci make course`, then `COURSE_PROFILE=ci make chat`.")


def chat_arguments(argv: list[str], root: Path = REPO_ROOT) -> list[str]:
    """The arguments for ``python -m utils.chat``; raises ``FileNotFoundError`` with what to run first."""
    if any(arg.split("=")[0] in CHOOSES_A_MODEL for arg in argv):
        return list(argv)
    profile = profile_name()
    folder = chat_checkpoint(profile, root)
    if not (folder / CONFIG_FILE).exists():
        raise FileNotFoundError(what_to_run_first(profile, root))
    return ["--checkpoint", str(folder.relative_to(root)), *argv]


def main(argv: list[str] | None = None) -> int:
    try:
        arguments = chat_arguments(sys.argv[1:] if argv is None else argv)
    except (FileNotFoundError, ProfileError, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    try:
        return subprocess.run([sys.executable, "-m", "utils.chat", *arguments], cwd=REPO_ROOT).returncode
    except KeyboardInterrupt:  # Ctrl-C reached the chat too; it says goodbye itself
        return 130


if __name__ == "__main__":
    sys.exit(main())
