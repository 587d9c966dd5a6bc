"""The profile switch, device choice, offline detection and seeding."""

import os

import pytest
import torch

from utils import config


def test_profile_defaults_to_cpu_without_cuda(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    assert config.profile_name() == "cpu"
    monkeypatch.setattr(config, "cuda_available", lambda: True)
    assert config.profile_name() == "gpu"


def test_unknown_profile_names_the_choices(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "laptop")
    with pytest.raises(ValueError, match="ci, cpu, gpu"):
        config.profile_name()


SIZES = ("max_conversations", "spelling_sample", "bpe_train_chars", "bpe_vocab_size", "tokenizer_vocab_size",
         "n_layer", "n_embd", "block_size", "max_iters", "eval_iters", "sft_max_iters")


def test_ci_is_the_smallest_profile_in_every_size():
    """ci must finish each notebook in seconds: no size of it may exceed the cpu profile's (None = all data)."""
    ci, cpu, gpu = (config.PROFILES[n] for n in config.PROFILE_NAMES)
    for field in SIZES:
        small, large = (getattr(p, field) for p in (ci, cpu))
        assert small is not None and (large is None or small <= large), field
    assert ci.tokenizer_vocab_size < cpu.tokenizer_vocab_size <= gpu.tokenizer_vocab_size


@pytest.mark.parametrize("name", config.PROFILE_NAMES)
def test_every_profile_describes_a_model_and_budgets_that_work(name):
    from utils.finetune import sft_config
    from utils.pretrained import model_config, train_config

    profile = config.PROFILES[name]
    model = model_config(profile, profile.tokenizer_vocab_size)  # GPTConfig checks that the heads divide the width
    assert model.n_embd % model.n_head == 0
    assert 256 < profile.bpe_vocab_size and 256 < profile.tokenizer_vocab_size  # byte-level: room for merges
    for budget in (train_config(profile, seed=0), sft_config(profile)):
        assert budget.block_size <= model.block_size
        assert 0 < budget.warmup_iters < budget.max_iters and 0 < budget.eval_interval <= budget.max_iters


def test_hf_offline_wins_without_touching_the_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("is_online must not open a socket when HF_HUB_OFFLINE=1")

    monkeypatch.setattr(config.socket, "create_connection", no_network)
    assert config.is_online() is False


def test_paths_are_per_profile_and_git_ignored(tmp_path):
    paths = config.Paths(tmp_path, "ci").make()
    assert paths.processed == tmp_path / "data" / "processed" / "ci"
    assert paths.processed.is_dir() and paths.build.is_dir()
    ignored = (config.REPO_ROOT / ".gitignore").read_text()
    for folder in ("/build/", "/data/processed/", "/data/raw/", "/checkpoints/", "/data/nltk_data/"):
        assert folder in ignored


def test_seed_everything_replays_the_same_numbers():
    config.seed_everything(7)
    first = torch.rand(4)
    config.seed_everything(7)
    assert torch.equal(first, torch.rand(4))


def test_load_reports_profile_and_device_and_makes_the_folders(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path)  # the folders go to a temporary tree, not the repository
    cfg = config.load()
    assert cfg.profile.name == "ci" and cfg.device in ("cpu", "cuda", "mps")
    assert "profile=ci" in capsys.readouterr().out
    assert cfg.paths.root == tmp_path and cfg.paths.processed.is_dir() and cfg.paths.checkpoints.is_dir()


def test_use_threads_applies_the_profile(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    try:
        config.use_threads(config.PROFILES["ci"])
        assert torch.get_num_threads() == config.PROFILES["ci"].torch_threads == 1
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
        config.use_threads(config.PROFILES["cpu"])  # None: leaves torch's count alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_training_budgets_come_from_the_profile():
    from utils.finetune import sft_config
    from utils.pretrained import train_config

    for profile in config.PROFILES.values():
        pre, sft = train_config(profile, seed=0), sft_config(profile)
        assert (pre.eval_iters, pre.progress) == (profile.eval_iters, profile.progress)
        assert (sft.max_iters, sft.batch_size, sft.eval_iters) == (
            profile.sft_max_iters, profile.sft_batch_size, profile.sft_eval_iters)
        assert sft.verbose == sft.progress == profile.progress
