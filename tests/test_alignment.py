"""DPO from scratch (utils/alignment.py) and the pluggable loss of utils/training.py it trains through.

Tiny models (2 layers, 32 dims) and a few tokens: seconds. The TRL comparison imports
``trl`` (about half a minute on a busy machine) and is skipped where it is not installed.
"""

import math

import numpy as np
import pytest
import torch

from utils import training
from utils.model import GPT, GPTConfig
from utils.training import TrainConfig, get_batch, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TEXT = "the quick brown fox jumps over the lazy dog. " * 60
CHARS = sorted(set(TEXT))
IDS = np.array([CHARS.index(c) for c in TEXT], dtype=np.uint16)


def tiny_model(seed=0, vocab_size=len(CHARS), **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**dict(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32),
                            **overrides}))


def tiny_cfg(**overrides) -> TrainConfig:
    base = dict(batch_size=4, block_size=16, max_iters=6, learning_rate=3e-3, min_lr=3e-4, warmup_iters=2,
                eval_interval=3, eval_iters=2, log_interval=1, progress=False, verbose=False, checkpoint=False)
    return TrainConfig(**{**base, **overrides})


# ---------------------------------------------------------------- the training loop's pluggable loss


def test_token_loss_as_loss_fn_trains_exactly_like_the_default():
    """The pluggable path with the default loss gives the same weights and losses, bit for bit."""
    plain, plugged = tiny_model(), tiny_model()
    a = train(plain, IDS, IDS, tiny_cfg())
    b = train(plugged, IDS, IDS, tiny_cfg(), loss_fn=training.token_loss)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["val_loss"] == b["val_loss"]
    for (name, p), q in zip(plain.state_dict().items(), plugged.state_dict().values()):
        assert torch.equal(p, q), name


def test_a_custom_loss_fn_is_what_trains_and_what_is_logged():
    """A loss that only pushes one logit up: the loop logs it and the model follows it, not cross-entropy."""
    calls = []

    def push_token_zero(model, batch):
        x, _ = batch
        logits, _ = model(x)
        calls.append(model.training)
        return -logits[..., 0].mean(), torch.tensor(x.size(0))

    model = tiny_model()
    metrics = train(model, IDS, IDS, tiny_cfg(max_iters=8, eval_interval=8), loss_fn=push_token_zero)
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0] - 0.5  # the logit of token 0 went up (cross-entropy would not do that)
    assert math.isfinite(metrics["val_loss"]) and metrics["val_loss"] < losses[0]
    assert True in calls and False in calls  # training steps and eval-mode validation both used it


def test_a_loss_fn_weighs_equal_micro_batches_like_one_batch(monkeypatch):
    """Two micro-batches of 4 with a loss_fn give the gradient of one batch of 8 (to float rounding)."""
    x, y = get_batch(IDS, 8, 16, np.random.default_rng(0))
    grads = []

    def run(batches, accum):
        calls = iter(range(10**6))
        model = tiny_model()
        make = training.make_optimizer

        def watched(m, cfg, device_type="cpu"):
            optimizer = make(m, cfg, device_type)
            optimizer.register_step_pre_hook(lambda opt, *_: grads.append(
                [p.grad.clone() for g in opt.param_groups for p in g["params"]]))
            return optimizer

        monkeypatch.setattr(training, "make_optimizer", watched)
        train(model, cfg=tiny_cfg(max_iters=1, grad_accum_steps=accum, grad_clip=0.0, eval_interval=100),
              batch_fn=lambda split, g: batches[next(calls) % len(batches)], loss_fn=training.token_loss)
        return grads[-1]

    one = run([(x, y)], 1)
    two = run([(x[:4], y[:4]), (x[4:], y[4:])], 2)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
