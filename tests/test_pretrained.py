"""The profile's pretrained checkpoint: one shape and budget for 03-06, rebuilt when 04 has not run."""

import dataclasses

import torch

from utils import config, pretrained


def test_configs_follow_the_profile():
    profile = config.PROFILES["cpu"]
    model = pretrained.model_config(profile, vocab_size=4096)
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size) == (4, 4, 128, 128)
    train = pretrained.train_config(profile, seed=3)
    assert train.max_iters == profile.max_iters and train.min_lr == profile.learning_rate / 10


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
