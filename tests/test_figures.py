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
