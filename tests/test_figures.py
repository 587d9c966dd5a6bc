"""The pictures of notebook 03 draw what they say (utils.figures), headless."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from utils import figures  # noqa: E402


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_attention_diagram_masks_exactly_the_future():
    tokens = ("the", "cat", "sat", "on", "mat")
    fig = figures.attention_diagram(tokens, query=2, weights=(0.2, 0.5, 0.3))
    assert texts(fig).count(r"$-\infty$") == len(tokens) * (len(tokens) - 1) // 2  # cells above the diagonal
    assert any("0.2$\\,v_0$ + 0.5$\\,v_1$ + 0.3$\\,v_2$" in t for t in texts(fig))
    plt.close(fig)
    with pytest.raises(ValueError, match="sum to 1"):
        figures.attention_diagram(tokens, query=1, weights=(0.5, 0.6))


def test_block_diagram_labels_each_layout():
    fig = figures.block_diagram(["gpt2", "llama"])
    labels = texts(fig)
    assert "LayerNorm 1" in labels and "RMSNorm 1" in labels
    assert any("SwiGLU" in t for t in labels) and any("GELU" in t for t in labels)
    plt.close(fig)
    with pytest.raises(ValueError, match="layout"):
        figures.block_diagram(["bert"])


def test_rope_dot_products_depend_only_on_the_distance():
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    dots = figures.rope_dot_products(q, k, n_positions=12, theta=10000.0)  # (P, P)
    for offset in (-5, 0, 3):
        diagonal = dots.diagonal(offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4)
    assert not torch.allclose(dots.diagonal(0)[0], dots.diagonal(1)[0])  # different distances differ


def test_rope_diagram_returns_the_matrix_it_draws():
    fig, matrix = figures.rope_diagram(head_size=8, pairs=(0, 1, 3), n_positions=10)
    assert matrix.shape == (10, 10) and len(fig.axes) == 4  # three panels and a colour bar
    plt.close(fig)
    with pytest.raises(ValueError, match="pairs"):
        figures.rope_diagram(head_size=8, pairs=(0, 4))


def test_sizes_and_memory_stacks_every_part_of_every_row():
    import pandas as pd

    sizes = pd.DataFrame({"parameters": [117e6, 175e9], "published": [117e6, 175e9]}, index=["gpt1", "gpt3-175b"])
    memory = pd.DataFrame({"weights": [0.5, 0.5], "activations": [3.9, 2.3], "total": [4.4, 2.8]},
                          index=pd.MultiIndex.from_tuples([("gpt1", "fp32"), ("gpt1", "mixed")]))
    fig = figures.sizes_and_memory(sizes, memory, gpu_gb=16)
    left, right = fig.axes
    assert left.get_title() == "2 models, 117 M to 175 B parameters"
    assert len(right.patches) == 2 * 2  # two parts (the total is not drawn) for each of two rows
    tops = sorted(p.get_y() + p.get_height() for p in right.patches)
    assert tops[-2:] == pytest.approx([2.8, 4.4])  # each stack reaches its row's total
    plt.close(fig)


# ---- the pictures of 01, 02, 04 and 05: each returns a figure that shows what its caption says ----

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from utils import data_figures, evaluation_figures, preprocessing_figures, training_figures  # noqa: E402


def conversation(n_turns, id_="c"):
    roles = ["user", "assistant"]
    return {"id": id_, "messages": [{"role": roles[t % 2], "content": "hi there"} for t in range(n_turns)]}


def test_data_figures_return_figures():
    lines = [{"sender": "a", "text": "hi"}, {"sender": "b", "text": "hello"}, {"sender": "b", "text": "how are you"}]
    fig = data_figures.record_to_turns(lines, first_sender="a")
    assert any(t.startswith("assistant: hello ⏎ how are you") for t in texts(fig))  # two lines, one turn
    splits = {"train": [conversation(3, "a"), conversation(1, "b")], "validation": [conversation(2, "c")],
              "test": [conversation(4, "d")]}
    for fig in (data_figures.sources_diagram(), data_figures.turns_per_conversation([1, 1, 3, 20]),
                data_figures.words_per_turn([1, 2, 3, 40]), data_figures.turns_per_role({"user": 5, "assistant": 3}, 2),
                data_figures.split_diagram(splits)):
        assert isinstance(fig, Figure)
        plt.close(fig)
    plt.close("all")


def test_preprocessing_figures_return_figures():
    table = pd.DataFrame({"step": ["fix_unicode", "too_few_turns", "near_duplicates"],
                          "kind": ["edit", "filter", "dedup"], "messages_changed": [3, 0, 0],
                          "conversations_dropped": [0, 5, 1]})
    fig = preprocessing_figures.cleaning_pipeline(table, conversations_in=10)
    assert "4 left" in texts(fig) and "5 conversations dropped" in texts(fig)  # 10 - 5 - 1: the running count
    plt.close(fig)
    comparison = pd.DataFrame({"vocabulary": [512, 50257], "bytes per token": [2.2, 4.1], "share used": [0.7, 0.3]},
                              index=["ours", "GPT-2"])
    for fig in (preprocessing_figures.lowercasing_bytes_per_token({"as typed": 2.2, "lowercased": 2.3}),
                preprocessing_figures.minhash_bands(9, 13, 0.8, similarities=[0.97]),
                preprocessing_figures.word_frequencies({"a": 5, "b": 1, "c": 1}),
                preprocessing_figures.tokenizers_compared(comparison)):
        assert isinstance(fig, Figure)
        plt.close(fig)


def test_training_figures_return_figures():
    fig = training_figures.shift_diagram(["he", "llo", " wor", "ld"])
    labels = texts(fig)
    assert labels.count("llo") == 2 and "he" in labels and "ld" in labels  # llo: an input and a target
    plt.close(fig)
    metrics = {"history": [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}], "evals": [{"step": 2, "val_loss": 4.2}]}
    rows = [{"name": f"{n}", "parameters": n, "val_loss": 4 + (np.log(n) - np.log(1e5)) ** 2 / 10,
             "tokens_per_parameter": 1e6 / n} for n in (3e4, 1e5, 3e5)]
    fig = training_figures.iso_flop_profile(rows, 1e12, valley=(1e5, 4.0), chosen="300000.0")
    assert "30000.0\n33 tok/param" in texts(fig) and "300000.0\n3.3 tok/param" in texts(fig)  # never "0 tok/param"
    plt.close(fig)
    for fig in (training_figures.accumulation_diagram(4),
                training_figures.learning_rate_schedule(np.arange(10), np.linspace(1e-3, 1e-4, 10), 2),
                training_figures.loss_curves(metrics)):
        assert isinstance(fig, Figure)
        plt.close(fig)


def test_evaluation_figures_return_figures():
    fig = evaluation_figures.sliding_windows([(0, 8, 8), (4, 12, 4)], n_tokens=13)
    assert "window 2: reads 4..11, scores 9..12" in texts(fig)
    plt.close(fig)
    probabilities = np.array([0.5, 0.3, 0.1, 0.05, 0.05])
    differences, weights = np.array([1.0, -2.0, 3.0]), np.array([1.0, 1.0, 2.0])
    resampled = evaluation_figures.paired_bootstrap(differences, weights, n_resamples=50, seed=0)
    from utils.evaluation import bootstrap_interval

    low, high = bootstrap_interval(differences, weights, n_resamples=50, seed=0)
    assert np.percentile(resampled, 2.5) == pytest.approx(low) and np.percentile(resampled, 97.5) == pytest.approx(high)
    for fig in (evaluation_figures.sampling_distributions(probabilities, top_k=2, top_p=0.85, show=5),
                evaluation_figures.paired_difference(resampled, 0.5, (low, high)),
                evaluation_figures.baselines({"uniform": 1024.0, "ours": 30.0}, "ours", "t")):
        assert isinstance(fig, Figure)
        plt.close(fig)
