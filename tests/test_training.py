"""The trainer of utils/training.py and the checkpoints of utils/checkpoint.py.

Tiny models (2 layers, 2 heads, 32 dims, block 16) on a tiny text: seconds in all.
"""

import json
import math

import numpy as np
import pytest
import torch

from utils import checkpoint as ckpt
from utils.model import GPT, GPTConfig
from utils.training import (
    TrainConfig,
    get_batch,
    learning_rate_at,
    make_optimizer,
    parameter_groups,
    train,
)

TEXT = "the quick brown fox jumps over the lazy dog. " * 120
CHARS = sorted(set(TEXT))
IDS = np.array([CHARS.index(c) for c in TEXT], dtype=np.uint16)
TRAIN_IDS, VAL_IDS = IDS[: int(len(IDS) * 0.9)], IDS[int(len(IDS) * 0.9) :]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**dict(vocab_size=len(CHARS), block_size=16, n_layer=2, n_head=2, n_embd=32), **overrides}))


def tiny_cfg(**overrides) -> TrainConfig:
    base = dict(batch_size=8, block_size=16, max_iters=20, learning_rate=3e-3, min_lr=3e-4, warmup_iters=4,
                eval_interval=10, eval_iters=2, log_interval=5, progress=False)
    return TrainConfig(**{**base, **overrides})


def decode(ids):
    return "".join(CHARS[i] for i in ids)


def test_get_batch_targets_are_inputs_shifted_by_one():
    ids = np.arange(1000, dtype=np.uint16)  # token i is the number i: the shift is easy to see
    x, y = get_batch(ids, batch_size=4, block_size=8, generator=np.random.default_rng(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])  # y[t] == x[t + 1]
    assert torch.equal(y, x + 1)


