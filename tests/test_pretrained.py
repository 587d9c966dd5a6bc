"""The profile's pretrained checkpoint: one shape and budget for 03-06, rebuilt when 04 has not run."""

import dataclasses
import json

import pytest
import torch

from utils import config, pretrained
from utils.model_sizes import count_parameters


def test_configs_follow_the_profile():
    profile = config.PROFILES["cpu"]
    model = pretrained.model_config(profile, vocab_size=4096)
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size) == (
        profile.n_layer, profile.n_head, profile.n_embd, profile.block_size)
    assert model.layout == profile.layout
    train = pretrained.train_config(profile, seed=3)
    assert train.max_iters == profile.max_iters and train.min_lr == profile.learning_rate / 10


def test_model_config_takes_changes_and_builds_either_block_at_about_the_same_size():
    profile = config.PROFILES["ci"]
    gpt2 = pretrained.model_config(profile, 300, layout="gpt2")
    llama = pretrained.model_config(profile, 300, layout="llama")
    assert (gpt2.layout, llama.layout) == ("gpt2", "llama")
    # about the same size (no position table, no biases, 8C/3 rounded); the study gives both the same FLOPs anyway
    assert abs(count_parameters(llama) - count_parameters(gpt2)) < 0.1 * count_parameters(gpt2)
    other = pretrained.model_config(profile, 300, n_layer=3, n_head=4, n_embd=96)
    assert (other.n_layer, other.n_head, other.n_embd, other.block_size) == (3, 4, 96, profile.block_size)
    assert pretrained.swiglu_hidden(768) == 2048  # 8C/3, as Llama-style models use
    with pytest.raises(ValueError, match="layout='bert'"):
        pretrained.model_config(profile, 300, layout="bert")


@pytest.mark.parametrize("name", config.PROFILE_NAMES)
def test_every_profile_studies_its_own_shape_among_buildable_candidates(name):
    profile = config.PROFILES[name]
    assert (profile.n_layer, profile.n_head, profile.n_embd) in profile.study_shapes
    assert 0 < profile.study_iters < profile.max_iters and profile.study_eval_tokens > profile.block_size
    for n_layer, n_head, n_embd in profile.study_shapes:  # GPTConfig refuses heads that do not divide the width
        for layout in ("gpt2", "llama"):
            pretrained.model_config(profile, 300, n_layer=n_layer, n_head=n_head, n_embd=n_embd, layout=layout)


def test_ensure_pretrained_trains_once_then_loads(tmp_path, capsys):
    profile = dataclasses.replace(config.PROFILES["ci"], max_conversations=60, tokenizer_vocab_size=300,
                                  max_iters=4, eval_interval=2)
    cfg = config.CourseConfig(profile=profile, device="cpu", online=False, seed=1,
                              paths=config.Paths(tmp_path, "ci").make())
    model, tokenizer = pretrained.ensure_pretrained(cfg)
    assert "training it now" in capsys.readouterr().out
    assert model.config.vocab_size == len(tokenizer) == 300
    again, _ = pretrained.ensure_pretrained(cfg)
    assert "training" not in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_only_a_long_pretraining_run_is_rebuilt_short():
    """ci and cpu rebuild 04's checkpoint in full; gpu (GPT-2 124M) in a short run within the budget."""
    for name in ("ci", "cpu"):
        profile = config.PROFILES[name]
        assert pretrained.rebuild_iters(profile, profile.tokenizer_vocab_size) is None
    gpu = config.PROFILES["gpu"]
    iters = pretrained.rebuild_iters(gpu, gpu.tokenizer_vocab_size)
    assert 1 <= iters < gpu.max_iters / 5
    assert pretrained.run_flops(gpu, gpu.tokenizer_vocab_size, iters) <= pretrained.REBUILD_FLOPS
    assert pretrained.run_flops(gpu, gpu.tokenizer_vocab_size, iters + 1) > pretrained.REBUILD_FLOPS
    short = pretrained.short_train_config(gpu, seed=1, iters=iters)
    full = pretrained.train_config(gpu, seed=1)
    assert (short.batch_size, short.grad_accum_steps, short.learning_rate) == (
        full.batch_size, full.grad_accum_steps, full.learning_rate)
    assert 1 <= short.warmup_iters < iters and short.eval_interval == short.max_iters == iters


def test_a_long_run_is_rebuilt_short_with_a_message_and_04_replaces_it(tmp_path, capsys, monkeypatch):
    profile = dataclasses.replace(config.PROFILES["ci"], max_conversations=60, tokenizer_vocab_size=300,
                                  max_iters=8, eval_interval=4, eval_iters=2)
    cfg = config.CourseConfig(profile=profile, device="cpu", online=False, seed=1,
                              paths=config.Paths(tmp_path, "ci").make())
    budget = pretrained.run_flops(profile, 300, iters=3)  # this run "costs" more than 3 steps
    monkeypatch.setattr(pretrained, "REBUILD_FLOPS", budget)
    model, tokenizer = pretrained.ensure_pretrained(cfg)
    out = capsys.readouterr().out
    assert "a short run of the same model trains instead: 3 steps" in out and "Run notebook 04" in out
    metrics = json.loads((pretrained.checkpoint_dir(cfg) / "metrics.json").read_text())
    assert metrics["iters"] == 3 and metrics["short_rebuild"] == {"iters": 3, "full_iters": 8}
    pretrained.ensure_pretrained(cfg)  # loads it, and says again what it is
    assert "holds a short run (3 of 8 steps)" in capsys.readouterr().out
    pretrained.pretrain(cfg)  # what 04 does: the full run replaces it, and the note goes
    pretrained.ensure_pretrained(cfg)
    assert "short run" not in capsys.readouterr().out
