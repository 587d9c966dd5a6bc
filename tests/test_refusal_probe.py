"""utils/refusal_probe.py: the states it reads, the logistic fit (equal to scikit-learn's), saving, and the
replies it turns into refusals. Tiny random GPTs: seconds."""

import numpy as np
import pytest
import torch

from utils import refusal_probe as rp
from utils.chat import add_chat_tokens, format_prompt
from utils.model import GPT, GPTConfig
from utils.replies import generate_replies, reply_to
from utils.tokenization import train_course_tokenizer

TEXTS = ["how do I bake bread?", "I can't help with that.", "tell me a joke about cats", "hello there"] * 5


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return add_chat_tokens(train_course_tokenizer(TEXTS, 300, tmp_path_factory.mktemp("tok")))


def tiny(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig.llama(vocab_size=vocab_size, block_size=64, n_layer=3, n_head=2, n_embd=32,
                               mlp_hidden=64)).eval()


def test_last_token_states_are_each_prompts_own_in_batches():
    model = tiny(100)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    together = rp.last_token_states(model, prompts, [0, 2], batch_size=3)
    assert together.shape == (3, 2, 32)
    for i, prompt in enumerate(prompts):
        caught = {}
        hooks = [model.transformer.h[k].register_forward_hook(
            lambda m, a, o, k=k: caught.__setitem__(k, o[0, -1])) for k in (0, 2)]
        model(torch.tensor([prompt]))
        for hook in hooks:
            hook.remove()
        np.testing.assert_allclose(together[i, 0], caught[0].detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(together[i, 1], caught[2].detach().numpy(), atol=1e-5)


def test_the_logistic_fit_equals_scikit_learns():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x @ np.array([1.5, -2.0, 0.5, 0.0, 1.0]) + 0.3 + rng.normal(size=200) > 0).astype(float)
    l2 = 0.01
    weight, bias = rp.fit_logistic(x, y, l2)
    theirs = LogisticRegression(C=1 / (2 * l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(weight, theirs.coef_[0], atol=1e-4)
    assert bias == pytest.approx(theirs.intercept_[0], abs=1e-4)


def test_a_probe_saves_and_loads_and_a_folder_without_one_gives_none(tmp_path):
    probe = rp.train_probe(np.random.default_rng(1).normal(size=(40, 8)), np.arange(40) % 2, layer=1)
    probe.threshold = 0.7
    probe.save(tmp_path)
    assert rp.RefusalProbe.load(tmp_path) == probe
    assert rp.RefusalProbe.load(tmp_path / "nothing") is None


def test_replies_the_probe_declines_begin_with_its_prefix_and_the_others_are_unchanged(tokenizer):
    model = tiny(len(tokenizer))
    chats = [[{"role": "user", "content": t}] for t in ("how do I bake bread?", "tell me a joke about cats", "hi")]
    plain = generate_replies(model, tokenizer, chats, 6)
    states = rp.last_token_states(model, [format_prompt(tokenizer, c) for c in chats], [1])[:, 0]
    direction = states[0] - states[1:].mean(axis=0)  # flags the first chat, only that one
    middle = (states[0] + states[1:].mean(axis=0)) / 2
    probe = rp.RefusalProbe(layer=1, weight=list(50 * direction), bias=float(-50 * direction @ middle), scale=1.0)
    assert (probe.probabilities(states) >= 0.5).tolist() == [True, False, False]
    gated = generate_replies(model, tokenizer, chats, 6, probe=probe)
    assert gated[0].text.startswith("I can't help with") and gated[0].probe_declined
    assert gated[1:] == plain[1:] and not any(r.probe_declined for r in gated[1:])
    pieces = []
    streamed = reply_to(model, tokenizer, chats[0], 6, probe=probe, stream=pieces.append)
    assert streamed == gated[0] and "".join(pieces) == streamed.text


def test_choose_scores_each_sub_topic_with_a_probe_that_never_saw_it():
    rng = np.random.default_rng(0)
    n, c = 120, 6
    kinds = np.array(["harmful", "benign", "everyday"] * (n // 3))
    groups = [f"{k}: topic {i % 10}" for i, k in enumerate(kinds)]
    direction = rng.normal(size=c)
    states = [np.stack([np.stack([rng.normal(size=c) + (2.0 if k == "harmful" else -2.0) * direction
                                  for k in kinds])] * 2, axis=1) for _ in range(2)]  # (n, 2 layers, C), alone, later
    fold = rp.folds(groups)
    assert all(len({fold[i] for i, g in enumerate(groups) if g == group}) == 1 for group in set(groups))
    probe, rows = rp.choose(states, kinds, groups, [3, 5], l2s=(1e-2,))
    assert probe.layer in (3, 5) and len(rows) == 2
    assert all(row["benign declined (alone)"] <= 0.05 and row["benign declined (later turn)"] <= 0.05 for row in rows)
    assert min(row["harmful declined (alone)"] for row in rows) > 0.9  # separable: the held-out sub-topics too


def test_with_a_decline_adapter_only_the_declined_replies_are_written_with_it(tokenizer):
    from utils.finetune import apply_lora

    model = tiny(len(tokenizer))
    chats = [[{"role": "user", "content": t}] for t in ("how do I bake bread?", "tell me a joke about cats", "hi")]
    plain = generate_replies(model, tokenizer, chats, 6)
    states = rp.last_token_states(model, [format_prompt(tokenizer, c) for c in chats], [1])[:, 0]
    direction, middle = states[0] - states[1:].mean(axis=0), (states[0] + states[1:].mean(axis=0)) / 2
    probe = rp.RefusalProbe(layer=1, weight=list(50 * direction), bias=float(-50 * direction @ middle), scale=1.0)
    apply_lora(model, r=2, alpha=4, target_modules=["transformer.h.2.mlp.c_fc"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 5.0)  # an adapter that changes what the model writes
    gated = generate_replies(model, tokenizer, chats, 6, probe=probe)
    assert gated[1:] == plain[1:]  # not declined: written with the adapter off, as before
    always_on = generate_replies(model, tokenizer, chats[:1], 6, starts=["I can't help with"])[0]
    assert gated[0].token_ids == always_on.token_ids  # declined: written with the adapter on
