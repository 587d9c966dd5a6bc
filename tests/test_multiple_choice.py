"""Tests of utils.multiple_choice: the course's items, scoring by log-likelihood (checked
against a hand computation, the two batched paths against each other, and transformers'
GPT-2 against our conversion), length normalisation, centring on chance, errors.
Tiny models and a character tokenizer: a few seconds."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils import multiple_choice as mc
from utils.model import GPT, GPTConfig

VOCAB = 128  # a character tokenizer over ASCII


class CharTokenizer:
    """One token per ASCII character: easy to reason about (tokens = bytes)."""

    def encode(self, text):
        return [ord(c) % VOCAB for c in text]


def tiny_gpt(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    fields = dict(vocab_size=VOCAB, block_size=96, n_layer=2, n_head=2, n_embd=32) | overrides
    return GPT(GPTConfig(**fields)).eval()


def tiny_llama(seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.llama(vocab_size=VOCAB, block_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                               mlp_hidden=64)).eval()


ITEMS = [
    mc.Item("Which is bigger?", ("a mouse", "an elephant"), 1, "two"),
    mc.Item("Capital of France?", ("Paris", "Rome", "a very long wrong answer", "Oslo"), 0, "four"),
    mc.Item("Sky colour?", ("blue", "green", "red"), 0, "three"),
    mc.Item("Seven days make a?", ("week", "month", "year", "decade", "day"), 0, "five"),
]


def by_hand(model, tokenizer, item, prompt):
    """Each choice alone: ln p of its tokens given the question, from one unbatched forward."""
    context = tokenizer.encode(prompt.context(item.question))
    values = []
    with torch.no_grad():
        for choice in item.choices:
            ids = context + tokenizer.encode(prompt.continuation(choice))
            logits, _ = model(torch.tensor([ids[:-1]]))  # (1, T, V)
            log_probs = F.log_softmax(logits[0], dim=-1)  # (T, V)
            values.append(sum(log_probs[t - 1, ids[t]].item() for t in range(len(context), len(ids))))
    return np.array(values)


# ---- the course's items ----


def test_the_course_items_are_valid_and_varied():
    items = mc.read_items()
    assert len(items) >= 100
    assert len({item.question for item in items}) == len(items)  # no question twice
    assert len({item.id for item in items}) == len(items)
    counts = {len(item.choices) for item in items}
    assert min(counts) == 2 and max(counts) >= 5  # different numbers of choices: centring per item matters
    answers = np.bincount([item.answer for item in items])
    assert answers.max() < 0.4 * len(items)  # the right answer is not always in the same place


def test_read_items_names_the_file_line_and_field(tmp_path):
    good = {"question": "Q?", "choices": ["a", "b"], "answer": 1}
    cases = [
        ({"choices": ["a", "b"], "answer": 0}, r"items.jsonl, line 2: missing field\(s\) question"),
        (good | {"answer": 2}, r"line 2, field answer: .* 0 to 1, got 2"),
        (good | {"answer": True}, "line 2, field answer"),
        (good | {"choices": ["a"]}, "line 2, field choices: expected a list of at least 2"),
        (good | {"choices": ["a", "a"]}, "line 2, field choices: two choices are the same"),
        (good | {"choices": ["a", ""]}, r"line 2, field choices\[1\]"),
        (good | {"question": "  "}, "line 2, field question"),
    ]
    for record, message in cases:
        path = tmp_path / "items.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            mc.read_items(path)
    path.write_text(json.dumps(good) + "\nnot json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="items.jsonl, line 2: not valid JSON"):
        mc.read_items(path)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no items"):
        mc.read_items(path)


def test_arc_easy_rows_become_items(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = datasets.Dataset.from_list([
        {"id": "Q1", "question": "Which is a mammal?", "answerKey": "B",
         "choices": {"text": ["shark", "whale", "trout"], "label": ["A", "B", "C"]}},
        {"id": "Q2", "question": "2 + 2?", "answerKey": "4",
         "choices": {"text": ["3", "4", "5", "6"], "label": ["1", "4", "5", "6"]}},
    ])
    seen = {}

    def fake_load_dataset(name, config, split):
        seen.update(name=name, config=config, split=split)
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = mc.load_arc_easy(limit=5)
    assert seen == {"name": "allenai/ai2_arc", "config": "ARC-Easy", "split": "test"}
    assert [(i.id, i.answer, i.choices[i.answer]) for i in items] == [("Q1", 1, "whale"), ("Q2", 1, "4")]


# ---- scoring ----


@pytest.mark.parametrize("make_model", [tiny_gpt, tiny_llama])
def test_scores_equal_a_hand_computation_in_both_batched_paths(make_model, one_thread):
    model, tokenizer = make_model(), CharTokenizer()
    for prompt in (mc.QUESTION_ANSWER, mc.conversation_format("#")):
        expected = [by_hand(model, tokenizer, item, prompt) for item in ITEMS]
        for shared_context in (True, False):
            for batch_size in (1, 3):
                scored = mc.score_items(model, tokenizer, ITEMS, prompt, batch_size, shared_context)
                for got, want in zip(scored, expected):
                    np.testing.assert_allclose(got.logprobs, want, rtol=1e-5, atol=1e-4)
        assert [list(s.n_bytes) for s in scored] == [[len(prompt.continuation(c)) for c in i.choices] for i in ITEMS]
        assert [list(s.n_tokens) for s in scored] == [list(s.n_bytes) for s in scored]  # one token per character


def test_transformers_gpt2_scores_equal_our_conversion(make_hf_gpt2, one_thread):
    hf = make_hf_gpt2(vocab_size=VOCAB, block_size=96, n_layer=2, n_head=2, n_embd=32)
    ours = GPT.from_hf(hf).eval()
    theirs = mc.score_items(hf, CharTokenizer(), ITEMS)  # not our GPT: one padded row per choice
    for a, b in zip(theirs, mc.score_items(ours, CharTokenizer(), ITEMS)):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-4)


def test_long_questions_are_cut_from_the_left_and_long_choices_refused(one_thread):
    model, tokenizer = tiny_gpt(block_size=16), CharTokenizer()
    item = mc.Item("x" * 40 + " end?", ("yes", "no"), 0)
    prompt = mc.PromptFormat("raw", "{question}")
    [scored] = mc.score_items(model, tokenizer, [item], prompt)
    kept = mc.Item(("x" * 40 + " end?")[-(16 - 3):], item.choices, 0)  # the longest choice keeps 3 places
    np.testing.assert_allclose(scored.logprobs, by_hand(model, tokenizer, kept, prompt), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="does not fit the model's context of 16 tokens"):
        mc.score_items(model, tokenizer, [mc.Item("q", ("a" * 16, "b"), 0)], prompt)


def test_eval_mode_is_used_and_restored(one_thread):
    model = tiny_gpt(dropout=0.5).train()
    first = mc.score_items(model, CharTokenizer(), ITEMS)
    second = mc.score_items(model, CharTokenizer(), ITEMS)
    assert all(np.array_equal(a.logprobs, b.logprobs) for a, b in zip(first, second))
    assert model.training


# ---- normalisation and centring ----


class Uniform(torch.nn.Module):
    """Every token equally likely: a choice's log-likelihood is -(its tokens) x ln V."""

    def __init__(self):
        super().__init__()
        self.config = GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=1, n_head=1, n_embd=4)
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return torch.zeros(*idx.shape, VOCAB)


