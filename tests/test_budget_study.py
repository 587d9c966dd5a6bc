"""The compute-budget study of 04: every candidate gets the same FLOPs, and the arithmetic that picks a size."""

import math

import numpy as np
import pytest

from utils import budget_study, training
from utils.model import GPTConfig
from utils.model_sizes import flops_per_token


def tiny(n_layer, n_embd, **fields):
    return GPTConfig(vocab_size=40, block_size=16, n_layer=n_layer, n_head=2, n_embd=n_embd, **fields)


def test_a_bigger_model_gets_fewer_tokens_for_the_same_flops():
    small, large = tiny(1, 16), tiny(2, 32)
    flops = 1e9
    assert budget_study.tokens_for_budget(small, flops) > budget_study.tokens_for_budget(large, flops)
    for config in (small, large):
        tokens = budget_study.tokens_for_budget(config, flops)
        assert tokens * flops_per_token(config) <= flops < (tokens + 1) * flops_per_token(config)


def test_iso_flop_study_spends_the_same_compute_on_every_candidate(one_thread):
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 40, size=50)
    ids = np.tile(pattern, 100)  # a repeating text: learnable in a few steps
    template = training.TrainConfig(batch_size=4, block_size=16, learning_rate=1e-2, min_lr=1e-3, device="cpu",
                                    dtype="float32")
    candidates = {"small": tiny(1, 16), "large": tiny(2, 32), "llama": GPTConfig.llama(
        vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16, mlp_hidden=48)}
    per_step = template.batch_size * template.block_size
    flops = flops_per_token(candidates["large"]) * per_step * 20  # the large model: 20 steps
    seen = []
    rows = budget_study.iso_flop_study(candidates, ids[:4000], ids[4000:4400], flops, template, eval_bytes=1000,
                                       on_row=seen.append)
    assert [row["name"] for row in rows] == list(candidates) and seen == rows
    assert rows[0]["steps"] > rows[1]["steps"] == 20
    for row in rows:  # the same FLOPs, up to rounding to whole steps
        assert abs(row["flops"] - flops) <= flops_per_token(candidates[row["name"]]) * per_step / 2 + 1
        assert row["val_loss"] < math.log(40) - 0.5  # it learned something of the pattern
        assert row["bits_per_byte"] == pytest.approx(row["val_loss"] * 399 / math.log(2) / 1000)
    assert rows[2]["layout"] == "llama" and rows[0]["layout"] == "gpt2"
    assert budget_study.best_row(rows)["val_loss"] == min(row["val_loss"] for row in rows)


def test_a_candidate_shorter_than_the_training_windows_is_refused():
    template = training.TrainConfig(batch_size=2, block_size=32)
    with pytest.raises(ValueError, match="block_size 16"):
        budget_study.iso_flop_study({"short": tiny(1, 16)}, np.zeros(100, dtype=np.int64),
                                    np.zeros(100, dtype=np.int64), 1e9, template)


def test_size_for_budget_inverts_the_cost():
    flops, ratio, fixed = 3e13, 20.0, 8e5
    n = budget_study.size_for_budget(flops, ratio, fixed)
    assert (6 * n + fixed) * ratio * n == pytest.approx(flops)
    assert budget_study.size_for_budget(4 * flops, ratio) == pytest.approx(2 * budget_study.size_for_budget(flops, ratio))
    with pytest.raises(ValueError):
        budget_study.size_for_budget(0, ratio)


def test_loss_valley_finds_the_bottom_of_a_parabola_in_log_size():
    sizes = [1e5, 3e5, 1e6, 3e6]
    rows = [{"parameters": n, "val_loss": 4.0 + 0.3 * (math.log(n) - math.log(5e5)) ** 2} for n in sizes]
    bottom, loss = budget_study.loss_valley(rows)
    assert bottom == pytest.approx(5e5, rel=1e-6) and loss == pytest.approx(4.0)
    falling = [{"parameters": n, "val_loss": 5.0 - 0.1 * math.log(n)} for n in sizes]
    assert budget_study.loss_valley(falling) is None  # no valley: the bigger the better at this budget
    assert budget_study.loss_valley(rows[:2]) is None


def test_workers_and_learning_rates_give_the_rows_of_a_run_alone(one_thread):
    rng = np.random.default_rng(1)
    ids = np.tile(rng.integers(0, 40, size=30), 60)
    template = training.TrainConfig(batch_size=2, block_size=16, learning_rate=1e-2, min_lr=1e-3, device="cpu",
                                    dtype="float32")
    candidates = {"a": tiny(1, 16), "b": tiny(1, 32)}
    flops = flops_per_token(candidates["b"]) * 32 * 6
    rates = {"a": 3e-2}
    alone = budget_study.iso_flop_study(candidates, ids[:1500], ids[1500:1700], flops, template, learning_rates=rates)
    seen = []
    side_by_side = budget_study.iso_flop_study(candidates, ids[:1500], ids[1500:1700], flops, template,
                                               learning_rates=rates, workers=2, on_row=seen.append)
    assert [row["name"] for row in side_by_side] == ["a", "b"] and seen == side_by_side
    assert [row["learning_rate"] for row in side_by_side] == [3e-2, 1e-2]
    for one, other in zip(alone, side_by_side):
        assert one["val_loss"] == pytest.approx(other["val_loss"], abs=1e-4)
    assert budget_study.default_workers("cuda", 5) == 1 and budget_study.default_workers("cpu", 1) == 1


def test_finding_says_whether_the_valley_lies_inside_the_sizes_tried():
    def row(name, n, loss):
        return {"name": name, "parameters": n, "val_loss": loss, "tokens_per_parameter": 1e6 / n}

    inside = [row("a", 1e4, 4.5), row("b", 3e4, 4.0), row("c", 1e5, 4.2)]
    text = budget_study.finding(inside, 1e12, valley=(3.5e4, 4.0))
    assert "lowest validation loss is b's (4.000" in text and "33.3 tokens per parameter" in text
    assert "a +0.500, c +0.200" in text and "inside the sizes tried" in text and "about 35,000 parameters" in text
    edge = budget_study.finding([row("a", 1e4, 3.9), *inside[1:]], 1e12)
    assert "the smallest size tried" in edge and "try smaller shapes" in edge
