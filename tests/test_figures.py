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
