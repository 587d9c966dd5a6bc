"""The pictures of notebook 03, drawn here so that the notebook shows the idea, not matplotlib plumbing.

- ``show_attention``: a heat map of attention weights (row = the token that looks).
- ``attention_diagram``: queries, keys, values, the causal mask and the weighted sum, as one picture.
- ``block_diagram``: a GPT-2 block and a Llama block side by side (what changed in today's LLMs).
- ``rope_diagram``: rotary position embeddings: channel pairs turning with the position, and a
  query-key dot product that depends only on the distance. Computed with ``utils.model``'s RoPE.
- ``sizes_and_memory``: parameters computed vs published, and training memory part by part.

Every function returns the matplotlib Figure (or Axes); the notebook shows it with ``plt.show()``.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from utils.model import apply_rope, rope_cos_sin

QUERY, KEY, VALUE = "#93c5fd", "#fdba74", "#86efac"  # one colour per role, in every picture
MASKED = "#e5e7eb"
NORM, ATTENTION, FEED_FORWARD = "#fde68a", "#bfdbfe", "#bbf7d0"


def show_attention(weights, tokens, title, ax=None):
    """A heat map of attention weights (T, T): row = the token that looks (query), column = the token looked at."""
    ax = ax or plt.subplots(figsize=(4.2, 3.6))[1]
    image = ax.imshow(weights.detach().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(tokens)), tokens, rotation=45)
    ax.set_yticks(range(len(tokens)), tokens)
    ax.set_xlabel("looks at (key)")
    ax.set_ylabel("token (query)")
    ax.set_title(title)
    return image


def _box(ax, x, y, w, h, text, colour, fontsize=9, **kwargs):
    ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=colour, edgecolor="black", linewidth=0.8, **kwargs))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, **style):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "linewidth": 1.0, **style})


def attention_diagram(tokens=("the", "cat", "sat", "on"), query: int = 2, weights=(0.2, 0.5, 0.3)):
    """Self-attention in three panels, for one short sentence.

    1. every token's vector x_i emits a query q_i, a key k_i and a value v_i (three learned maps);
    2. the score of query i for key j is q_i . k_j / sqrt(d); with the causal mask, keys after i
       (the future) get -inf: the grey cells, exactly the T(T-1)/2 cells above the diagonal;
    3. a softmax turns row ``query`` into weights (made up here: ``weights``, one per visible
       key, summing to 1) and the output is the weighted sum of the values.
    """
    T = len(tokens)
    if len(weights) != query + 1 or abs(sum(weights) - 1) > 1e-6:
        raise ValueError(f"attention_diagram: give {query + 1} weights (keys 0..{query}) that sum to 1.")
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 4.3), gridspec_kw=dict(width_ratios=(1.15, 1, 1.1)))
    for ax in (left, middle, right):
        ax.set_aspect("equal")
        ax.axis("off")

    # 1. q, k, v from every token
    left.set_xlim(-0.2, 1.6 * T)
    left.set_ylim(-0.9, 4.7)
    for i, token in enumerate(tokens):
        x0 = 1.6 * i
        left.text(x0 + 0.6, -0.55, token, ha="center", fontsize=10, weight="bold")
        _box(left, x0 + 0.1, 0, 1.0, 0.7, f"$x_{i}$", "white")
        for row, (name, colour) in enumerate((("q", QUERY), ("k", KEY), ("v", VALUE))):
            _box(left, x0 + 0.1, 1.7 + 1.05 * row, 1.0, 0.75, f"${name}_{i}$", colour)
        _arrow(left, (x0 + 0.6, 0.7), (x0 + 0.6, 1.7))
    left.text(0.75, 1.2, "$W_q, W_k, W_v$", ha="left", va="center", fontsize=8)
    left.set_title("1. each token's vector emits a query,\na key and a value (three learned maps)", fontsize=10)

    # 2. the score grid with the causal mask
    middle.set_xlim(-1.6, T + 0.2)
    middle.set_ylim(-0.2, T + 1.0)
    for i in range(T):  # row i (drawn from the top) = query i
        y = T - 1 - i
        middle.text(-0.1, y + 0.5, f"$q_{i}$ {tokens[i]}", ha="right", va="center", fontsize=9)
        for j in range(T):
            if j <= i:
                _box(middle, j, y, 1, 1, f"$q_{i}{{\\cdot}}k_{j}$", QUERY if i == query else "white", fontsize=8)
            else:
                _box(middle, j, y, 1, 1, r"$-\infty$", MASKED, fontsize=9)
    for j in range(T):
        middle.text(j + 0.5, T + 0.1, f"$k_{j}$\n{tokens[j]}", ha="center", va="bottom", fontsize=9)
    middle.set_title("2. scores $q_i \\cdot k_j / \\sqrt{d}$; keys after the query\n(the future) are masked: $-\\infty$",
                     fontsize=10)

    # 3. softmax of one row, then the weighted sum of the values
    right.set_xlim(-0.3, T * 1.1 + 0.3)
    right.set_ylim(-1.0, 4.0)
    for j in range(T):
        w = weights[j] if j <= query else 0.0
        right.add_patch(plt.Rectangle((1.1 * j, 0.6), 0.8, 3.0 * w, facecolor=QUERY if j <= query else MASKED,
                                      edgecolor="black", linewidth=0.8))
        right.text(1.1 * j + 0.4, 0.6 + 3.0 * w + 0.1, f"{w:.1f}" if j <= query else "masked", ha="center",
                   va="bottom", fontsize=9)
        right.text(1.1 * j + 0.4, 0.3, tokens[j], ha="center", va="center", fontsize=9)
    right.plot([-0.2, 1.1 * T], [0.6, 0.6], color="black", linewidth=0.8)
    terms = " + ".join(f"{weights[j]:.1f}$\\,v_{j}$" for j in range(query + 1))
    right.text(1.1 * T / 2, -0.45, f"output of '{tokens[query]}' = {terms}", ha="center", va="center", fontsize=10,
               bbox=dict(boxstyle="round", facecolor=VALUE, edgecolor="black", linewidth=0.8))
    right.set_title(f"3. softmax of row '{tokens[query]}': weights that sum\nto 1, then a weighted sum of the values",
                    fontsize=10)
    fig.tight_layout()
    return fig


BLOCKS = {  # layout: (title, norm, attention, feed-forward)
    "gpt2": ("GPT-2 block (pre-LN)", "LayerNorm", "causal multi-head\nself-attention",
             "MLP: C -> 4C,\nGELU, 4C -> C"),
    "llama": ("Llama block (SmolLM2, Llama, Mistral ...)", "RMSNorm", "grouped-query attention,\nRoPE on q and k",
              "SwiGLU: silu(gate) * up,\nH -> C"),
}


def draw_block(ax, layout: str = "gpt2"):
    """One pre-norm transformer block as boxes and arrows: the residual stream runs up the left."""
    if layout not in BLOCKS:
        raise ValueError(f"draw_block: layout={layout!r}; use one of {tuple(BLOCKS)}.")
    title, norm, attention, feed_forward = BLOCKS[layout]
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.6, 13.2)
    ax.axis("off")
    for text, y, h, colour in ((f"{norm} 1", 2.4, 1.0, NORM), (attention, 4.0, 1.5, ATTENTION),
                               (f"{norm} 2", 7.2, 1.0, NORM), (feed_forward, 8.8, 1.5, FEED_FORWARD)):
        _box(ax, 4.2, y, 5.2, h, text, colour)
    _arrow(ax, (2, 0.3), (2, 12.4), linewidth=1.2)  # the residual stream
    for y0, y1, y_plus in ((2.9, 5.5, 6.3), (7.7, 10.3, 11.1)):  # branch out, through the boxes, add back
        _arrow(ax, (2, y0), (4.2, y0))
        _arrow(ax, (6.8, y1), (2.25, y_plus), connectionstyle="angle,angleA=90,angleB=0")
        ax.text(2, y_plus, "+", ha="center", va="center", fontsize=14, bbox=dict(boxstyle="circle", facecolor="white"))
    _arrow(ax, (6.8, 3.4), (6.8, 4.0))
    _arrow(ax, (6.8, 8.2), (6.8, 8.8))
    ax.text(2, 0, "x  (B, T, C)", ha="center", va="top")
    ax.text(2, 12.6, "x  (B, T, C), to the next block", ha="center", va="bottom")
    ax.text(0.2, 6.5, "residual\nstream", rotation=90, va="center", fontsize=9, color="grey")
    ax.set_title(f"{title}, repeated n_layer times", fontsize=10)
    return ax


def block_diagram(layouts=("gpt2",)):
    """One panel per layout ("gpt2", "llama"), side by side."""
    fig, axes = plt.subplots(1, len(layouts), figsize=(5.2 * len(layouts), 6), squeeze=False)
    for ax, layout in zip(axes[0], layouts):
        draw_block(ax, layout)
    fig.tight_layout()
    return fig


def rope_dot_products(q: torch.Tensor, k: torch.Tensor, n_positions: int, theta: float) -> torch.Tensor:
    """(P, P) matrix of rope(q at m) . rope(k at n) for one query and one key vector (hs,) at every pair m, n."""
    positions = torch.arange(n_positions, device=q.device)  # (P,)
    cos, sin = rope_cos_sin(positions, q.numel(), theta)  # 2 x (P, hs)
    q_rot = apply_rope(q.expand(n_positions, -1), cos, sin)  # (P, hs): the same query at every position
    k_rot = apply_rope(k.expand(n_positions, -1), cos, sin)  # (P, hs)
    return q_rot @ k_rot.T  # (P, P)


def rope_diagram(head_size: int = 16, theta: float = 10000.0, pairs=(0, 1, 3, 7), n_positions: int = 24, seed: int = 0):
    """RoPE in three panels, computed with ``utils.model.rope_cos_sin`` / ``apply_rope``.

    1. one channel pair of a query (a 2-D arrow) at positions 0..5, for the first two of ``pairs``;
    2. the first coordinate of each pair's arrow against the position: pair i turns by
       ``theta ** (-2i / head_size)`` radians per token, fast pairs first, slow ones last;
    3. q_m . k_n for one random query and key placed at every m, n: constant along each
       diagonal, so it depends only on the distance m - n.
    Returns (figure, the (P, P) dot-product matrix drawn in panel 3).
    """
    half = head_size // 2
    if any(not 0 <= p < half for p in pairs):
        raise ValueError(f"rope_diagram: pairs must lie in 0..{half - 1} for head_size={head_size}.")
    positions = torch.arange(n_positions)  # (P,)
    cos, _ = rope_cos_sin(positions, head_size, theta)  # (P, hs): pair i is channels i and i + hs/2
    fig, (plane, waves, dots) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw=dict(width_ratios=(1, 1.3, 1.1)))

    # 1. a pair as an arrow in its plane, turning with the position (the slower pair drawn shorter)
    for pair, colour, radius in ((pairs[0], QUERY, 1.0), (pairs[1], KEY, 0.6)):
        speed = theta ** (-2 * pair / head_size)  # radians per position
        for m in range(6):
            angle = m * speed
            plane.annotate("", xy=(radius * math.cos(angle), radius * math.sin(angle)), xytext=(0, 0),
                           arrowprops=dict(arrowstyle="->", color=colour, linewidth=1.5, alpha=0.35 + 0.13 * m))
            plane.text((radius + 0.14) * math.cos(angle), (radius + 0.14) * math.sin(angle), f"{m}",
                       ha="center", va="center", fontsize=8)
        plane.plot([], [], color=colour, label=f"pair {pair}: {speed:.3g} rad per token")
    plane.set_xlim(-1.3, 1.3)
    plane.set_ylim(-1.3, 1.3)
    plane.set_aspect("equal")
    plane.axhline(0, color="grey", linewidth=0.5)
    plane.axvline(0, color="grey", linewidth=0.5)
    plane.legend(loc="upper center", bbox_to_anchor=(0.5, -0.04), fontsize=8)
    plane.set_xticks([])
    plane.set_yticks([])
    plane.set_title("1. a channel pair of q at positions\nm = 0..5: turned by m times its speed", fontsize=10)

    # 2. every pair is a wave of its own frequency
    for pair in pairs:
        waves.plot(positions, cos[:, pair], marker=".", label=f"pair {pair}")
    waves.set_xlabel("position m")
    waves.set_ylabel("cos(angle of pair i)")
    waves.legend(fontsize=8, loc="lower left")
    waves.set_title(f"2. pair i turns by θ^(-2i/d) per token\n(d = {head_size}, θ = {theta:g})", fontsize=10)

    # 3. the dot product depends only on m - n
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(head_size, generator=generator), torch.randn(head_size, generator=generator)
    matrix = rope_dot_products(q, k, n_positions, theta)  # (P, P)
    image = dots.imshow(matrix.numpy(), cmap="RdBu_r")
    dots.set_xlabel("key position n")
    dots.set_ylabel("query position m")
    dots.set_title("3. q_m · k_n after RoPE: constant\nalong each diagonal m - n", fontsize=10)
    fig.colorbar(image, ax=dots, shrink=0.8)
    fig.tight_layout()
    return fig, matrix


def sizes_and_memory(sizes, memory, gpu_gb: float = 16.0, gpu_name: str = "Colab T4",
                     memory_title: str = "training memory, batch 8 at full context"):
    """Two panels of notebook 03's size tables.

    Left: parameters per preset, computed (bars) and published (black ticks), log scale;
    ``sizes`` is a DataFrame indexed by preset with "parameters" and "published" columns.
    Right: training memory in GB stacked by part, one bar per (model, precision) row of
    ``memory`` (its columns: the parts, and "total", which is not drawn), and the GPU's size.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw=dict(width_ratios=(1, 1.3)))
    names = list(sizes.index)
    left.barh(names, sizes["parameters"], label="computed")
    left.scatter(sizes["published"], names, color="black", marker="|", s=200, label="published", zorder=3)
    left.set_xscale("log")
    left.invert_yaxis()
    left.set_xlabel("parameters (log scale)")
    left.set_title(f"{len(names)} models, {sizes['parameters'].min() / 1e6:,.0f} M to "
                   f"{sizes['parameters'].max() / 1e9:,.0f} B parameters")
    left.legend()

    stack = memory.drop(columns="total")
    labels = [" ".join(map(str, row)) if isinstance(row, tuple) else str(row) for row in stack.index]
    bottom = [0.0] * len(stack)
    for part in stack.columns:
        right.bar(labels, stack[part], bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, stack[part])]
    right.axhline(gpu_gb, color="red", linestyle="--", label=f"{gpu_name}: {gpu_gb:g} GB")
    right.set_ylabel("GB")
    right.set_title(memory_title)
    right.tick_params(axis="x", labelrotation=60, labelsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig
