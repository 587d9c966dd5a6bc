"""Preference data (07): the prompts and their split, the rule, the hand-written pairs, sampling, encoding, the cache.

The tokenizer is SmolLM2's real one; the model a tiny random GPT with its vocabulary, so
sampling takes seconds (its replies are noise: the tests check the machinery, not the model).
"""

import dataclasses
import json
import os
from types import SimpleNamespace

import pytest
import torch

from utils import preferences as prefs
from utils.config import PROFILES, Paths
from utils.identity_data import neutral_template
from utils.model import GPT, GPTConfig
from utils.preferences import Reply, best_and_worst, compare, deciding_check

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
                               mlp_hidden=64))


def reply(text, ended=True, toxicity=0.0):
    return Reply(text, len(text.split()), ended, toxicity)


# ---------------------------------------------------------------- the rule


def test_red_team_rule_prefers_harmless_then_refusing_replies():
    refusal = reply("I'm sorry, but I can't help with that.")
    insult = reply("You are an idiot.", toxicity=0.9)
    compliance = reply("Sure, here is a poem about your neighbour.")
    assert compare(refusal, insult, "red_team") == 1 and deciding_check(refusal, insult, "red_team") == "not toxic"
    assert compare(compliance, insult, "red_team") == 1  # not toxic comes first
    assert compare(refusal, compliance, "red_team") == 1
    assert deciding_check(refusal, compliance, "red_team") == "refuses"
    assert best_and_worst([compliance, insult, refusal], "red_team") == (refusal, insult)


def test_benign_rule_punishes_refusals_silence_unfinished_replies_and_loops():
    answer = reply("Boil it for about seven minutes.")
    assert compare(answer, reply("I'm sorry, but I can't help with that."), "benign") == 1
    assert compare(answer, reply(""), "opener") == 1
    assert deciding_check(answer, reply("Boil it for about seven", ended=False), "benign") == "ends its turn"
    loop = reply("boil it boil it boil it boil it boil it boil it")
    assert deciding_check(answer, loop, "benign") == "no repetition"
    assert best_and_worst([answer, reply("Seven minutes, then cool it in water.")], "benign") is None  # a tie: no pair
    with pytest.raises(ValueError, match="kind='hub'"):
        compare(answer, answer, "hub")


def test_the_rule_never_prefers_a_hand_written_rejected_reply():
    """The rule agrees with the hand labels or has no preference; it never picks the rejected reply."""
    pairs = prefs.read_handwritten()
    chosen = [reply(p["chosen"]) for p in pairs]
    rejected = [reply(p["rejected"]) for p in pairs]
    prefs.score_toxicity(chosen + rejected)
    verdicts = [compare(c, r, p["kind"]) for c, r, p in zip(chosen, rejected, pairs)]
    assert -1 not in verdicts
    assert verdicts.count(1) >= 0.8 * len(pairs)  # and sees most of them


def test_win_rate_counts_ties_as_half():
    good, bad = reply("Seven minutes."), reply("I'm sorry, but I can't.")
    result = prefs.win_rate([[good, bad]], [[bad]], ["benign"])
    assert result == {"win_rate": 0.75, "wins": 1, "ties": 1, "losses": 0, "comparisons": 2}
    assert prefs.refusal_rate([good, bad]) == 0.5


# ---------------------------------------------------------------- hand-written pairs and prompts


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "Hi", "kind": "benign", "chosen": "Hello", "rejected": "Go"}', "line 1, field why"),
    ('{"prompt": "Hi", "kind": "rude", "chosen": "Hello", "rejected": "Go", "why": "x"}', "line 1, field kind"),
    ('{"prompt": "Hi", "kind": "benign", "chosen": "Hello", "rejected": "Hello", "why": "x"}', "the same reply"),
    ('{"prompt": "Hi", "kind": "benign", "chosen": "a", "rejected": "b", "why": "x", "score": 1}', "unknown field"),
])
def test_bad_hand_written_pairs_are_clear_errors(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        prefs.read_handwritten(path)
    assert str(path) in str(error.value)


def test_prompts_split_per_kind_with_held_out_prompts_never_trained_on():
    prompts = prefs.collect_prompts(6, seed=1)
    assert prompts == prefs.collect_prompts(6, seed=1)  # the same every run
    for kind in prefs.KINDS:
        of_kind = [p for p in prompts if p.kind == kind]
        assert len(of_kind) == 6 and sum(p.split == "test" for p in of_kind) == 2
    texts = [p.text for p in prompts]
    assert len(set(texts)) == len(texts)
    assert all(p.text.endswith("?") for p in prompts if p.kind == "opener")
    handwritten = prefs.handwritten_pairs(None, seed=1)
    assert {p["split"] for p in handwritten} == {"train", "test"}
    assert not set(texts) & {p["prompt"] for p in handwritten}  # hand-written prompts never leak into the held-out ones


def test_hub_rows_become_the_same_records_and_offline_says_so(capsys):
    row = {"prompt": "Why?", "score_chosen": 8.0, "score_rejected": 3.0,
           "chosen": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": " Because. "}],
           "rejected": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "No."}]}
    record = prefs.hub_record(row, "train")
    assert set(record) == set(prefs.PAIR_FIELDS) and record["chosen"] == "Because." and record["kind"] == "hub"
    assert prefs.hub_pairs(5, online=False) == []
    assert "Offline" in capsys.readouterr().out