def test_the_sum_favours_short_choices_and_normalising_removes_it():
    [scored] = mc.score_items(Uniform(), CharTokenizer(), [ITEMS[1]])
    np.testing.assert_allclose(scored.logprobs, -scored.n_tokens * math.log(VOCAB), rtol=1e-6)
    assert scored.predicted("sum") == 1  # " Rome", the shortest (and wrong): a model with no idea picks short answers
    assert np.allclose(scored.scores("per byte"), -math.log(VOCAB))  # all equal once divided by length
    assert mc.disagreements([scored], "sum", "sum") == []
    with pytest.raises(ValueError, match="normalisation"):
        scored.scores("per word")


def test_centred_accuracy_is_zero_for_chance_and_one_for_perfect():
    k = np.array([2, 3, 4, 5])
    assert np.allclose(mc.centred(np.ones(4), 1 / k), 1.0)
    assert np.allclose(mc.centred(np.zeros(4), 1 / k), -1 / (k - 1))
    expected_guess = (1 / k) * mc.centred(np.ones(4), 1 / k) + (1 - 1 / k) * mc.centred(np.zeros(4), 1 / k)
    assert np.allclose(expected_guess, 0.0)  # a uniform guess scores 0 on average, whatever k
    assert mc.chance_accuracy(ITEMS) == pytest.approx(np.mean([1 / 2, 1 / 4, 1 / 3, 1 / 5]))


def test_summarise_and_figures():
    def scored_item(item, right):
        logprobs = np.full(len(item.choices), -5.0)
        logprobs[item.answer if right else (item.answer + 1) % len(item.choices)] = -1.0
        n = np.ones(len(item.choices), dtype=int)
        return mc.ScoredItem(item, logprobs, n, n)

    perfect = mc.summarise([scored_item(item, True) for item in ITEMS])
    assert perfect.accuracy["per byte"] == 1.0 and perfect.centred["sum"] == pytest.approx(1.0)
    assert perfect.interval["per token"] == pytest.approx((1.0, 1.0))
    half = mc.summarise([scored_item(item, i % 2 == 0) for i, item in enumerate(ITEMS)])
    assert half.accuracy["sum"] == 0.5
    assert half.centred["sum"] == pytest.approx(np.mean([1, -1 / 3, 1, -1 / 4]))
    low, high = half.interval["sum"]
    assert low <= half.centred["sum"] <= high and low < high
    names = mc.figures("SmolLM2 after DPO", half)
    assert names["everyday multiple choice, SmolLM2 after DPO: centred accuracy (per byte)"] == round(
        half.centred["per byte"], 4)
    assert names["everyday multiple choice, SmolLM2 after DPO: items"] == 4
