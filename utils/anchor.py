"""Fine-tune without forgetting so much: a KL anchor to the original model on the everyday replies.

Cross-entropy on a reply rewards the reply's own tokens and says nothing about the rest of
the model's next-token distribution at those positions: everything else it predicted is
free to drift, and a small model's weakly held facts drift with it ("the capital of
Australia is Sydney"). The anchor adds, on the *everyday* conversations only, the KL
divergence from the original model's next-token distribution to the fine-tuned model's,

    loss = (sum of cross-entropy over every scored token
            + weight * sum over the everyday scored tokens of KL(original || model)) / scored tokens,

so there the whole distribution stays near the original, not only the reply's token. The
identity conversations have no anchor: there the model must change. The original's
log-probabilities are computed once, before the first step (``reference_log_probs``):
LoRA's B matrices start at zero, so a freshly adapted model *is* the original. This is
"learning without forgetting" (Li and Hoiem, 2016); 07's DPO keeps a model near its
reference for the same reason.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils.chat_spans import IGNORE_INDEX
from utils.checkpoint import unwrap


@torch.no_grad()
def reference_log_probs(model, examples: list[tuple], rows, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """``{row: (n_scored, V)}``: the model's log-probabilities at the scored positions of each example in ``rows``.

    ``examples`` are ``(input_ids, labels)`` pairs; position t is scored when ``labels[t + 1]``
    is not -100 (the shift of ``ChatBatches``). The tensors stay on the model's device.
    Examples go through ``batch_size`` at a time, padded on the right (causal: padding after
    a position does not change it).
    """
    gpt = unwrap(model)
    device = next(gpt.parameters()).device
    was_training = gpt.training
    gpt.eval()
    reference = {}
    rows = sorted(rows, key=lambda row: len(examples[row][0]))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(examples[row][0]) for row in chunk) - 1
        ids = torch.zeros((len(chunk), width), dtype=torch.long, device=device)  # (b, T)
        for i, row in enumerate(chunk):
            ids[i, :len(examples[row][0]) - 1] = torch.tensor(examples[row][0][:-1], device=device)
        logits, _ = gpt(ids)  # (b, T, V)
        for i, row in enumerate(chunk):
            labels = examples[row][1]
            scored = torch.tensor(labels[1:], device=device) != IGNORE_INDEX  # (T_row,)
            reference[row] = F.log_softmax(logits[i, :len(labels) - 1][scored].float(), dim=-1)  # (n_scored, V)
    gpt.train(was_training)
    return reference


class AnchoredLoss:
    """``batch_fn`` and ``loss_fn`` for ``utils.training.train``: cross-entropy plus ``weight`` x KL on anchored rows.

    ``batch_fn`` draws from ``batches`` (a ``ChatBatches``) and remembers which examples it
    drew; ``loss_fn`` scores that batch, so the loop must call them in turn, one
    micro-batch per step (``grad_accum_steps=1``, what ``utils.identity`` uses). Works with
    a GPT (logits (B, T, V)) and with ``TopBlocks`` (logits only where scored, (N, V)).
    Validation batches get plain cross-entropy: the validation loss stays comparable.
    """

    def __init__(self, batches, reference: dict[int, torch.Tensor], weight: float):
        self.batches, self.reference, self.weight = batches, reference, weight
        self.drawn = ("train", [])

    def batch_fn(self, split: str, generator: np.random.Generator):
        rows = self.batches.draw(split, generator)
        self.drawn = (split, rows)
        return self.batches.collate(split, rows)

    def loss_fn(self, model, batch):
        x, y = batch
        logits, _ = model(x, y)
        scored = y != IGNORE_INDEX  # (B, T)
        if logits.dim() == 3:
            logits = logits[scored]  # (N, V), row by row as TopBlocks gives them
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (N, V)
        n_scored = scored.sum()
        loss = -log_probs.gather(1, y[scored][:, None]).sum()
        split, rows = self.drawn
        if split == "train" and self.weight > 0:
            counts = scored.sum(dim=1).tolist()  # scored positions of each row
            starts = np.cumsum([0] + counts[:-1])
            for start, count, row in zip(starts, counts, rows):
                if row in self.reference:
                    original = self.reference[row]  # (count, V)
                    mine = log_probs[start:start + count]  # (count, V)
                    loss = loss + self.weight * (original.exp() * (original - mine)).sum()
        return loss / n_scored.clamp(min=1), n_scored
