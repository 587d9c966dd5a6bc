"""The trainer of utils/training.py and the checkpoints of utils/checkpoint.py.

Tiny models (2 layers, 2 heads, 32 dims, block 16) on a tiny text: seconds in all.
"""

import json
import math

import numpy as np
import pytest
import torch

from utils import checkpoint as ckpt
from utils import training
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


# ---------------------------------------------------------------- accumulation, token counts, mixed precision


def gradients_at_each_step(monkeypatch) -> list[list[torch.Tensor]]:
    """Record the gradients the optimizer steps with (after accumulation, unscaling and clipping)."""
    seen = []
    make = training.make_optimizer

    def make_and_watch(model, cfg, device_type="cpu"):
        optimizer = make(model, cfg, device_type)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
            [p.grad.detach().clone() for group in opt.param_groups for p in group["params"]]))
        return optimizer

    monkeypatch.setattr(training, "make_optimizer", make_and_watch)
    return seen


def fixed_batches(micro_batches, val_batch):
    """A batch_fn that hands out the given micro-batches in turn (and one fixed validation batch)."""
    calls = iter(range(10**6))

    def batch_fn(split, generator):
        return micro_batches[next(calls) % len(micro_batches)] if split == "train" else val_batch

    return batch_fn


def one_step_gradients(monkeypatch, micro_batches, val_batch, **cfg):
    seen = gradients_at_each_step(monkeypatch)
    config = tiny_cfg(max_iters=1, grad_accum_steps=len(micro_batches), grad_clip=0.0, device="cpu", **cfg)
    train(tiny_model(dropout=0.0), cfg=config, batch_fn=fixed_batches(micro_batches, val_batch))
    return torch.cat([g.flatten() for g in seen[0]])


def relative_difference(a, b) -> float:
    return float((a - b).norm() / a.norm())


def test_accumulation_weighs_every_scored_token_equally(monkeypatch):
    """One batch == the same rows as two micro-batches, even when they score 4 and 32 tokens."""
    x, y = get_batch(TRAIN_IDS, 4, 16, np.random.default_rng(0))
    y[:2, :14] = -100  # rows 0-1: 2 scored targets each (a short reply); rows 2-3: all 16
    whole = one_step_gradients(monkeypatch, [(x, y)], (x, y))
    split = one_step_gradients(monkeypatch, [(x[:2], y[:2]), (x[2:], y[2:])], (x, y))
    # The rule this replaces (each micro-batch's mean / 2) weighs a short-reply token 8x a
    # long-reply one: the gradients differed by 140% here.
    assert relative_difference(whole, split) < 1e-5


def test_a_micro_batch_with_nothing_scored_adds_nothing(monkeypatch):
    x, y = get_batch(TRAIN_IDS, 4, 16, np.random.default_rng(1))
    blank = y[:2].clone().fill_(-100)  # e.g. conversations whose replies were all cut away
    alone = one_step_gradients(monkeypatch, [(x[2:], y[2:])], (x, y))
    with_blank = one_step_gradients(monkeypatch, [(x[:2], blank), (x[2:], y[2:])], (x, y))
    assert torch.isfinite(with_blank).all() and relative_difference(alone, with_blank) < 1e-5


def test_tokens_per_second_counts_real_tokens_not_padding():
    windows = train(tiny_model(), TRAIN_IDS, VAL_IDS, tiny_cfg(max_iters=4, grad_accum_steps=2), None)
    assert windows["tokens_seen"] == 4 * 2 * 8 * 16  # pretraining: every position is a real token

    x, y = get_batch(TRAIN_IDS, 4, 16, np.random.default_rng(0))
    mask = torch.ones_like(x)
    mask[:, 10:] = 0  # right padding: 10 real tokens a row
    y[:, 9:] = -100
    padded = train(tiny_model(), cfg=tiny_cfg(max_iters=4, batch_size=4), batch_fn=fixed_batches([(x, y, mask)], (x, y, mask)))
    assert padded["tokens_seen"] == 4 * 4 * 10
    assert padded["tokens_per_second"] == pytest.approx(padded["tokens_seen"] / padded["train_seconds"])


def test_bf16_autocast_trains_on_the_cpu(monkeypatch):
    """The bf16 path a GPU takes, on the CPU: gradients near the fp32 ones (but not equal: autocast ran)."""
    x, y = get_batch(TRAIN_IDS, 8, 16, np.random.default_rng(0))
    fp32 = one_step_gradients(monkeypatch, [(x, y)], (x, y), dtype="float32")
    bf16 = one_step_gradients(monkeypatch, [(x, y)], (x, y), dtype="bfloat16")
    assert 0 < relative_difference(fp32, bf16) < 0.05
    model = tiny_model()
    metrics = train(model, TRAIN_IDS, VAL_IDS, tiny_cfg(max_iters=20, dtype="bfloat16", device="cpu"), None)
    assert metrics["dtype"] == "bfloat16" and metrics["val_loss"] < metrics["history"][0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32


def test_fp16_grad_scaler_clips_the_unscaled_gradients(monkeypatch):
    """fp16 + GradScaler (the T4 path) on the CPU: clipping sees the true gradients, not the scaled ones."""
    seen = gradients_at_each_step(monkeypatch)
    cfg = tiny_cfg(max_iters=3, dtype="float16", device="cpu", grad_clip=0.05)
    train(tiny_model(), TRAIN_IDS, VAL_IDS, cfg, None)
    assert seen, "every step was skipped (inf gradients)"
    for grads in seen:
        norm = torch.cat([g.flatten() for g in grads]).norm()
        # clipped to grad_clip: the scaler divided by its scale (65,536) before the clip. In the
        # other order the norm would be grad_clip / 65,536.
        assert norm == pytest.approx(cfg.grad_clip, rel=1e-3)


def test_fp16_resume_restores_the_grad_scaler(tmp_path):
    base = dict(max_iters=12, lr_decay_iters=12, dtype="float16", device="cpu", eval_interval=6)
    straight = tiny_model()
    train(straight, TRAIN_IDS, VAL_IDS, tiny_cfg(**base), tmp_path / "straight")
    train(tiny_model(), TRAIN_IDS, VAL_IDS, tiny_cfg(**{**base, "max_iters": 6}), tmp_path / "stopped")
    state = ckpt.load_training_state(tmp_path / "stopped")
    assert state["scaler"]["scale"] > 1  # the loss scale is part of the run's state
    resumed = tiny_model(seed=5)
    train(resumed, TRAIN_IDS, VAL_IDS, tiny_cfg(**base), tmp_path / "stopped", resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from utils.training import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", local_rank=0) == "cuda:0"
    with pytest.raises(RuntimeError, match=r"cuda:1 but this machine has 1 GPU.*--nproc_per_node.*--device cpu"):
        resolve_device("auto", local_rank=1)
    assert resolve_device("cpu", local_rank=1) == "cpu"
