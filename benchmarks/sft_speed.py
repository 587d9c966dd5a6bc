"""How fast is supervised fine-tuning, full and with LoRA, at the cpu profile's model size?

    python benchmarks/sft_speed.py [--steps 30] [--threads 2] [--batch-size 16] [--rank 8]

The model has the cpu profile's shape (``utils.pretrained.model_config``, the GPT that
04 pretrains; random weights: speed does not depend on what the model knows).
The examples are the cpu corpus's training conversations when notebook 02 has
built them (``data/processed/cpu``), else synthetic ones with the same kind of
lengths. Both runs go through ``utils.finetune.fine_tune`` (= ``training.train``)
with the same seed, hence the same batches.

Printed: ms per optimizer step (the loop's own timer: no evaluation, no
checkpoint), *real* tokens/s (the loop counts the non-pad tokens of the training
batches: ``tokens_seen``, ``tokens_per_second``), and the share of the batch x block
positions that were padding or unused.

LoRA (with the chat tokens' embedding rows trainable, as in 06) trains ~5% of the
parameters but is *not* much faster here: the forward
and backward passes still run through every frozen weight (the backward needs
the gradient with respect to the activations, layer by layer), and the adapters
add small matmuls of their own. What LoRA saves is optimizer state and gradient
memory (and the size of what you store per task), which matters for big models
on GPUs; on a model of a few million parameters on a CPU it is a wash.

Measured on the course's shared 2-core CPU machine (torch 2.13, --threads 2, 30 steps,
batch 16, cpu corpus; the machine was busy with other jobs, so read the ratio):

            trainable         of  ms/step  real tok/s  pad+unused
    full    1,334,016  1,334,016    131.3      10,335        34%
    lora       65,536  1,399,552    120.0      11,308        34%
    LoRA step time / full step time: 0.91x
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import config, finetune as ft  # noqa: E402
from utils.chat import IGNORE_INDEX, ChatExample  # noqa: E402
from utils.model import GPT  # noqa: E402
from utils.pretrained import model_config  # noqa: E402
from utils.training import TrainConfig  # noqa: E402


def real_examples(block_size: int):
    """(examples, pad_id, vocab, chat token ids) from the cpu corpus, or None when it has not been built."""
    from transformers import AutoTokenizer

    from utils import data
    from utils.chat import add_chat_tokens, chat_token_ids, encode_dataset
    from utils.corpus import CorpusFiles

    files = CorpusFiles(config.REPO_ROOT / "data" / "processed" / "cpu")
    if not files.complete():
        return None
    tokenizer = add_chat_tokens(AutoTokenizer.from_pretrained(str(files.tokenizer)))
    splits = data.load_saved_splits(files.conversations)
    examples = encode_dataset(tokenizer, list(splits["train"])[:2000], block_size, verbose=False)
    return examples, tokenizer.pad_token_id, len(tokenizer), list(chat_token_ids(tokenizer).values())


def synthetic_examples(block_size: int, vocab: int, n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        length = int(rng.integers(16, block_size + 1))
        ids = rng.integers(6, vocab, size=length).tolist()
        cut = length // 2  # the second half plays the assistant's reply
        labels = [IGNORE_INDEX] * cut + ids[cut:]
        examples.append(ChatExample(ids, labels))
    return examples, 1, vocab, [2, 3, 4, 5]  # the course tokenizer's chat token ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    profile = config.PROFILES["cpu"]
    found = real_examples(profile.block_size)
    source = "cpu corpus conversations"
    if found is None:
        found, source = synthetic_examples(profile.block_size, profile.tokenizer_vocab_size), "synthetic examples"
    examples, pad_id, vocab, chat_ids = found
    torch.manual_seed(0)
    base = GPT(model_config(profile, vocab))

    class Tok:  # fine_tune only needs the pad id and a length here
        pad_token_id = pad_id

        def __len__(self):
            return vocab

    cfg = TrainConfig(batch_size=args.batch_size, block_size=profile.block_size, max_iters=args.steps,
                      learning_rate=1e-3, warmup_iters=2, eval_interval=10 ** 9, eval_iters=1,
                      log_interval=args.steps, device="cpu", progress=False, verbose=False)
    print(f"{source}: {len(examples)} examples; model {base.num_parameters():,} parameters; "
          f"batch {args.batch_size}, {args.steps} steps, {args.threads} thread(s)")
    rows = []
    for name in ("full", "lora"):
        model = copy.deepcopy(base)
        if name == "lora":
            ft.apply_lora(model, r=args.rank, alpha=2 * args.rank, trainable_tokens=chat_ids)  # as in 06
        trainable, total = ft.trainable_parameters(model)
        metrics = ft.fine_tune(model, Tok(), examples, examples, cfg)
        ms = 1000 * metrics["train_seconds"] / metrics["iters"]
        padding = 1 - metrics["tokens_seen"] / (metrics["iters"] * args.batch_size * profile.block_size)
        rows.append((name, trainable, total, ms, metrics["tokens_per_second"], padding))
    print(f"{'':6} {'trainable':>10} {'of':>10} {'ms/step':>8} {'real tok/s':>11} {'pad+unused':>10}")
    for name, trainable, total, ms, tps, padding in rows:
        print(f"{name:6} {trainable:>10,} {total:>10,} {ms:>8.1f} {tps:>11,.0f} {padding:>10.0%}")
    print(f"LoRA step time / full step time: {rows[1][3] / rows[0][3]:.2f}x")


if __name__ == "__main__":
    main()
