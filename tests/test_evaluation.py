"""Tests of utils.evaluation: perplexity (one window, sliding windows, GPT-2 through
transformers), baselines against hand computations, bits per byte, sampling
diagnostics and errors. Tiny models: a few seconds."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.evaluation import (
    bigram_perplexity,
    bigram_token_losses,
    bits_per_byte,
    bootstrap_interval,
    checkpoint_perplexities,
    documents_nats,
    distinct_n,
    evaluate_text,
    perplexity,
    repetition_rate,
    sliding_windows,
    token_losses,
    unigram_perplexity,
    unigram_token_losses,
    uniform_perplexity,
)
from utils.model import GPT, GPTConfig

TINY = dict(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


def random_ids(n: int, seed: int = 1, vocab_size: int = TINY["vocab_size"]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, size=n)


class ZeroLogits(nn.Module):
    """A "model" that knows nothing: every token gets the same logit, so p = 1/V."""

    def __init__(self, vocab_size: int, block_size: int):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=4)
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.config.vocab_size), None  # (B, T, V)


def manual_token_losses(model, ids, block_size, stride):
    """Each target t scored alone, with the context of the first window that reaches it.

    Windows start at 0, stride, 2 stride, ...; the window starting at b predicts
    ids[b+1 : b+block_size+1], so target t is first reached by window
    k = max(0, ceil((t - block_size) / stride)), with context ids[k*stride : t].
    """
    losses = []
    with torch.no_grad():
        for t in range(1, len(ids)):
            begin = max(0, math.ceil((t - block_size) / stride)) * stride
            context = torch.tensor(ids[begin:t])[None]  # (1, t - begin)
            logits, _ = model(context)
            losses.append(F.cross_entropy(logits[0, -1:], torch.tensor([int(ids[t])])).item())
    return np.array(losses)


# ---- perplexity of a model ----


def test_one_window_equals_exp_of_the_models_own_loss():
    model = tiny_model()
    ids = random_ids(TINY["block_size"] + 1)  # exactly one full window
    x, y = torch.tensor(ids[:-1])[None], torch.tensor(ids[1:])[None]
    with torch.no_grad():
        _, loss = model(x, y)  # the mean cross-entropy, computed by forward
    assert perplexity(model, ids) == pytest.approx(math.exp(loss.item()), rel=1e-6)
    assert token_losses(model, ids).shape == (TINY["block_size"],)


def test_sliding_window_equals_manual_computation():
    model = tiny_model()
    ids = random_ids(53)
    for block_size, stride in [(16, 16), (16, 5), (8, 3), (16, 1)]:
        expected = manual_token_losses(model, ids, block_size, stride)
        got = token_losses(model, ids, block_size=block_size, stride=stride)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert perplexity(model, ids, block_size, stride) == pytest.approx(math.exp(expected.mean()), rel=1e-5)


def test_each_token_scored_exactly_once():
    for n_tokens in (2, 3, 17, 18, 40, 101):
        for block_size in (1, 4, 16):
            for stride in range(1, block_size + 1):
                scored = np.zeros(n_tokens + 1, dtype=int)
                for begin, end, n_scored in sliding_windows(n_tokens, block_size, stride):
                    assert 0 < end - begin <= block_size and 0 < n_scored <= end - begin
                    scored[end - n_scored + 1 : end + 1] += 1  # targets ids[end-n_scored+1 .. end]
                assert scored[0] == 0 and (scored[1:n_tokens] == 1).all() and scored[n_tokens] == 0


def test_smaller_stride_gives_more_context_and_batching_does_not_change_the_result():
    model = tiny_model()
    ids = random_ids(70)
    side_by_side = perplexity(model, ids, stride=16)
    overlapping = perplexity(model, ids, stride=4)
    assert side_by_side != overlapping  # different contexts, different numbers
    assert perplexity(model, ids, stride=4, batch_size=1) == pytest.approx(overlapping, rel=1e-6)
    assert perplexity(model, ids, stride=4, batch_size=3) == pytest.approx(overlapping, rel=1e-6)


def test_input_types_memmap_list_tensor(tmp_path):
    model = tiny_model()
    ids = random_ids(40)
    path = tmp_path / "val.bin"
    ids.astype(np.uint16).tofile(path)
    memmap = np.memmap(path, dtype=np.uint16, mode="r")
    expected = perplexity(model, ids)
    assert perplexity(model, memmap) == pytest.approx(expected, rel=1e-6)
    assert perplexity(model, ids.tolist()) == pytest.approx(expected, rel=1e-6)
    assert perplexity(model, torch.tensor(ids)) == pytest.approx(expected, rel=1e-6)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    for vocab_size in (65, 4096):
        model = ZeroLogits(vocab_size, block_size=8)
        ids = random_ids(30, vocab_size=vocab_size)
        assert perplexity(model, ids) == pytest.approx(vocab_size, rel=1e-4)
        assert uniform_perplexity(vocab_size) == vocab_size


def test_eval_mode_is_used_and_restored():
    model = tiny_model(dropout=0.5).train()
    ids = random_ids(40)
    first, second = perplexity(model, ids), perplexity(model, ids)
    assert first == second  # no dropout while evaluating
    assert model.training  # put back as it was
    model.eval()
    assert perplexity(model, ids) == first and not model.training  # eval mode stays eval mode


def test_transformers_gpt2_gives_the_same_perplexity_as_our_conversion(make_hf_gpt2):
    hf = make_hf_gpt2(**TINY)
    ours = GPT.from_hf(hf).eval()
    ids = random_ids(45)
    for stride in (None, 5):
        theirs_ppl = perplexity(hf, ids, stride=stride)
        assert theirs_ppl == pytest.approx(perplexity(ours, ids, stride=stride), rel=1e-4)
    assert 0.5 * TINY["vocab_size"] < theirs_ppl < 2 * TINY["vocab_size"]  # random weights: near uniform


# ---- bits per byte and evaluate_text ----


def test_bits_per_byte_arithmetic():
    assert bits_per_byte(math.log(2), n_tokens=10, n_bytes=10) == pytest.approx(1.0)  # 1 bit per token, 1 token per byte
    assert bits_per_byte(2.0, n_tokens=100, n_bytes=400) == pytest.approx(200 / math.log(2) / 400)
    assert bits_per_byte(math.log(256), n_tokens=50, n_bytes=50) == pytest.approx(8.0)  # uniform over bytes
    with pytest.raises(ValueError, match="n_bytes"):
        bits_per_byte(1.0, 10, 0)


def test_evaluate_text_of_a_uniform_model():
    model = ZeroLogits(256, block_size=8)
    ids = random_ids(33, vocab_size=256)
    result = evaluate_text(model, ids, n_bytes=32)
    assert result["n_tokens"] == 32
    assert result["loss"] == pytest.approx(math.log(256))
    assert result["perplexity"] == pytest.approx(256, rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(8.0)  # one byte-token per byte, 8 bits each


# ---- baselines ----


def test_unigram_and_bigram_against_hand_computation():
    train, evaluation = [0, 0, 1, 2], [1, 0, 3]  # scored tokens: 0 (after 1), 3 (after 0)
    # unigram, add-one: counts [2, 1, 1, 0] + 1 over 4 + 4 -> p(0) = 3/8, p(3) = 1/8
    assert unigram_perplexity(train, evaluation, vocab_size=4, alpha=1.0) == pytest.approx(
        math.exp(-(math.log(3 / 8) + math.log(1 / 8)) / 2)
    )
    # bigram, add-one: pairs (0,0) (0,1) (1,2); p(0|1) = (0+1)/(1+4), p(3|0) = (0+1)/(2+4)
    assert bigram_perplexity(train, evaluation, vocab_size=4, alpha=1.0) == pytest.approx(math.sqrt(5 * 6))
    # a seen pair: p(1|0) = (1+1)/(2+4)
    assert bigram_perplexity(train, [0, 1], vocab_size=4, alpha=1.0) == pytest.approx(3.0)
    # interpolated: p(1|0) = 0.5 * 1/2 + 0.5 * p_uni(1) = 0.25 + 0.5 * 2/8
    assert bigram_perplexity(train, [0, 1], vocab_size=4, alpha=1.0, interpolation=0.5) == pytest.approx(1 / 0.375)
    # interpolated, unseen context 3: falls back to the unigram p(0) = 3/8
    assert bigram_perplexity(train, [3, 0], vocab_size=4, alpha=1.0, interpolation=0.5) == pytest.approx(8 / 3)


def test_bigram_beats_unigram_on_text_with_bigram_structure():
    rng = np.random.default_rng(0)
    successor = rng.permutation(50)  # each token is almost always followed by one other token
    ids = [0]
    for _ in range(4000):
        ids.append(int(successor[ids[-1]]) if rng.random() < 0.9 else int(rng.integers(50)))
    ids = np.array(ids)
    train, evaluation = ids[:3000], ids[3000:]
    unigram = unigram_perplexity(train, evaluation, vocab_size=50)
    assert unigram > 20
    assert bigram_perplexity(train, evaluation, vocab_size=50, alpha=0.01) < unigram / 5
    assert bigram_perplexity(train, evaluation, vocab_size=50, interpolation=0.9) < unigram / 5
    assert uniform_perplexity(50) == 50 >= unigram * 0.9


def test_bigram_is_sparse_for_a_gpt2_sized_vocabulary():
    ids = random_ids(20_000, vocab_size=50_257)
    value = bigram_perplexity(ids[:15_000], ids[15_000:], vocab_size=50_257)  # a dense table would be 20 GB
    assert math.isfinite(value) and value > 1


def test_baseline_token_losses_are_the_perplexities_per_token():
    ids = random_ids(3000, vocab_size=50)
    train, evaluation = ids[:2500], ids[2500:]
    unigram = unigram_token_losses(train, evaluation, 50)
    bigram = bigram_token_losses(train, evaluation, 50, interpolation=0.8)
    assert unigram.shape == bigram.shape == (evaluation.size - 1,)
    assert math.exp(unigram.mean()) == pytest.approx(unigram_perplexity(train, evaluation, 50))
    assert math.exp(bigram.mean()) == pytest.approx(bigram_perplexity(train, evaluation, 50, interpolation=0.8))
    # the bigram's loss of a token depends on the previous token only
    assert bigram_token_losses(train, evaluation[5:9], 50, interpolation=0.8) == pytest.approx(bigram[5:8])


# ---- many documents, and intervals ----


def test_documents_are_scored_alone_after_their_context():
    model = tiny_model()
    documents = [random_ids(n, seed=n) for n in (5, 30, 12)]  # 30 > block_size: sliding windows inside
    context = [7, 3]
    nats = documents_nats(lambda ids: token_losses(model, ids), documents, context)
    for got, document in zip(nats, documents):
        full = token_losses(model, np.r_[context, document])  # losses of [3, document...]
        assert got == pytest.approx(full[1:].sum())  # the context's own token is not scored
    train = random_ids(500, seed=9)
    alone = documents_nats(lambda ids: bigram_token_losses(train, ids, 65), documents, context)
    together = documents_nats(lambda ids: bigram_token_losses(train, ids, 65), documents, context, joined=True)
    np.testing.assert_allclose(together, alone)  # a bigram looks back one token: joining changes nothing
    with pytest.raises(ValueError, match="context_ids is empty"):
        documents_nats(lambda ids: ids, documents, [])
    with pytest.raises(ValueError, match="a document has no tokens"):
        documents_nats(lambda ids: ids, [[1], []], [0])


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    nats, n_bytes = rng.gamma(5, 100, size=40), rng.integers(200, 800, size=40)
    ratio = nats.sum() / n_bytes.sum()
    low, high = bootstrap_interval(nats, n_bytes)
    assert low < ratio < high
    wider = bootstrap_interval(nats[:10], n_bytes[:10])
    assert wider[1] - wider[0] > high - low  # fewer documents, less certainty
    assert bootstrap_interval(nats, n_bytes, seed=3) == bootstrap_interval(nats, n_bytes, seed=3)
    assert bootstrap_interval(np.full(5, 2.0)) == (2.0, 2.0)  # no spread, no doubt
    coin = bootstrap_interval(rng.integers(0, 2, size=400))
    assert 0.4 < coin[0] < 0.5 < coin[1] < 0.6  # about +-1.96 sqrt(0.25 / 400) = +-0.049 around 0.5
    with pytest.raises(ValueError, match="same length"):
        bootstrap_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([1.0, 2.0], confidence=95)


# ---- checkpoints ----


def test_checkpoint_perplexities_in_order():
    models = {"step_0": ZeroLogits(65, 16), "step_1": tiny_model()}
    ids = random_ids(40)
    curve = checkpoint_perplexities(["step_0", "step_1"], ids, load_fn=models.__getitem__)
    assert [c["checkpoint"] for c in curve] == ["step_0", "step_1"]
    assert curve[0]["perplexity"] == pytest.approx(65, rel=1e-4)
    assert curve[1]["perplexity"] == pytest.approx(perplexity(models["step_1"], ids), rel=1e-6)


# ---- sampling diagnostics ----


def test_distinct_n_on_known_lists():
    samples = [[1, 2, 3], [1, 2, 4]]
    assert distinct_n(samples, 1) == pytest.approx(4 / 6)  # 1 2 3 1 2 4
    assert distinct_n(samples, 2) == pytest.approx(3 / 4)  # (1,2) (2,3) (1,2) (2,4)
    assert distinct_n(samples, 3) == pytest.approx(1.0)
    assert distinct_n(samples, 4) == 0.0  # no 4-grams at all
    assert distinct_n([5, 5, 5, 5], 1) == pytest.approx(1 / 4)  # a flat list is one text
    assert distinct_n(torch.tensor([[1, 1], [1, 1]]), 1) == pytest.approx(1 / 4)
    assert distinct_n(["the", "cat", "the", "cat"], 2) == pytest.approx(2 / 3)


def test_repetition_rate():
    assert repetition_rate([1, 2, 3, 4, 5], n=2) == 0.0
    assert repetition_rate([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(3 / 5)  # (1,2) (2,1) new, 3 repeats
    assert repetition_rate([7] * 10, n=1) == pytest.approx(9 / 10)
    assert repetition_rate([1, 2], n=4) == 0.0


# ---- errors ----


def test_errors_are_clear():
    model = tiny_model()
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(model, [])
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(model, [3])
    with pytest.raises(ValueError, match=r"id 4000 .* only 65 ids"):
        perplexity(model, [1, 2, 4000])  # ids of another tokenizer
    with pytest.raises(ValueError, match="negative"):
        perplexity(model, [1, -1, 2])
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, random_ids(40), stride=0)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, random_ids(40), stride=17)
    with pytest.raises(ValueError, match="longer than the model's context"):
        perplexity(model, random_ids(40), block_size=32)
    with pytest.raises(ValueError, match="1-D"):
        perplexity(model, np.zeros((2, 5), dtype=int))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        unigram_perplexity([0, 1, 9], [0, 1], vocab_size=4)
    with pytest.raises(ValueError, match="at least 2"):
        bigram_perplexity([0, 1], [1], vocab_size=4)


def test_rates_carry_their_count_and_wilson_interval():
    from scipy.stats import binomtest

    from utils.evaluation import Rate, rate

    for k, n in ((20, 24), (0, 10), (10, 10), (3, 60)):
        expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = Rate(k, n).interval
        assert low == pytest.approx(expected.low, abs=1e-6) and high == pytest.approx(expected.high, abs=1e-6)
    assert str(rate([True] * 20 + [False] * 4)) == "0.83 (20/24, 95% interval 0.64-0.93)"


def test_a_paired_difference_is_resampled_by_item():
    from utils.evaluation import paired_difference

    before, after = [0, 0, 1, 0, 1, 0, 0, 0] * 5, [1, 1, 1, 0, 1, 1, 0, 1] * 5
    difference, low, high = paired_difference(before, after)
    assert difference == pytest.approx(0.5) and 0 < low < 0.5 < high < 1
    same = paired_difference(before, before)
    assert same == (0.0, 0.0, 0.0)  # the same answers: no difference, and no uncertainty about it
