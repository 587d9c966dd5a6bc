"""How good is a language model? Perplexity, bits per byte, baselines and sampling diagnostics.

Notebook 05 builds each idea in front of the learner, then checks itself against
these functions; 06 uses them for the before/after table of fine-tuning.

- **Perplexity** is ``exp(mean next-token cross-entropy)``: the number of tokens the
  model is, on average, "choosing between". A model that spreads its probability
  evenly over a vocabulary of V tokens has perplexity exactly V; a perfect model has 1.
- It is measured on **held-out** token ids (validation or test), never on the
  training ids: a model that memorised its training text scores well there and
  tells us nothing about text it has not seen.
- Perplexity depends on the tokenizer (a character model has a small vocabulary and
  many easy steps; GPT-2's BPE has 50,257 ids and fewer, harder steps). **Bits per
  byte** divides the total information by the bytes of the text instead, so models
  with different tokenizers can be compared on the same text.
- A number means little on its own: the **baselines** (uniform, unigram, bigram) on
  the same split say how much the transformer adds over counting.
- A figure from a sample needs an interval: ``documents_nats`` scores documents one by
  one and ``bootstrap_interval`` resamples them (not their tokens, which are not
  independent).

Every model function here works with our ``utils.model.GPT`` (``forward(idx)``
returns ``(logits, loss)``) and with a ``transformers`` causal LM (returns an output
with ``.logits``), so GPT-2's perplexity can be computed on the same ids.

A chat model (06) is judged on its replies: **assistant perplexity** scores only the
assistant tokens of held-out conversations (format adherence, the share of replies the
model closes with ``<|end|>``, is ``utils.finetune.format_adherence_by_position``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from utils.chat import IGNORE_INDEX, ChatCollator, shifted_targets

__all__ = [
    "perplexity",
    "token_losses",
    "bits_per_byte",
    "evaluate_text",
    "uniform_perplexity",
    "unigram_perplexity",
    "bigram_perplexity",
    "unigram_token_losses",
    "bigram_token_losses",
    "documents_nats",
    "bootstrap_interval",
    "Rate",
    "rate",
    "paired_difference",
    "checkpoint_perplexities",
    "distinct_n",
    "repetition_rate",
    "assistant_losses",
    "assistant_perplexity",
    "model_logits",
    "model_block_size",
    "model_device",
    "sliding_windows",
]


# ---- helpers: reading ids and asking a model for logits (also used by safety and multiple_choice) ----


def _as_id_array(token_ids, name: str = "token_ids") -> np.ndarray:
    """Any 1-D sequence of ids (list, numpy array, np.memmap, torch tensor) as int64 numpy."""
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.detach().cpu().numpy()
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        raise ValueError(f"{name}: expected a flat (1-D) sequence of token ids, got shape {ids.shape}.")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: token ids must be integers, got dtype {ids.dtype}.")
    return ids.astype(np.int64, copy=False)


def _config_value(model, *names: str):
    """The first of ``names`` found on ``model.config`` (ours: block_size; GPT-2: n_positions)."""
    config = getattr(model, "config", None)
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def _model_vocab_size(model) -> int | None:
    return _config_value(model, "vocab_size")


def model_block_size(model) -> int | None:
    return _config_value(model, "block_size", "n_positions", "max_position_embeddings")


def model_device(model) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def model_logits(model, idx: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits from our GPT (returns a tuple) or a transformers model (returns ``.logits``).

    Both take the ids as their first positional argument (``idx`` / ``input_ids``).
    """
    output = model(idx)
    if isinstance(output, torch.Tensor):  # a model that returns the logits alone
        return output
    return output.logits if hasattr(output, "logits") else output[0]


def _check_ids(ids: np.ndarray, model) -> None:
    if ids.size < 2:
        raise ValueError(
            f"token_ids has {ids.size} token(s): perplexity needs at least 2 "
            "(the first token has no context, so there is nothing to predict from it)."
        )
    vocab_size = _model_vocab_size(model)
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise ValueError(f"token_ids contain the negative id {low}; token ids start at 0.")
    if vocab_size is not None and high >= vocab_size:
        raise ValueError(
            f"token_ids contain id {high} but the model's vocabulary has only {vocab_size} ids "
            f"(0..{vocab_size - 1}): the ids come from another tokenizer than the model's "
            "(e.g. a checkpoint trained with a different vocabulary). Encode the text with the "
            "model's own tokenizer."
        )


