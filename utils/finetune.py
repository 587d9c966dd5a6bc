"""Supervised fine-tuning (SFT) into a chat model, LoRA, before/after evaluation and export.

Notebook 06 builds each idea in front of the learner and then uses these functions:

- ``sft_batches``: padded chat batches whose targets are shifted and -100 everywhere
  except assistant tokens. It is only a ``batch_fn`` for ``utils.training.train``:
  fine-tuning runs through the *same* loop as pretraining (warm-up, cosine, clipping,
  checkpoints, exact resume); only the batches change.
- ``apply_lora`` / ``merge_lora``: low-rank adapters with ``peft``, injected into our
  GPT in place (it stays a ``GPT``, so ``train``, ``generate`` and checkpoints work
  unchanged), and merged back into plain weights for export.
- ``evaluate_chat``: the before/after table: assistant perplexity and format
  adherence (``utils.evaluation``: does it answer better, does it stop where a reply
  ends) and ``pretraining_perplexity`` (what did it forget of plain text).
- ``export_hf``: a folder that ``transformers`` loads on its own
  (``AutoModelForCausalLM``, ``AutoTokenizer`` with the chat template, ``pipeline``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch

from utils import checkpoint as ckpt
from utils import evaluation, training
from utils.chat import (
    END,
    ChatCollator,
    ChatFormatError,
    add_chat_tokens,
    chat_token_ids,
    resize_vocabulary,
    shifted_targets,
    turn_pairs,
    validate_chat,
)
from utils.model import GPT
from utils.replies import generate_replies

LORA_TARGETS = ("c_attn", "c_proj", "c_fc")  # every Linear inside the blocks (c_proj: attention and MLP)
BLOCK_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # the same, by their names in a block


# --------------------------------------------------------------------------- budgets


def sft_config(profile, seed: int = 1337, lora: bool = False) -> training.TrainConfig:
    """The fine-tuning budget of a profile as a ``TrainConfig``.

    Fine-tuning starts from a model that already knows the language, so it uses a
    lower peak learning rate than pretraining (large steps would erase what it knows:
    forgetting) and far fewer steps. LoRA trains only small fresh matrices, which
    tolerate (and need) a higher rate; weight decay would pull the adapters to zero,
    so it is off for them.
    """
    steps = profile.sft_max_iters
    peak = profile.learning_rate / 3 if not lora else profile.learning_rate * 2
    return training.TrainConfig(
        batch_size=profile.sft_batch_size,
        block_size=profile.block_size,
        grad_accum_steps=profile.grad_accum_steps,
        max_iters=steps,
        learning_rate=peak,
        min_lr=peak / 10,
        warmup_iters=max(2, steps // 20),
        weight_decay=0.0 if lora else 0.1,
        eval_interval=max(1, steps // 4),
        eval_iters=profile.sft_eval_iters,
        log_interval=max(1, steps // 50),
        seed=seed,
        progress=profile.progress,
        verbose=profile.progress,
    )


# --------------------------------------------------------------------------- data


def load_conversations(cfg) -> dict[str, list[dict]]:
    """The cleaned conversation splits of notebook 02 (rebuilt with a message when missing)."""
    from utils import corpus, data

    files = corpus.ensure_corpus(cfg)
    splits = data.load_saved_splits(files.conversations)
    return {name: list(splits[name]) for name in splits}


def prepare_chat_model(model: GPT, tokenizer):
    """Chat tokens on the tokenizer and room for them in the model (no-op for the course tokenizer)."""
    add_chat_tokens(tokenizer)
    if len(tokenizer) > model.config.vocab_size:
        resize_vocabulary(model, len(tokenizer))
    return model, tokenizer


class SFTBatches:
    """``batch_fn(split, generator) -> (x, y, mask)`` for ``training.train``: random padded chat batches.

    x is the padded ``input_ids`` (B, T) and y = ``shifted_targets(labels)``: the next
    token where that token belongs to an assistant reply, -100 elsewhere (system,
    user, role markers, padding). mask is the ``attention_mask`` (1 on real tokens, 0
    on padding): the loop counts real tokens with it for tokens/s and MFU. The
    examples are drawn with the generator the loop passes in, so a resumed run draws
    the same batches as an uninterrupted one. The tensors stay on the CPU; the
    training loop moves them to the device it trains on (under torchrun, each
    process's own GPU).
    """

    def __init__(self, train_examples, val_examples, batch_size: int, pad_id: int):
        for name, examples in (("train", train_examples), ("val", val_examples)):
            if len(examples) == 0:
                raise ValueError(f"sft_batches: no {name} examples (encode_dataset skipped them all? "
                                 "raise max_length or check the conversations).")
        self.examples = {"train": train_examples, "val": val_examples}
        self.batch_size = batch_size
        self.collate = ChatCollator(pad_id)

    def __call__(self, split: str, generator: np.random.Generator):
        examples = self.examples[split]
        rows = generator.integers(0, len(examples), size=self.batch_size)  # (B,)
        batch = self.collate([examples[int(i)] for i in rows])
        # (B, T) each: inputs, next-token targets (-100 where nothing is learned), 1 on real tokens
        return batch["input_ids"], shifted_targets(batch["labels"]), batch["attention_mask"]


def sft_batches(train_examples, val_examples, batch_size: int, pad_id: int) -> SFTBatches:
    """The ``batch_fn`` of supervised fine-tuning (see ``SFTBatches``)."""
    return SFTBatches(train_examples, val_examples, batch_size, pad_id)


def fine_tune(model, tokenizer, train_examples, val_examples, cfg: training.TrainConfig,
              out_dir: str | os.PathLike | None = None, resume: bool = False, callback=None) -> dict:
    """SFT = ``training.train`` with chat batches. Returns train's metrics (tokens/s counts real tokens, not pads).

    With ``out_dir``, the folder ends up a chat checkpoint: weights, config and the
    tokenizer in ``out_dir/tokenizer`` (``utils.talk.load_chat_model`` and
    ``python -m utils.chat --checkpoint out_dir`` read it). A LoRA model keeps its
    resumable training state in ``out_dir/lora_run`` and ``out_dir`` gets the merged
    weights (a plain GPT).
    """
    batch_fn = sft_batches(train_examples, val_examples, cfg.batch_size, tokenizer.pad_token_id)
    lora = has_lora(model)
    run_dir = None if out_dir is None else (Path(out_dir) / "lora_run" if lora else Path(out_dir))
    metrics = training.train(model, cfg=cfg, out_dir=run_dir, resume=resume, batch_fn=batch_fn,
                             callback=callback, tokenizer_name="chat")
    if out_dir is not None and training.is_main_process():  # under torchrun, one process writes
        if lora:
            save_chat_model(model, tokenizer, out_dir, metrics["iters"])
        else:
            tokenizer.save_pretrained(str(Path(out_dir) / "tokenizer"))
    return metrics


def save_chat_model(model, tokenizer, out_dir: str | os.PathLike, iters: int = 0) -> Path:
    """Write ``model`` (LoRA adapters merged, on a copy) and its tokenizer as a chat checkpoint in ``out_dir``.

    The folder is what ``utils.checkpoint.load_chat_model`` and the terminal chat read: the
    weights and config, and the tokenizer in ``out_dir/tokenizer``. 06 saves whichever of its
    fine-tuned models its own figures choose.
    """
    gpt = ckpt.unwrap(model)
    if has_lora(gpt):
        gpt = merge_lora(copy.deepcopy(gpt))
    ckpt.save_model(gpt, out_dir, "chat", len(tokenizer), iters)
    tokenizer.save_pretrained(str(Path(out_dir) / "tokenizer"))
    return Path(out_dir)


# --------------------------------------------------------------------------- LoRA


def lora_targets(model, layers: int) -> list[str]:
    """Names of the Linear layers of the last ``layers`` blocks (``transformer.h.29.attn.c_attn``, ...)."""
    n_layer = ckpt.unwrap(model).config.n_layer
    if not 1 <= layers <= n_layer:
        raise ValueError(f"lora_layers={layers}; the model has {n_layer} blocks, so use 1 .. {n_layer}.")
    return [f"transformer.h.{i}.{name}" for i in range(n_layer - layers, n_layer) for name in BLOCK_LINEARS]


def apply_lora(model: GPT, r: int = 8, alpha: int = 16, dropout: float = 0.0,
               target_modules=LORA_TARGETS, trainable_tokens=None) -> GPT:
    """Freeze ``model`` and add LoRA adapters to its Linear layers, in place; returns the same GPT.

    LoRA (Hu et al., 2021) learns the *change* of a weight matrix W (out x in) as a
    product B A of two thin matrices, B (out x r) and A (r x in): r x (in + out)
    numbers instead of in x out. Each adapted layer computes W x + (alpha / r) B A x;
    B starts at zero, so the model is unchanged at step 0. Only A and B train.

    ``trainable_tokens``: token ids whose embedding rows train too (peft's
    ``trainable_token_indices``), e.g. the chat tokens. LoRA alone freezes the token
    embedding, and our GPT ties the output layer to it: the rows of ``<|end|>`` and the
    role tokens would stay as pretraining left them (a token it never saw, pushed to be
    unlikely everywhere), so the model could hardly learn to end its turn. With
    ``trainable_tokens`` those few rows train, shared by the input and the (tied) output
    layer; an untied output layer gets its own trainable rows.

    ``peft.inject_adapter_in_model`` replaces each matching ``nn.Linear`` by a LoRA layer
    wrapping it and freezes everything else; unlike ``get_peft_model`` it leaves no
    wrapper object around our GPT, so ``forward(idx, targets)``, ``generate``,
    ``training.train`` and the checkpoints work as before.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils.other import TrainableTokensWrapper

    if has_lora(model):
        raise ValueError("apply_lora: this model already has LoRA adapters; merge_lora(model) first.")
    gpt = ckpt.unwrap(model)
    tokens = sorted({int(t) for t in trainable_tokens}) if trainable_tokens is not None else []
    vocab = gpt.transformer.wte.weight.shape[0]
    if any(not 0 <= t < vocab for t in tokens):
        raise ValueError(f"apply_lora: trainable_tokens must be token ids below the vocabulary size {vocab}; "
                         f"got {tokens}. Resize the model to len(tokenizer) first (resize_vocabulary).")
    tied = gpt.lm_head.weight is gpt.transformer.wte.weight
    token_layers = ({"wte": tokens} if tied else {"wte": tokens, "lm_head": tokens}) if tokens else None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        bias="none", trainable_token_indices=token_layers)
    inject_adapter_in_model(config, model)
    if tokens and tied:  # peft ties the output layer only for transformers models: tie ours to the same rows
        gpt.lm_head = TrainableTokensWrapper(gpt.lm_head, "default", token_indices=tokens,
                                             tied_adapter=gpt.transformer.wte.token_adapter)
    return model


def _adapter_types():
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import TrainableTokensWrapper

    return LoraLayer, TrainableTokensWrapper


def has_lora(model) -> bool:
    """True when the model carries LoRA adapters or trainable token rows (``apply_lora``)."""
    return any(isinstance(m, _adapter_types()) for m in ckpt.unwrap(model).modules())


def trainable_parameters(model) -> tuple[int, int]:
    """(parameters that train, all parameters); a tied matrix counts once."""
    params = list(ckpt.unwrap(model).parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@torch.no_grad()
def merge_lora(model: GPT) -> GPT:
    """Fold every adapter into its weight (W <- W + alpha/r B A; trained token rows copied in); in place.

    The plain ``Linear`` and ``Embedding`` modules are put back: the result is an ordinary
    ``GPT`` with ordinary parameter names (it saves, loads and exports like any other),
    a tied output layer still tied, and the same logits as the adapted model.
    All parameters are trainable again, as in a fresh GPT.
    """
    lora_layer, token_wrapper = _adapter_types()
    gpt = ckpt.unwrap(model)
    targets = [(name, module) for name, module in gpt.named_modules() if isinstance(module, (lora_layer, token_wrapper))]
    for name, module in targets:
        if isinstance(module, token_wrapper):
            module.token_adapter.merge()  # the rows of the token ids <- their trained values
            base = module.token_adapter.get_base_layer()
        else:
            module.merge()  # base_layer.weight += scaling * B @ A
            base = module.get_base_layer()
        parent_name, _, child = name.rpartition(".")
        parent = gpt.get_submodule(parent_name) if parent_name else gpt
        setattr(parent, child, base)
    for p in gpt.parameters():
        p.requires_grad_(True)
    return gpt


def lora_weights(model) -> dict[str, torch.Tensor]:
    """The adapters' own tensors (every ``lora_A`` / ``lora_B`` weight) by name: what LoRA learned, nothing else."""
    return {name: p.detach().clone() for name, p in ckpt.unwrap(model).named_parameters() if ".lora_" in name}


def without_lora(model: GPT) -> GPT:
    """A copy of ``model`` with its adapters removed, *not* merged: the base model they were added to."""
    lora_layer, _ = _adapter_types()
    base = copy.deepcopy(ckpt.unwrap(model))
    for name, module in [(n, m) for n, m in base.named_modules() if isinstance(m, lora_layer)]:
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name) if parent_name else base, child, module.get_base_layer())
    return base


def load_lora(model: GPT, weights: dict[str, torch.Tensor], r: int, alpha: int, target_modules) -> GPT:
    """Add LoRA adapters (``apply_lora``) and load ``weights`` (``lora_weights``) into them, in place."""
    apply_lora(model, r=r, alpha=alpha, target_modules=target_modules)
    missing = sorted(set(lora_weights(model)) - set(weights))
    unexpected = sorted(set(weights) - set(lora_weights(model)))
    if missing or unexpected:
        raise ValueError(f"load_lora: the saved adapters do not fit these targets (missing {missing[:2]}, "
                         f"unexpected {unexpected[:2]}).")
    ckpt.unwrap(model).load_state_dict(weights, strict=False)
    return model


# --------------------------------------------------------------------------- evaluation


def pretraining_perplexity(model, cfg, max_tokens: int = 20_000) -> float:
    """Perplexity on (the first ``max_tokens`` of) the pretraining validation ids: forgetting, measured.

    Compare before and after fine-tuning: a rise means the model lost some of its
    plain-text language modelling while learning the chat format.
    """
    from utils import corpus
    from utils.token_files import read_token_file

    ids = np.asarray(read_token_file(corpus.ensure_corpus(cfg).tokens("validation"))[:max_tokens])
    return evaluation.perplexity(model, ids)


