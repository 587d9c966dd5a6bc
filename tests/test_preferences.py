"""The data of alignment (07): the written requests and their splits, the rules that make conversations and
pairs, the prefix the probe forces, and the refusal count.

The tokenizer is SmolLM2's real one; models are tiny random GPTs with its vocabulary (the tests check
the machinery, not a model), so everything takes seconds.
"""

import pytest
import torch

from utils import preferences as prefs
from utils.chat_spans import IGNORE_INDEX
from utils.identity_data import neutral_template
from utils.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from utils.pretrained import SMOLLM2_CACHE, load_smollm2

    folder = SMOLLM2_CACHE / "tokenizer"
    if not folder.exists():
        load_smollm2()  # converts the GGUF once and caches the tokenizer
    return neutral_template(AutoTokenizer.from_pretrained(str(folder)))


def tiny_gpt(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.llama(vocab_size=vocab_size, block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                               mlp_hidden=64)).eval()


@pytest.fixture(scope="module")
def splits():
    return {split: prefs.load_requests(split) for split in prefs.SPLITS}


def test_every_split_covers_every_harm_area_and_the_test_split_is_written_apart(splits):
    for split, requests in splits.items():
        for area in prefs.AREAS:
            for kind in ("harmful", "benign"):
                assert sum(r.area == area and r.kind == kind for r in requests) >= 6, (split, area, kind)
        assert any(r.kind == "everyday" for r in requests)
    train_dev = {r.prompt.lower() for split in ("train", "dev") for r in splits[split]}
    assert not train_dev & {r.prompt.lower() for r in splits["test"]}  # no test prompt was trained or chosen on
    assert not {r.subtopic for r in splits["train"]} & {r.subtopic for r in splits["test"] if r.kind == "harmful"}
    for r in splits["train"] + splits["dev"]:
        if r.kind == "harmful":
            assert r.decline.startswith(("I can't help with", "I won't help with")), r.id


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "kind": "rude", "area": "drugs", "subtopic": "x", "prompt": "p"}', "field kind"),
    ('{"id": "a", "kind": "harmful", "area": "nowhere", "subtopic": "x", "prompt": "p"}', "field area"),
    ('{"id": "a", "kind": "harmful", "area": "drugs", "subtopic": "x", "prompt": "p"}', "field decline"),
    ('{"id": "a", "kind": "everyday", "area": "everyday", "subtopic": "x", "prompt": ""}', "field prompt"),
    ('{"id": "a", "kind": "everyday", "area": "everyday", "subtopic": "x", "prompt": "p", "why": "?"}', "unknown field"),
])
def test_bad_requests_are_clear_errors_that_name_the_line_and_field(tmp_path, line, message):
    (tmp_path / "train.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        prefs.load_requests("train", tmp_path)
    assert "train.jsonl, line 1" in str(error.value)


def test_take_keeps_every_area_and_kind(splits):
    small = prefs.take(splits["train"], per_area=2, everyday=3)
    assert len(small) == 2 * 2 * len(prefs.AREAS) + 3
    assert {r.area for r in small if r.kind == "harmful"} == set(prefs.AREAS)


def test_safety_conversations_follow_the_rules_alone_and_as_a_later_turn(splits):
    requests = prefs.take(splits["train"], per_area=1, everyday=2)
    own = {r.id: f"own answer to {r.id}" for r in requests if r.kind != "harmful"}
    exchanges = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]]
    conversations, anchored = prefs.sft_conversations(requests, own, exchanges)
    assert len(conversations) == 2 * len(requests)
    for i, request in enumerate(requests):
        alone, later = conversations[2 * i], conversations[2 * i + 1]
        expected = request.decline if request.kind == "harmful" else own[request.id]
        assert alone[-1]["content"] == later[-1]["content"] == expected
        assert alone[-2]["content"] == later[-2]["content"] == request.prompt
        assert later[1:3] == exchanges[0] and len(later) == len(alone) + 2
        assert anchored[2 * i] == (request.kind != "harmful") and not anchored[2 * i + 1]


def test_pairs_learn_what_follows_the_prefix_of_harmful_requests(tokenizer, splits):
    requests = prefs.take(splits["train"], per_area=1, everyday=1)[:6]
    continuation = {r.id: "that. Here is how anyway." for r in requests if r.kind == "harmful"}
    pairs = prefs.preference_pairs(requests, continuation, "I can't help with")
    assert [p["id"] for p in pairs] == [r.id for r in requests if r.kind == "harmful"]  # benign ones make no pair
    encoded = prefs.encode_pairs(tokenizer, pairs)
    n = len(pairs)
    prefix = tokenizer.encode("I can't help with", add_special_tokens=False)
    for i, pair in enumerate(pairs):
        assert pair["rejected"] == "I can't help with that. Here is how anyway."
        for ids, labels in (encoded[i], encoded[n + i]):
            learned = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
            assert not learned.startswith("I can't help with")  # the forced start is context
            start = next(k for k, label in enumerate(labels) if label != IGNORE_INDEX) - len(prefix)
            assert ids[start:start + len(prefix)] == prefix
    later = [{"prompt": prefs.ask(requests[0], [{"role": "user", "content": "Hi"},
                                                {"role": "assistant", "content": "Hello!"}]),
              "chosen": requests[0].decline, "rejected": "I can't help with it.", "prefix": "I can't help with",
              "id": "x"}]
    ids, labels = prefs.encode_pairs(tokenizer, later)[0]
    assert "Hello!" not in tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])


def test_refusals_counts_first_sentences_that_refuse_per_kind(tokenizer, splits, monkeypatch):
    from utils.replies import Reply

    requests = prefs.take(splits["dev"], per_area=1, everyday=0)[:4]
    texts = ["I can't help with that, sorry.", "Sure! Here's how.", "I'm sorry, but I can't do that.", "Hello."]
    monkeypatch.setattr(prefs, "generate_replies", lambda *a, **k: [Reply(t, [], True) for t in texts])
    counted = prefs.refusals(tiny_gpt(len(tokenizer)), tokenizer, requests, 8)
    assert counted.refused == [True, False, True, False]
    harmful = [refused for r, refused in zip(requests, counted.refused) if r.kind == "harmful"]
    assert counted.rate("harmful").k == sum(harmful) and counted.rate("harmful").n == len(harmful)