def sliding_windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """The sliding windows over a text of ``n_tokens`` ids: (begin, end, n_scored) each.

    A window feeds ids[begin:end] (at most block_size of them) and predicts
    ids[begin+1:end+1]; only its last ``n_scored`` predictions are new, the others
    were scored by an earlier window. So every one of the n_tokens - 1 predictable
    tokens is scored exactly once, and with stride < block_size each of them
    (after the first window) has at least block_size - stride tokens of context.
    This is the scheme of the Hugging Face perplexity guide.
    """
    last = n_tokens - 1  # inputs are ids[0 : n_tokens - 1]; targets ids[1 : n_tokens]
    windows, scored_up_to, begin = [], 0, 0
    while True:
        end = min(begin + block_size, last)
        windows.append((begin, end, end - scored_up_to))
        scored_up_to = end
        if end == last:
            return windows
        begin += stride


# ---- perplexity of a model ----


@torch.no_grad()
def token_losses(
    model,
    token_ids,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Cross-entropy (nats) of every predictable token: ``losses[i] = -ln p(ids[i+1] | context)``.

    Returns a float64 array of ``len(token_ids) - 1`` values (the first token has no
    context). Texts longer than ``block_size`` (default: the model's) are cut into
    sliding windows that move by ``stride`` tokens (default: block_size, i.e. side by
    side). A smaller stride gives the tokens at the start of each window more context,
    at about block_size / stride times the work; whether that lowers the figure depends
    on how much the model uses its context. Each token is still scored exactly once.
    Sort the result to see which tokens are hard. The model runs in eval mode (no
    dropout) and is put back as it was.
    ``batch_size`` windows run at once: their logits take batch x block x vocab x 4
    bytes (1.6 GB for GPT-2 at 8 x 1024 x 50,257), so lower it when memory is short.
    """
    ids = _as_id_array(token_ids)
    _check_ids(ids, model)
    model_block = model_block_size(model)
    block_size = block_size or model_block
    if block_size is None:
        raise ValueError("token_losses: the model's config has no block_size; pass block_size=...")
    if model_block is not None and block_size > model_block:
        raise ValueError(f"block_size={block_size} is longer than the model's context ({model_block} tokens).")
    stride = block_size if stride is None else stride
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride={stride}; use 1 <= stride <= block_size ({block_size}).")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use at least 1.")

    device = model_device(model)
    ids_t = torch.from_numpy(ids)
    losses = np.empty(ids.size - 1, dtype=np.float64)
    windows = sliding_windows(ids.size, block_size, stride)
    # Windows of the same length are batched together (all but the last are full).
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for window in windows:
        groups.setdefault(window[1] - window[0], []).append(window)

    was_training = model.training
    model.eval()
    try:
        for length, group in groups.items():
            for i in range(0, len(group), batch_size):
                chunk = group[i : i + batch_size]
                rows = torch.stack([ids_t[b : e + 1] for b, e, _ in chunk]).to(device)  # (B, length + 1)
                logits = model_logits(model, rows[:, :-1])  # (B, length, V)
                nll = F.cross_entropy(
                    logits.float().transpose(1, 2), rows[:, 1:], reduction="none"
                )  # (B, length): -ln p(target) at every position
                nll = nll.cpu().double().numpy()
                for row, (_, end, n_scored) in zip(nll, chunk):
                    losses[end - n_scored : end] = row[length - n_scored :]  # only the new predictions
    finally:
        model.train(was_training)
    return losses


def perplexity(
    model,
    token_ids,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> float:
    """exp(mean next-token cross-entropy) of ``model`` over all predictable tokens of ``token_ids``.

    Why exp of the cross-entropy: the loss is the average of -ln p(next token); its
    exponential is the inverse of the geometric mean of those probabilities, "the
    model is as unsure as if it picked uniformly among this many tokens". Use
    held-out ids: the training ids reward memorisation. See ``token_losses`` for
    ``block_size`` and ``stride`` (the sliding window over long texts).
    """
    return float(math.exp(token_losses(model, token_ids, block_size, stride, batch_size).mean()))


def bits_per_byte(mean_loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """Total information of a text in bits, divided by its size in UTF-8 bytes.

    total nats = mean loss x tokens scored; / ln 2 turns nats into bits; / bytes makes
    it independent of the tokenizer: a tokenizer with longer tokens has a higher
    loss per token but fewer tokens, and bits per byte sees through that. A model that
    gives all 256 byte values the same probability spends 8 bits on every byte; one
    uniform over a tokenizer's V tokens spends log2(V) bits per token, so log2(V) /
    (bytes per token) per byte: less than 8 when tokens are longer than a byte.
    """
    if n_bytes <= 0:
        raise ValueError(f"n_bytes={n_bytes}; the text must have at least one byte.")
    if n_tokens < 0:
        raise ValueError(f"n_tokens={n_tokens}; it counts the scored tokens, so it cannot be negative.")
    return float(mean_loss_nats) * n_tokens / math.log(2) / n_bytes


def evaluate_text(
    model,
    token_ids,
    n_bytes: int,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> dict:
    """Loss (nats/token), perplexity and bits per byte of ``model`` on one text's ids.

    ``n_bytes``: the length of the text in UTF-8 bytes (``len(text.encode("utf-8"))``).
    The first token is not scored (no context): on a real split that is negligible.
    """
    losses = token_losses(model, token_ids, block_size, stride, batch_size)
    loss = float(losses.mean())
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": bits_per_byte(loss, losses.size, n_bytes),
        "n_tokens": int(losses.size),
        "n_bytes": int(n_bytes),
    }


# ---- baselines: what counting alone achieves on the same split ----
# They score the same tokens as the model: eval_ids[1:] (every token that has a
# previous token), so their perplexities sit in one table with the model's.


def uniform_perplexity(vocab_size: int) -> float:
    """A model that gives every token probability 1/V: its perplexity is exactly V.

    The ceiling any trained model must beat; a fresh random GPT starts near it.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size}; a vocabulary has at least one token.")
    return float(vocab_size)


def _check_baseline_ids(train_ids, eval_ids, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    train, evaluation = _as_id_array(train_ids, "train_ids"), _as_id_array(eval_ids, "eval_ids")
    if evaluation.size < 2:
        raise ValueError(f"eval_ids has {evaluation.size} token(s); at least 2 are needed (one to predict).")
    for name, ids in (("train_ids", train), ("eval_ids", evaluation)):
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ValueError(f"{name} contain id {bad}, outside the vocabulary 0..{vocab_size - 1} (vocab_size={vocab_size}).")
    return train, evaluation


def _unigram_probs(train: np.ndarray, vocab_size: int, alpha: float) -> np.ndarray:
    """p(w) = (count(w) + alpha) / (N + alpha V): add-alpha so unseen tokens keep some probability."""
    if alpha < 0:
        raise ValueError(f"alpha={alpha}; smoothing counts cannot be negative.")
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)  # (V,)
    total = counts.sum() + alpha * vocab_size
    if total == 0:
        raise ValueError("train_ids is empty and alpha=0: no probability to give any token; use alpha > 0.")
    return (counts + alpha) / total  # (V,)


def unigram_token_losses(train_ids, eval_ids, vocab_size: int, alpha: float = 1.0) -> np.ndarray:
    """-ln p(token) of every token of eval_ids[1:], p the token frequencies counted on ``train_ids``.

    p(w) = (count(w) + alpha) / (N + alpha V) (add-alpha / Laplace smoothing: a token
    never seen in training would otherwise get probability 0 and an infinite loss).
    """
    train, evaluation = _check_baseline_ids(train_ids, eval_ids, vocab_size)
    probs = _unigram_probs(train, vocab_size, alpha)
    with np.errstate(divide="ignore"):
        return -np.log(probs[evaluation[1:]])  # (M,) inf where a token got probability 0 (alpha=0)


def unigram_perplexity(train_ids, eval_ids, vocab_size: int, alpha: float = 1.0) -> float:
    """Perplexity of token frequencies counted on ``train_ids``, with no context at all.

    Scores eval_ids[1:], the tokens the model predicts; see ``unigram_token_losses``.
    """
    return float(np.exp(unigram_token_losses(train_ids, eval_ids, vocab_size, alpha).mean()))


def _pair_counts(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (previous, next) pairs of ``ids`` as keys previous*V + next, sorted, and their counts.

    Sparse on purpose: a dense V x V table is 20 GB of float64 for GPT-2's 50,257 ids;
    a text of N tokens has at most N - 1 distinct pairs.
    """
    keys = ids[:-1] * vocab_size + ids[1:]  # (N-1,) one int64 per pair
    return np.unique(keys, return_counts=True)


def bigram_token_losses(
    train_ids,
    eval_ids,
    vocab_size: int,
    alpha: float = 0.01,
    interpolation: float | None = None,
) -> np.ndarray:
    """-ln p(token | previous token) of every token of eval_ids[1:], p counted on ``train_ids``.

    Two ways to give unseen pairs some probability:

    - ``interpolation=None`` (default), add-alpha: p(b|a) = (count(a,b) + alpha) / (count(a) + alpha V).
      alpha=1 (Laplace) over-smooths a large vocabulary: each seen token shares its
      probability with V unseen successors, so keep alpha small.
    - ``interpolation=lam`` in [0, 1], Jelinek-Mercer: p(b|a) = lam * count(a,b) / count(a)
      + (1 - lam) * p_unigram(b) (add-``alpha`` unigram); a never-seen a uses p_unigram alone.

    Counts are kept sparse (pairs that occur, not a V x V table). Returns (len(eval_ids) - 1,) nats.
    """
    train, evaluation = _check_baseline_ids(train_ids, eval_ids, vocab_size)
    if alpha < 0:
        raise ValueError(f"alpha={alpha}; smoothing counts cannot be negative.")
    if interpolation is not None and not 0.0 <= interpolation <= 1.0:
        raise ValueError(f"interpolation={interpolation}; use a weight in [0, 1] (or None for add-alpha).")
    previous, following = evaluation[:-1], evaluation[1:]  # (M,), (M,)

    # count(a, b) for every evaluation pair, looked up in the sorted sparse keys.
    pair_count = np.zeros(previous.size, dtype=np.float64)  # (M,)
    if train.size >= 2:
        keys, counts = _pair_counts(train, vocab_size)  # (P,), (P,)
        wanted = previous * vocab_size + following  # (M,)
        where = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)  # (M,) where it would sit
        found = keys[where] == wanted  # (M,)
        pair_count[found] = counts[where[found]]
    # count(a): how often a appears as a *previous* token (the last training token has no successor).
    context_count = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)[previous]  # (M,)

    if interpolation is None:
        denominator = context_count + alpha * vocab_size
        if np.any(denominator == 0):
            raise ValueError("alpha=0 and an evaluation token never appears in training as a context; use alpha > 0.")
        probs = (pair_count + alpha) / denominator  # (M,)
    else:
        unigram = _unigram_probs(train, vocab_size, alpha)[following]  # (M,)
        seen = context_count > 0
        maximum_likelihood = np.divide(pair_count, context_count, out=np.zeros_like(pair_count), where=seen)
        probs = np.where(seen, interpolation * maximum_likelihood + (1 - interpolation) * unigram, unigram)
    with np.errstate(divide="ignore"):
        return -np.log(probs)  # (M,)


def bigram_perplexity(
    train_ids,
    eval_ids,
    vocab_size: int,
    alpha: float = 0.01,
    interpolation: float | None = None,
) -> float:
    """Perplexity of next-token probabilities given only the previous token, counted on ``train_ids``.

    Scores eval_ids[1:]; see ``bigram_token_losses`` for the two smoothings (add-alpha,
    the default, and Jelinek-Mercer ``interpolation`` with the unigram).
    """
    return float(np.exp(bigram_token_losses(train_ids, eval_ids, vocab_size, alpha, interpolation).mean()))


# ---- many documents, one number with an interval ----


def documents_nats(losses_fn: Callable, documents: Sequence, context_ids: Sequence[int],
                   joined: bool = False) -> np.ndarray:
    """Total nats of each document's tokens, each read after ``context_ids`` (which are not scored).

    ``losses_fn(ids)`` returns the losses of ids[1:] (``token_losses`` of a model, or
    ``bigram_token_losses`` of a counting baseline, wrapped in a lambda). Each document
    is scored on its own: [context, document], so no document sees another. The
    context is the model's own start-of-document marker (our GPT: ``<|endoftext|>``
    and a new line; SmolLM2: its ``<|endoftext|>``), so the first token of a document
    is predicted too, with the same knowledge a model has at any document start.

    ``joined=True`` scores all documents in one call on their concatenation: exact only
    for a ``losses_fn`` that looks back at most ``len(context_ids)`` tokens (unigram,
    bigram), and much faster for those (their counts are made once).
    """
    context = [int(t) for t in context_ids]
    if not context:
        raise ValueError("documents_nats: context_ids is empty; give the model its start-of-document token(s).")
    rows = [context + [int(t) for t in document] for document in documents]
    if any(len(row) == len(context) for row in rows):
        raise ValueError("documents_nats: a document has no tokens.")
    if not joined:
        return np.array([float(np.sum(losses_fn(row)[len(context) - 1:])) for row in rows])
    losses = np.asarray(losses_fn(np.concatenate(rows)))  # (sum of row lengths - 1,)
    starts = np.cumsum([0] + [len(row) for row in rows[:-1]])  # where each row begins in the concatenation
    return np.array([losses[start + len(context) - 1: start + len(row) - 1].sum()
                     for start, row in zip(starts, rows)])


def bootstrap_interval(values, weights=None, confidence: float = 0.95, n_resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for sum(values) / sum(weights) (the mean when ``weights`` is None).

    The units (documents, questions) are drawn with replacement ``n_resamples`` times;
    the interval holds the middle ``confidence`` of the recomputed ratios. Resample
    units, not tokens: the tokens of one conversation are not independent draws. With
    the same ``seed`` and number of units every call draws the same units, so the
    intervals of several models on the same documents are paired.
    """
    values = np.asarray(values, dtype=np.float64)  # (n,)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)  # (n,)
    if values.ndim != 1 or values.shape != weights.shape or values.size < 2:
        raise ValueError(f"bootstrap_interval: expected two 1-D arrays of the same length >= 2, got shapes "
                         f"{values.shape} and {weights.shape}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}; use a share between 0 and 1, e.g. 0.95.")
    picks = np.random.default_rng(seed).integers(0, values.size, size=(n_resamples, values.size))  # (R, n)
    ratios = values[picks].sum(axis=1) / weights[picks].sum(axis=1)  # (R,)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` items, with a 95% Wilson interval: how the course reports every rate.

    Wilson's interval (1927) stays inside 0..1 and behaves at 0 of n and n of n, where the
    textbook p +- 1.96 * sqrt(p(1 - p) / n) collapses to a width of zero.
    """

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        if self.n == 0:
            return float("nan"), float("nan")
        z, p, n = 1.959964, self.value, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.value:.2f} ({self.k}/{self.n}, 95% interval {low:.2f}-{high:.2f})"


def rate(flags: Iterable) -> Rate:
    """The share of true ``flags`` as a ``Rate`` (count, total, interval)."""
    flags = [bool(f) for f in flags]
    return Rate(sum(flags), len(flags))


def paired_difference(before: Sequence, after: Sequence, n_resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """``(difference, low, high)``: mean(after) - mean(before) on the same items, a 95% bootstrap interval.

    Two models asked the same questions are paired: resampling the *items* keeps each
    item's two answers together, so the interval is narrower than two separate intervals
    suggest (their overlap says little about the difference).
    """
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 1 or before.size < 2:
        raise ValueError("paired_difference: two 1-D sequences of the same length >= 2, one value per item.")
    low, high = bootstrap_interval(after - before, n_resamples=n_resamples, seed=seed)
    return float(np.mean(after - before)), low, high


# ---- perplexity over training: one number per checkpoint ----


def checkpoint_perplexities(
    checkpoint_dirs: Iterable,
    token_ids,
    load_fn: Callable,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> list[dict]:
    """Perplexity of each checkpoint on the same held-out ids, for a curve over training.

    ``load_fn(checkpoint_dir)`` returns the model (the caller knows the checkpoint
    format). Returns ``[{"checkpoint": str, "loss": float, "perplexity": float}, ...]``
    in the order given; each model is released before the next is loaded.
    """
    results = []
    for checkpoint in checkpoint_dirs:
        model = load_fn(checkpoint)
        loss = float(token_losses(model, token_ids, block_size, stride, batch_size).mean())
        results.append({"checkpoint": str(checkpoint), "loss": loss, "perplexity": math.exp(loss)})
        del model
    return results


# ---- sampling diagnostics: is the generated text varied, or looping? ----


def _ngrams(tokens: Sequence, n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Iterable[Sequence], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over a set of generated texts (Li et al., 2016).

    1.0: no n-gram is ever repeated; near 0: the samples say the same thing over and
    over (greedy decoding and low temperatures do that). Tokens may be ids or words.
    ``token_lists``: a list of token sequences; a single flat list (of ids or words) is
    treated as one text. 0.0 when there are no n-grams.
    """
    if n < 1:
        raise ValueError(f"n={n}; n-grams have at least one token.")
    if isinstance(token_lists, (torch.Tensor, np.ndarray)) and token_lists.ndim == 1:
        token_lists = [token_lists]  # one text as a 1-D tensor or array
    token_lists = list(token_lists)
    if token_lists and not isinstance(token_lists[0], (list, tuple, np.ndarray, torch.Tensor)):
        token_lists = [token_lists]  # one text given as a flat list of ids or words
    all_ngrams = [g for tokens in token_lists for g in _ngrams(list(_as_plain(tokens)), n)]
    return len(set(all_ngrams)) / len(all_ngrams) if all_ngrams else 0.0


def _as_plain(tokens):
    """Token ids from a tensor or array as plain Python ints (hashable, comparable)."""
    if isinstance(tokens, torch.Tensor):
        return tokens.tolist()
    if isinstance(tokens, np.ndarray):
        return tokens.tolist()
    return tokens


def repetition_rate(tokens: Sequence, n: int = 4) -> float:
    """Share of the n-grams of one text that already occurred earlier in the same text.

    0.0 for a text that never repeats itself; close to 1.0 for a model stuck in a
    loop ("i think i think i think ..."), the classic failure of greedy decoding.
    """
    if n < 1:
        raise ValueError(f"n={n}; n-grams have at least one token.")
    ngrams = _ngrams(list(_as_plain(tokens)), n)
    if not ngrams:
        return 0.0
    seen, repeated = set(), 0
    for gram in ngrams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(ngrams)


# ---- chat models: scored on their replies (06) ----


@torch.no_grad()
def assistant_losses(model, examples, pad_id: int, batch_size: int = 16) -> tuple[float, int]:
    """(summed cross-entropy in nats, number of tokens) over the assistant tokens of ``examples``.

    ``examples``: ``(input_ids, labels)`` pairs as ``utils.chat.encode_dataset`` makes them;
    they are padded in batches (``ChatCollator``) and scored on the shifted labels.
    """
    collate = ChatCollator(pad_id)
    device = model_device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(list(examples[start:start + batch_size]))
            x = batch["input_ids"].to(device)  # (B, T)
            y = shifted_targets(batch["labels"]).to(device)  # (B, T)
            logits = model_logits(model, x)  # (B, T, V)
            nll = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=IGNORE_INDEX, reduction="sum")
            total += float(nll)
            count += int((y != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total, count


def assistant_perplexity(model, examples, pad_id: int, batch_size: int = 16) -> float:
    """exp(mean cross-entropy) over assistant tokens only (replies and their ``<|end|>``), held out.

    The pretraining perplexity scores every token; a chat model is judged on its
    replies: how surprised is it by what a human actually answered, given the
    conversation so far?
    """
    total, count = assistant_losses(model, examples, pad_id, batch_size)
    if count == 0:
        raise ValueError("assistant_perplexity: the examples contain no assistant tokens.")
    return math.exp(total / count)
