"""Checkpoints: the weights, what they mean, and where training stood.

A checkpoint is a folder of three files, each written atomically
(``utils.io.write_with``: a temp file beside it, then ``os.replace``), so a crash
or Ctrl-C never leaves half a file:

- ``model.safetensors``: the weights. safetensors stores plain tensors only (no
  pickle, so loading runs no code) and refuses two names that share memory. Our
  GPT ties ``lm_head.weight`` to ``transformer.wte.weight``, so we save that
  matrix once and tie it again when loading.
- ``config.json``: the ``GPTConfig``, the tokenizer's name and vocabulary size,
  and the ``TrainConfig``: enough to rebuild the model and check its tokenizer.
- ``training_state.pt``: optimizer state, step, best validation loss and every
  random number generator's state (torch, numpy, Python, the batch sampler), so
  a resumed run continues exactly where it stopped. It is read with
  ``torch.load(..., weights_only=True)``, which only accepts tensors and plain
  Python values: the RNG states are stored as tensors and strings for that.

A *chat* checkpoint (06) also keeps its tokenizer, with the chat template, in
``folder/tokenizer``: ``load_chat_model`` loads both and refuses a model without the chat
format (04's pretrained one) with what to pass instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from utils.io import write_atomically, write_with
from utils.model import GPT, GPTConfig

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
TIED = ("lm_head.weight", "transformer.wte.weight")  # (dropped on save, kept) : one matrix


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with the tied output matrix stored once (safetensors refuses shared tensors)."""
    state = unwrap(model).state_dict()
    dropped, kept = TIED
    if dropped in state and state[dropped].data_ptr() == state[kept].data_ptr():
        del state[dropped]
    return {name: t.detach().to("cpu").contiguous() for name, t in state.items()}


def save_model(
    model: torch.nn.Module,
    folder: str | os.PathLike,
    tokenizer_name: str | None = None,
    vocab_size: int | None = None,
    step: int | None = None,
    train_config: dict | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    gpt = unwrap(model)
    metadata = {"format": "pt", "step": str(step if step is not None else -1)}
    write_with(folder / MODEL_FILE, lambda tmp: save_file(model_tensors(gpt), tmp, metadata=metadata))
    card = {
        "model": dataclasses.asdict(gpt.config),
        "tokenizer": tokenizer_name,
        "vocab_size": int(vocab_size if vocab_size is not None else gpt.config.vocab_size),
        "step": step,
        "train": train_config,
    }
    write_atomically(folder / CONFIG_FILE, json.dumps(card, indent=2, default=str))
    return folder


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {folder} is not a checkpoint folder (train one first).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg}).") from None


def gpt_config_from(card: dict) -> GPTConfig:
    """GPTConfig from config.json, ignoring fields this version of GPTConfig does not know."""
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in card["model"].items() if k in known})


def load_weights(model: torch.nn.Module, folder: str | os.PathLike, device: str | None = None) -> int:
    """Load ``model.safetensors`` into ``model`` (re-tying the output layer); return the saved step.

    ``device``: where the tensors are read to, default the model's own device. A model
    built on the ``meta`` device (shapes only, no memory) takes the loaded tensors
    as its parameters (``assign``), which skips a random initialization that the file
    would overwrite anyway: seconds saved on SmolLM2's 135M weights.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: no weights in {folder}.")
    gpt = unwrap(model)
    on_meta = gpt.transformer.wte.weight.is_meta
    tensors = load_file(str(path), device=str(device or gpt.transformer.wte.weight.device))
    missing, unexpected = gpt.load_state_dict(tensors, strict=False, assign=on_meta)
    if unexpected or set(missing) - {TIED[0]}:
        raise ValueError(f"{path}: weights do not match the model (missing {missing}, unexpected {unexpected}).")
    gpt.tie_weights()  # tie again when the config ties (load_state_dict copies values only)
    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {}).get("step", -1))


def load_checkpoint(folder: str | os.PathLike, tokenizer=None, device: str = "cpu") -> GPT:
    """The GPT saved in ``folder``; with ``tokenizer``, check first that its vocabulary is the model's.

    A model trained with another tokenizer would read every id as a different token:
    it loads without complaint and writes nonsense, so we refuse it here.
    """
    card = read_config(folder)
    if tokenizer is not None:
        from utils.token_files import vocabulary_size

        theirs, ours = vocabulary_size(tokenizer), card["vocab_size"]
        if theirs != ours:
            raise ValueError(
                f"{Path(folder) / CONFIG_FILE}: the checkpoint was trained with a vocabulary of {ours:,} tokens "
                f"(tokenizer {card.get('tokenizer')!r}) but the tokenizer given has {theirs:,}: use the tokenizer "
                "the model was trained with (saved beside it), or train a new model for this one."
            )
    with torch.device("meta"):  # shapes only: every weight comes from the file
        model = GPT(gpt_config_from(card))
    load_weights(model, folder, device=device)
    return model.eval()


# ---- chat checkpoints: a model to talk to (06's chat model, an export_hf folder) ----


def not_a_chat_model(folder) -> str:
    """What to tell a learner who points the chat at a pretrained (not fine-tuned) checkpoint."""
    folder = Path(folder)
    in_course = folder.parent.parent.name == "checkpoints"  # checkpoints/<profile>/<name>
    chat = folder.parent / "chat" if in_course else "checkpoints/<profile>/chat"
    return (f"{folder} is a pretrained model without the chat format: fine-tune it in notebook 06, "
            f"or pass {chat} (the chat model 06 saves).")


def load_chat_model(folder: str | os.PathLike, device: str = "cpu"):
    """``(model, tokenizer)`` from a chat checkpoint (``folder`` + ``folder/tokenizer``) or an ``export_hf`` folder.

    The vocabulary sizes are checked (``load_checkpoint`` refuses a tokenizer the model
    was not trained with). A checkpoint whose tokenizer has no chat template (04's
    pretrained model) is refused with what to do instead (``not_a_chat_model``).
    """
    from transformers import AutoTokenizer

    from utils.chat import ChatFormatError, end_of_turn_id

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


# ---- random number generators, as tensors and strings (torch.load(weights_only=True) accepts them) ----


def rng_state(sampler: np.random.Generator | None = None) -> dict:
    """Every generator training draws from: torch (dropout), CUDA, numpy, Python, the batch sampler."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": json.dumps(np.random.get_state(legacy=False), default=_jsonable),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():  # this process's GPU only: a resume may run on fewer GPUs
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    if sampler is not None:
        state["sampler"] = json.dumps(sampler.bit_generator.state)
    return state


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"cannot store {type(value)} in an RNG state")


def set_rng_state(state: dict, sampler: np.random.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], torch.cuda.current_device())
    numpy_state = json.loads(state["numpy"])
    np.random.set_state(
        (numpy_state["bit_generator"], np.array(numpy_state["state"]["key"], dtype=np.uint32),
         numpy_state["state"]["pos"], numpy_state["has_gauss"], numpy_state["gauss"])
    )
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if sampler is not None and "sampler" in state:
        sampler.bit_generator.state = json.loads(state["sampler"])


def save_training_state(state: dict, folder: str | os.PathLike) -> Path:
    path = Path(folder) / STATE_FILE
    write_with(path, lambda tmp: torch.save(state, tmp))
    return path


def load_training_state(folder: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: there is no run to resume in {folder}; start one without --resume."
        )
    return torch.load(path, map_location=map_location, weights_only=True)


def save_finetuned(model, tokenizer, folder: str | os.PathLike, report_file: str, report: dict,
                   description: str) -> Path:
    """A fine-tuned GPT with its tokenizer (``folder/tokenizer``) and its report (``folder/report_file``), written last.

    The report is removed first and written at the very end: a folder without it is an
    incomplete save (a crash, Ctrl-C), which the loaders refuse and the notebooks rebuild.
    """
    from utils.io import write_json_atomically

    folder = Path(folder)
    (folder / report_file).unlink(missing_ok=True)  # incomplete until the very end
    save_model(model, folder, tokenizer_name=description, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    write_json_atomically(folder / report_file, report)
    return folder


def load_finetuned(folder: str | os.PathLike, report_file: str, missing: str, device: str = "cpu"):
    """``(model, tokenizer, report)`` from a folder written by ``save_finetuned``.

    ``missing``: what to do when the folder holds no finished model (the error says it).
    """
    import json

    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / report_file).exists():
        raise FileNotFoundError(f"{folder / report_file} does not exist: {folder} holds no finished model; {missing}.")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    model = load_checkpoint(folder, tokenizer=tokenizer, device=device)
    return model, tokenizer, json.loads((folder / report_file).read_text(encoding="utf-8"))
