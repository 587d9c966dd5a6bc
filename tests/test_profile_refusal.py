"""COURSE_PROFILE=gpu without CUDA stops at once with a message naming the profile to use."""

import pytest

from utils import config


def test_gpu_profile_without_cuda_is_refused_with_the_profile_to_use(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "gpu")
    monkeypatch.delenv(config.ALLOW_GPU_PROFILE_ON_CPU, raising=False)
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    with pytest.raises(config.ProfileError, match="COURSE_PROFILE=cpu") as refused:
        config.profile_name()
    assert config.ALLOW_GPU_PROFILE_ON_CPU in str(refused.value)  # and how to override it
    with pytest.raises(config.ProfileError):
        config.load(verbose=False)  # what every notebook calls first


def test_gpu_profile_runs_with_cuda_or_an_explicit_override(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "gpu")
    monkeypatch.setattr(config, "cuda_available", lambda: True)
    assert config.profile_name() == "gpu"
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    monkeypatch.setenv(config.ALLOW_GPU_PROFILE_ON_CPU, "1")
    assert config.profile_name() == "gpu"


def test_other_profiles_never_need_cuda(monkeypatch):
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    for name in ("ci", "cpu"):
        monkeypatch.setenv("COURSE_PROFILE", name)
        assert config.profile_name() == name