def test_get_batch_too_short_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size"):
        get_batch(np.arange(8), 2, 8, np.random.default_rng(0))


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100)
    warm = [learning_rate_at(s, cfg) for s in range(10)]
    assert np.allclose(np.diff(warm), warm[0])  # linear: equal steps
    assert warm[-1] < cfg.learning_rate
    assert learning_rate_at(10, cfg) == pytest.approx(cfg.learning_rate)  # the peak
    decay = [learning_rate_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # never goes up
    assert learning_rate_at(55, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # half way: the mean
    assert learning_rate_at(100, cfg) == learning_rate_at(500, cfg) == cfg.min_lr  # the floor
    fixed = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=50, lr_decay_iters=100)
    assert learning_rate_at(40, fixed) == learning_rate_at(40, cfg)  # lr_decay_iters, not max_iters


def test_weight_decay_only_on_matrices():
    model = tiny_model()
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    no_decay_names = [names[id(p)] for p in no_decay["params"]]
    assert no_decay_names and all(n.endswith(".bias") or ".ln_" in n or "ln_f" in n for n in no_decay_names)
    assert any("ln_1.weight" in n for n in no_decay_names)  # LayerNorm gains do not decay
    n_params = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n_params == model.num_parameters()  # the tied embedding counted once
    assert make_optimizer(model, tiny_cfg()).param_groups[1]["weight_decay"] == 0.0


def test_loss_goes_down_on_a_repeated_text(tmp_path):
    metrics = train(tiny_model(), TRAIN_IDS, VAL_IDS, tiny_cfg(max_iters=40, eval_interval=40), tmp_path, decode=decode)
    first, final = metrics["history"][0]["loss"], metrics["val_loss"]
    assert final < 0.6 * math.log(len(CHARS)) and final < first
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("train_loss", "val_loss", "tokens_per_second", "iters", "world_size", "history", "evals"):
        assert key in saved
    assert saved["iters"] == 40 and saved["world_size"] == 1 and saved["tokens_per_second"] > 0
    assert saved["samples"] and isinstance(saved["samples"][-1]["text"], str)


def test_resume_is_exact(tmp_path):
    """k steps + resume to 2k == 2k steps: the same weights and loss, bit for bit (dropout on, so RNGs matter)."""
    cfg = dict(max_iters=20, lr_decay_iters=20, grad_accum_steps=2)
    straight = tiny_model(dropout=0.1)
    full = train(straight, TRAIN_IDS, VAL_IDS, tiny_cfg(**cfg), tmp_path / "straight")

    first = tiny_model(dropout=0.1)
    train(first, TRAIN_IDS, VAL_IDS, tiny_cfg(**{**cfg, "max_iters": 10}), tmp_path / "stopped")
    resumed = tiny_model(seed=123, dropout=0.1)  # other initial weights: everything must come from the checkpoint
    rest = train(resumed, TRAIN_IDS, VAL_IDS, tiny_cfg(**cfg), tmp_path / "stopped", resume=True)

    assert rest["resumed_from"] == 10 and rest["iters"] == 20
    assert rest["val_loss"] == full["val_loss"] and rest["train_loss"] == full["train_loss"]
    assert [h["loss"] for h in rest["history"]] == [h["loss"] for h in full["history"]]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    from safetensors.torch import load_file

    saved_a, saved_b = (load_file(str(tmp_path / d / ckpt.MODEL_FILE)) for d in ("straight", "stopped"))
    assert saved_a.keys() == saved_b.keys() and all(torch.equal(saved_a[k], saved_b[k]) for k in saved_a)


def test_checkpoint_round_trip_is_atomic_and_ties_the_output_layer(tmp_path):
    model = tiny_model(seed=3)
    ckpt.save_model(model, tmp_path, tokenizer_name="char", vocab_size=len(CHARS), step=7)
    ckpt.save_training_state({"step": 7, "rng": [ckpt.rng_state(np.random.default_rng(1))]}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ckpt.MODEL_FILE, ckpt.CONFIG_FILE, ckpt.STATE_FILE])

    from safetensors import safe_open

    with safe_open(str(tmp_path / ckpt.MODEL_FILE), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # the tied matrix is stored once
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # tied again
    x = torch.randint(0, len(CHARS), (2, 16))
    assert torch.equal(model.eval()(x)[0], loaded(x)[0])
    state = ckpt.load_training_state(tmp_path)  # torch.load(weights_only=True) inside
    sampler = np.random.default_rng(99)
    ckpt.set_rng_state(state["rng"][0], sampler)
    assert sampler.integers(1 << 30) == np.random.default_rng(1).integers(1 << 30)


def test_checkpoint_of_another_vocabulary_is_refused(tmp_path):
    ckpt.save_model(tiny_model(), tmp_path, tokenizer_name="char", vocab_size=len(CHARS), step=0)

    class OtherTokenizer:
        def __len__(self):
            return 50257

    with pytest.raises(ValueError, match=rf"{len(CHARS)} tokens.*50,257"):
        ckpt.load_checkpoint(tmp_path, tokenizer=OtherTokenizer())


def test_a_batch_fn_with_ignored_targets_trains(tmp_path):
    """Fine-tuning style batches: targets -100 where there is nothing to learn (prompt, padding)."""

    def batch_fn(split, generator):
        x, y = get_batch(TRAIN_IDS if split == "train" else VAL_IDS, 4, 16, generator)
        y[:, :8] = -100  # only the second half of each window counts
        return x, y

    metrics = train(tiny_model(), cfg=tiny_cfg(max_iters=10), out_dir=None, batch_fn=batch_fn)
    assert math.isfinite(metrics["val_loss"]) and metrics["iters"] == 10


def test_callback_sees_the_losses():
    seen = []
    train(tiny_model(), TRAIN_IDS, VAL_IDS, tiny_cfg(max_iters=10), None, callback=lambda s, m: seen.append((s, m)))
    assert [s for s, _ in seen][-1] == 10 and "val_loss" in seen[-1][1] and seen[0][1]["history"]