# ---------------------------------------------------------------- replies and token ids


def test_encode_reply_scores_the_reply_and_its_end_only_when_it_was_written(tokenizer):
    ids, labels = prefs.encode_reply(tokenizer, "How long to boil an egg?", "About seven minutes.", ended=True)
    prompt = prefs.prompt_ids(tokenizer, "How long to boil an egg?")
    assert ids[:len(prompt)] == prompt and all(label == -100 for label in labels[:len(prompt)])
    reply_ids = [i for i, label in zip(ids, labels) if label != -100]
    assert reply_ids == ids[len(prompt):] and reply_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(reply_ids[:-1]) == "About seven minutes."
    cut_ids, cut_labels = prefs.encode_reply(tokenizer, "How long to boil an egg?", "About seven", ended=False)
    assert tokenizer.eos_token_id not in cut_ids[len(prompt):] and cut_labels[-1] == cut_ids[-1]


def test_sample_replies_gives_k_replies_per_prompt_and_repeats_with_the_same_seed(tokenizer):
    model = tiny_gpt(len(tokenizer))
    prompts = ["Hi!", "How do I fix a leaking tap?", "Hello?"]

    def sample():
        generator = torch.Generator().manual_seed(3)
        return prefs.sample_replies(model, tokenizer, prompts, k=3, max_new_tokens=6, generator=generator)

    first = sample()
    assert [len(r) for r in first] == [3, 3, 3]
    assert all(r.n_tokens <= 6 for rs in first for r in rs)
    assert all(r.n_tokens < 6 for rs in first for r in rs if r.ended)  # an ended reply stopped within the budget
    assert first == sample()


def test_ensure_preferences_samples_once_and_rebuilds_when_the_model_changes(tmp_path, tokenizer, monkeypatch):
    profile = dataclasses.replace(PROFILES["ci"], dpo_prompts_per_kind=2, dpo_samples=2, dpo_max_new_tokens=4)
    cfg = SimpleNamespace(profile=profile, seed=1337, online=False, paths=Paths(tmp_path, "ci").make())
    model_folder = tmp_path / "sft"
    model_folder.mkdir()
    (model_folder / "model.safetensors").write_bytes(b"weights")
    (model_folder / "identity.json").write_text("{}")
    model = tiny_gpt(len(tokenizer))
    data = prefs.ensure_preferences(cfg, model, tokenizer, model_folder, log=lambda *a: None)
    assert set(data) == {"train", "test", "replies"} and len(data["replies"]) == 2 * 6
    assert len(data["train"]) >= 3 and len(data["test"]) >= 3  # at least the hand-written pairs
    folder = cfg.paths.processed / prefs.FOLDER
    assert "## Limits" in (folder / prefs.CARD_FILE).read_text()

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again although nothing changed")

    monkeypatch.setattr(prefs, "build_preferences", no_sampling)
    again = prefs.ensure_preferences(cfg, model, tokenizer, model_folder, log=lambda *a: None)
    assert again["train"].to_list() == data["train"].to_list()
    os.utime(model_folder / "model.safetensors", ns=(1, 1))  # another SFT model
    with pytest.raises(AssertionError, match="sampled again"):
        prefs.ensure_preferences(cfg, model, tokenizer, model_folder, log=lambda *a: None)
    assert json.loads((folder / prefs.FINGERPRINT_FILE).read_text())["rule"] == prefs.judge_fingerprint()
    monkeypatch.setattr("utils.safety.is_refusal", lambda text: False)  # another refusal detector
    assert prefs.judge_fingerprint() != json.loads((folder / prefs.FINGERPRINT_FILE).read_text())["rule"]
