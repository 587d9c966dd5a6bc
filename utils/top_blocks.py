"""Train only the last blocks of a GPT, on the hidden states of the frozen blocks below, computed once.

When only the last n blocks can change (LoRA adapters there, every other weight frozen,
no dropout), the blocks below turn the same tokens into the same hidden states at every
epoch. Backpropagation already stops at the first adapted block; the *forward* pass
through the frozen ones is wasted work after the first time. So we run it once per
training example (``block_inputs``) and train ``TopBlocks``: the last n blocks, the final
norm and the output layer, fed with those cached states. It also computes the output layer
(a 576 x 49,152 matrix for SmolLM2, a fifth of its compute per token) only at the
positions whose target is scored. Same losses, same gradients as the whole model
(``tests/test_identity.py`` checks it), a fraction of the work per step.

``TopBlocks`` holds the GPT's own modules, so training it trains the GPT in place; it
has the ``config`` and ``num_parameters`` that ``utils.training.train`` asks of a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.checkpoint import unwrap
from utils.model import GPT, rope_cos_sin

IGNORE_INDEX = -100


class _Reached(Exception):
    """Raised by the hook once the wanted block's input is known: the rest of the forward is not needed."""


@torch.no_grad()
def block_inputs(model: GPT, sequences: list[list[int]], first: int, batch_size: int = 16) -> list[torch.Tensor]:
    """The input of block ``first`` (after embeddings and blocks 0 .. first-1) for each sequence: (T, C) each.

    A forward pre-hook catches the block's input and stops the forward pass there, so the
    hidden states come from ``GPT.forward`` itself (embeddings, positions, blocks) and are
    returned on the CPU. Sequences of similar length go through together, padded on the
    right: the model is causal, so padding *after* a token never changes that token's state.
    """
    gpt = unwrap(model)
    device = next(gpt.parameters()).device
    caught = {}

    def catch(module, args):
        caught["x"] = args[0]
        raise _Reached

    handle = gpt.transformer.h[first].register_forward_pre_hook(catch)
    was_training = gpt.training
    gpt.eval()
    states: list[torch.Tensor | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(sequences[i]) for i in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)  # (b, T), 0 = padding
            for row, i in enumerate(rows):
                ids[row, :len(sequences[i])] = torch.tensor(sequences[i], device=device)
            try:
                gpt(ids)
            except _Reached:
                pass
            for row, i in enumerate(rows):
                states[i] = caught["x"][row, :len(sequences[i])].to("cpu")  # (T, C)
    finally:
        handle.remove()
        gpt.train(was_training)
    return states


class TopBlocks(nn.Module):
    """Blocks ``first`` .. n_layer-1 of a GPT, its final norm and output layer, run on cached block inputs."""

    def __init__(self, model: GPT, layers: int):
        super().__init__()
        gpt = unwrap(model)
        if not 1 <= layers <= gpt.config.n_layer:
            raise ValueError(f"TopBlocks: layers={layers}; the model has {gpt.config.n_layer} blocks.")
        self.config = gpt.config
        self.first = gpt.config.n_layer - layers
        self.blocks = nn.ModuleList(gpt.transformer.h[self.first:])  # the same modules, not copies
        self.ln_f = gpt.transformer.ln_f
        self.lm_head = gpt.lm_head

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None):
        """hidden (B, T, C): inputs of block ``first``; targets (B, T) shifted, -100 where not scored.

        Returns (logits, loss): logits (B, T, V) without targets; with targets only the
        scored positions' logits (N, V) and their mean cross-entropy.
        """
        B, T, _ = hidden.shape
        rope = None
        if self.config.position == "rope":
            positions = torch.arange(T, device=hidden.device)  # (T,)
            rope = rope_cos_sin(positions, self.config.head_size, self.config.rope_theta)  # 2 x (T, hs)
        x = hidden
        for block in self.blocks:
            x = block(x, None, rope)  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        if targets is None:
            return self.lm_head(x), None  # (B, T, V)
        scored = targets != IGNORE_INDEX  # (B, T)
        logits = self.lm_head(x[scored])  # (N, V): the output layer only where a target is scored
        return logits, F.cross_entropy(logits, targets[scored])