POSITIONS = ("first", "middle", "last")  # where in a conversation an evaluation prompt is cut


def prompt_at(messages, position: str) -> list[dict]:
    """The conversation up to and including its first, middle or last user turn that got a reply.

    The reply the model writes to it is then a greeting (first), a turn in the middle of a
    chat, or often a goodbye (last). A model trained only on some part of conversations
    does well only there; measuring all three shows it.
    """
    if position not in POSITIONS:
        raise ValueError(f"prompt_at: position={position!r}; use one of {POSITIONS}.")
    system, pairs = turn_pairs(validate_chat(messages))
    k = _pair_at(pairs, position)
    return system + [m for pair in pairs[:k] for m in pair] + [pairs[k][0]]


def _pair_at(pairs: list, position: str) -> int:
    return {"first": 0, "middle": len(pairs) // 2, "last": len(pairs) - 1}[position]


def evaluation_conversations(conversations, n: int, min_pairs: int = 3) -> list:
    """The first ``n`` conversations with at least ``min_pairs`` answered user turns (first, middle, last differ).

    Conversations that cannot be a chat example (``validate_chat`` refuses them) are passed over.
    """
    chosen = []
    for conversation in conversations:
        try:
            pairs = turn_pairs(validate_chat(conversation))[1]
        except ChatFormatError:
            continue
        if len(pairs) >= min_pairs:
            chosen.append(conversation)
            if len(chosen) == n:
                break
    if not chosen:
        raise ValueError(f"evaluation_conversations: no conversation has {min_pairs} user/assistant pairs.")
    return chosen


def format_adherence_by_position(model, tokenizer, conversations, max_new_tokens: int = 32) -> dict[str, float]:
    """Per position (first, middle, last user turn): the share of greedy replies that end with ``<|end|>``.

    The replies come from ``utils.replies.generate_replies``, the chat box's own path (same
    prompt cropping, generation loop and stop rule), within ``max_new_tokens``; every
    conversation's prompts at one position go through the model as one batch.
    """
    shares = {}
    for position in POSITIONS:
        replies = generate_replies(model, tokenizer, [prompt_at(c, position) for c in conversations], max_new_tokens)
        shares[position] = sum(r.ended for r in replies) / len(replies)
    return shares


def people_adherence(tokenizer, conversations, max_new_tokens: int = 32) -> dict[str, float]:
    """Per position: the share of the people's own replies that fit in ``max_new_tokens`` with their ``<|end|>``.

    The reference for ``format_adherence_by_position``: a model that wrote exactly like the
    people in the data would end its turn in time this often. A model can score higher by
    writing shorter replies than people do, so read both together.
    """
    shares = {}
    for position in POSITIONS:
        fits = []
        for conversation in conversations:
            pairs = turn_pairs(validate_chat(conversation))[1]
            reply = pairs[_pair_at(pairs, position)][1]["content"]  # what the person answered there
            fits.append(len(tokenizer.encode(reply, add_special_tokens=False)) + 1 <= max_new_tokens)
        shares[position] = sum(fits) / len(fits)
    return shares


def evaluate_chat(model, tokenizer, examples, conversations, cfg=None, max_new_tokens: int = 32) -> dict:
    """The row of the before/after table, on held-out data.

    - ``assistant_perplexity`` on ``examples`` (every window of the held-out conversations);
    - ``format_adherence``: the mean over first, middle and last-turn prompts of
      ``conversations`` (``format_adherence_by_position``), and each of them;
    - with ``cfg``: ``pretraining_perplexity`` (forgetting).
    """
    by_position = format_adherence_by_position(model, tokenizer, conversations, max_new_tokens)
    row = {
        "assistant_perplexity": evaluation.assistant_perplexity(model, examples, tokenizer.pad_token_id),
        "format_adherence": sum(by_position.values()) / len(by_position),
        **{f"format_adherence_{position}": share for position, share in by_position.items()},
    }
    if cfg is not None:
        row["pretraining_perplexity"] = pretraining_perplexity(model, cfg)
    return row


# --------------------------------------------------------------------------- export


def export_hf(model, tokenizer, out_dir: str | os.PathLike, max_new_tokens: int | None = None) -> Path:
    """Save a ``transformers`` model and the tokenizer (with the chat template) into ``out_dir``.

    The model is ``transformers``' own class for its layout (``GPT.to_hf``): ``GPT2LMHeadModel``
    for the GPT-2 block, ``LlamaForCausalLM`` for the Llama block.

    Afterwards, offline and without this course's code::

        AutoModelForCausalLM.from_pretrained(out_dir); AutoTokenizer.from_pretrained(out_dir)
        pipeline("text-generation", model=out_dir)([{"role": "user", "content": "Hi!"}])

    Generation stops at ``<|end|>`` (the end of an assistant turn) or ``<|endoftext|>``:
    both are the generation config's ``eos_token_id``. LoRA adapters are merged first
    (on a copy). ``max_new_tokens`` (default: half the context) is the generation default.
    """
    gpt = ckpt.unwrap(model)
    if has_lora(gpt):
        gpt = merge_lora(copy.deepcopy(gpt))
    ids = chat_token_ids(tokenizer)
    if gpt.config.vocab_size != len(tokenizer):
        raise ValueError(f"export_hf: the model has {gpt.config.vocab_size} token ids but the tokenizer "
                         f"{len(tokenizer)}; export the model with the tokenizer it was trained with.")
    stop = [ids[END]] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    hf_model = gpt.to_hf(bos_token_id=tokenizer.bos_token_id, eos_token_id=stop[0],
                         pad_token_id=tokenizer.pad_token_id)
    generation = hf_model.generation_config
    generation.eos_token_id = stop
    generation.bos_token_id = tokenizer.bos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    generation.max_new_tokens = max_new_tokens or max(1, gpt.config.block_size // 2)
    generation.max_length = None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.eval().save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
