"""DPO from scratch (utils/alignment.py) and the pluggable loss of utils/training.py it trains through.

Tiny models (2 layers, 32 dims) and a few tokens: seconds. The TRL comparison imports
``trl`` (about half a minute on a busy machine) and is skipped where it is not installed.
"""

import math

import numpy as np
import pytest
import torch

from utils import training
from utils.model import GPT, GPTConfig
from utils.training import TrainConfig, get_batch, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TEXT = "the quick brown fox jumps over the lazy dog. " * 60
CHARS = sorted(set(TEXT))
IDS = np.array([CHARS.index(c) for c in TEXT], dtype=np.uint16)


def tiny_model(seed=0, vocab_size=len(CHARS), **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**dict(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32),
                            **overrides}))


def tiny_cfg(**overrides) -> TrainConfig:
    base = dict(batch_size=4, block_size=16, max_iters=6, learning_rate=3e-3, min_lr=3e-4, warmup_iters=2,
                eval_interval=3, eval_iters=2, log_interval=1, progress=False, verbose=False, checkpoint=False)
    return TrainConfig(**{**base, **overrides})


# ---------------------------------------------------------------- the training loop's pluggable loss


def test_token_loss_as_loss_fn_trains_exactly_like_the_default():
    """The pluggable path with the default loss gives the same weights and losses, bit for bit."""
    plain, plugged = tiny_model(), tiny_model()
    a = train(plain, IDS, IDS, tiny_cfg())
    b = train(plugged, IDS, IDS, tiny_cfg(), loss_fn=training.token_loss)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["val_loss"] == b["val_loss"]
    for (name, p), q in zip(plain.state_dict().items(), plugged.state_dict().values()):
        assert torch.equal(p, q), name


def test_a_custom_loss_fn_is_what_trains_and_what_is_logged():
    """A loss that only pushes one logit up: the loop logs it and the model follows it, not cross-entropy."""
    calls = []

    def push_token_zero(model, batch):
        x, _ = batch
        logits, _ = model(x)
        calls.append(model.training)
        return -logits[..., 0].mean(), torch.tensor(x.size(0))

    model = tiny_model()
    metrics = train(model, IDS, IDS, tiny_cfg(max_iters=8, eval_interval=8), loss_fn=push_token_zero)
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0] - 0.5  # the logit of token 0 went up (cross-entropy would not do that)
    assert math.isfinite(metrics["val_loss"]) and metrics["val_loss"] < losses[0]
    assert True in calls and False in calls  # training steps and eval-mode validation both used it


def test_a_loss_fn_weighs_equal_micro_batches_like_one_batch(monkeypatch):
    """Two micro-batches of 4 with a loss_fn give the gradient of one batch of 8 (to float rounding)."""
    x, y = get_batch(IDS, 8, 16, np.random.default_rng(0))
    grads = []

    def run(batches, accum):
        calls = iter(range(10**6))
        model = tiny_model()
        make = training.make_optimizer

        def watched(m, cfg, device_type="cpu"):
            optimizer = make(m, cfg, device_type)
            optimizer.register_step_pre_hook(lambda opt, *_: grads.append(
                [p.grad.clone() for g in opt.param_groups for p in g["params"]]))
            return optimizer

        monkeypatch.setattr(training, "make_optimizer", watched)
        train(model, cfg=tiny_cfg(max_iters=1, grad_accum_steps=accum, grad_clip=0.0, eval_interval=100),
              batch_fn=lambda split, g: batches[next(calls) % len(batches)], loss_fn=training.token_loss)
        return grads[-1]

    one = run([(x, y)], 1)
    two = run([(x[:4], y[:4]), (x[4:], y[4:])], 2)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- sequence_logprobs and dpo_loss

from utils.alignment import (  # noqa: E402
    DPOConfig,
    DPOLoss,
    adapters_disabled,
    dpo_loss,
    logprobs,
    pad_right,
    pair_rewards,
    preference_accuracy,
    replies_kl,
    reply_kl,
    scored_logprobs,
    sequence_logprobs,
    train_dpo,
)
from utils.finetune import apply_lora  # noqa: E402


def llama_model(vocab_size=64, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.llama(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                               mlp_hidden=64)).eval()


def test_sequence_logprobs_sums_log_p_of_the_labelled_tokens_after_the_shift():
    model = llama_model()
    ids = torch.randint(0, 64, (3, 10))
    labels = ids.clone()
    labels[:, :6] = -100  # a prompt of 6 tokens, a reply of 4
    logps = torch.log_softmax(model(ids)[0], dim=-1)  # (B, T, V)
    by_hand = torch.stack([sum(logps[b, t - 1, ids[b, t]] for t in range(6, 10)) for b in range(3)])
    torch.testing.assert_close(sequence_logprobs(model, ids, labels), by_hand)
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)  # right padding, labels -100
    padded_labels = torch.cat([labels, torch.full((3, 5), -100)], dim=1)
    torch.testing.assert_close(sequence_logprobs(model, padded, padded_labels), by_hand)
    unshifted = torch.stack([sum(logps[b, t, ids[b, t]] for t in range(6, 10)) for b in range(3)])
    assert not torch.allclose(unshifted, by_hand)  # scoring a token by the logits that see it is another number


def test_dpo_loss_is_ln2_when_the_policy_is_the_reference_and_falls_as_the_chosen_reply_gains():
    logps = torch.tensor([-12.0, -30.0])
    loss, chosen, rejected = dpo_loss(logps, logps - 3, logps, logps - 3, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and torch.equal(chosen, torch.zeros(2))
    assert torch.equal(rejected, torch.zeros(2))
    loss2, chosen2, rejected2 = dpo_loss(logps + 2, logps - 3, logps, logps - 3, beta=0.1)
    torch.testing.assert_close(chosen2, torch.tensor([0.2, 0.2]))
    assert loss2.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.2))))
    policy = torch.zeros(2, requires_grad=True)
    dpo_loss(policy, torch.zeros(2), torch.zeros(2), torch.zeros(2))[0].backward()
    assert (policy.grad < 0).all()  # descending the loss raises the chosen reply's log-probability


# ---------------------------------------------------------------- the same batch in TRL


def test_dpo_loss_equals_trls_dpo_trainer_on_the_same_batch(tmp_path):
    """Our sequence_logprobs + dpo_loss on our GPT == TRL's DPOTrainer.compute_loss on the same weights and batch."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from utils.tokenization import gpt2_reference_tokenizer

    tokenizer = gpt2_reference_tokenizer()
    policy, reference = llama_model(len(tokenizer), seed=0), llama_model(len(tokenizer), seed=1)
    with torch.no_grad():  # a reference that differs from the policy everywhere
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # bf16=False: TRL 1.x defaults to bf16 and accelerate then runs the reference model under bf16 autocast,
    # even on a CPU (a difference of about 1e-4 in the loss); both sides compute in float32 here.
    args = trl.DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, beta=0.25,
                         dataloader_num_workers=0)
    trainer = trl.DPOTrainer(model=policy.to_hf(), ref_model=reference.to_hf(), args=args,
                             train_dataset=Dataset.from_list([{"prompt": "Hi", "chosen": " hello", "rejected": " no"}]),
                             processing_class=tokenizer)
    examples = [{"prompt_ids": [11, 12, 13], "chosen_ids": [14, 15, 16, 50], "rejected_ids": [17]},
                {"prompt_ids": [21, 22], "chosen_ids": [23], "rejected_ids": [24, 25, 26, 27, 28]},
                {"prompt_ids": [31], "chosen_ids": [32, 33], "rejected_ids": [34, 35]}]
    batch = DataCollatorForPreference(pad_token_id=tokenizer.eos_token_id)(examples)
    trainer.model.train()  # TRL logs under "train" (dropout is 0 in both models)
    trl_loss = trainer.compute_loss(trainer.model, batch).item()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)  # TRL's own labels
    with torch.no_grad():
        ours_policy = sequence_logprobs(policy, batch["input_ids"], labels)
        ours_reference = sequence_logprobs(reference, batch["input_ids"], labels)
    loss, chosen, rejected = dpo_loss(ours_policy[:3], ours_policy[3:], ours_reference[:3], ours_reference[3:], 0.25)
    assert abs(loss.item() - trl_loss) < 1e-5, (loss.item(), trl_loss)
    assert chosen.mean().item() == pytest.approx(logged["rewards/chosen"], abs=1e-5)
    assert rejected.mean().item() == pytest.approx(logged["rewards/rejected"], abs=1e-5)
    assert (chosen - rejected).mean().item() == pytest.approx(logged["rewards/margins"], abs=1e-5)
    assert ours_policy[:3].mean().item() == pytest.approx(logged["logps/chosen"], abs=1e-4)
    assert abs(loss.item() - math.log(2)) > 1e-3  # a batch where the loss is not the trivial ln 2


# ---------------------------------------------------------------- the reference: the policy with adapters off


def perturb_adapters(model, scale=0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(scale * torch.randn(p.shape, generator=generator))


def test_adapters_disabled_gives_the_base_model_without_a_copy():
    model = llama_model()
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.clone()
    base = sequence_logprobs(model, ids, labels)
    apply_lora(model, r=4, alpha=8, target_modules=["attn.c_attn", "mlp.c_fc"])
    torch.testing.assert_close(sequence_logprobs(model, ids, labels), base, rtol=0, atol=0)  # B = 0 at the start
    perturb_adapters(model)
    policy = sequence_logprobs(model, ids, labels)
    assert not torch.allclose(policy, base)
    n_params = sum(p.numel() for p in model.parameters())
    with adapters_disabled(model):
        torch.testing.assert_close(sequence_logprobs(model, ids, labels), base, rtol=0, atol=0)
        assert sum(p.numel() for p in model.parameters()) == n_params  # nothing copied
    torch.testing.assert_close(sequence_logprobs(model, ids, labels), policy, rtol=0, atol=0)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)  # trainable again after the block
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with adapters_disabled(llama_model()):
            pass


# ---------------------------------------------------------------- batches, training, measuring


def synthetic_pairs(n=6, seed=0) -> list[tuple]:
    """``encode_pairs``' layout: n chosen examples, then n rejected, after shared prompts.

    The chosen reply repeats token 5, the rejected token 9.
    """
    rng = np.random.default_rng(seed)
    chosen, rejected = [], []
    for _ in range(n):
        prompt = rng.integers(10, 60, size=int(rng.integers(3, 7))).tolist()
        good, bad = [5] * int(rng.integers(2, 5)), [9] * int(rng.integers(2, 5))
        chosen.append((prompt + good, [-100] * len(prompt) + good))
        rejected.append((prompt + bad, [-100] * len(prompt) + bad))
    return chosen + rejected


def chat_batches(train_examples, val_examples, batch_size=4):
    from utils.identity_data import ChatBatches

    return ChatBatches(train_examples, val_examples, batch_size, pad_id=0)


def test_scored_logprobs_of_shifted_batches_equal_sequence_logprobs_on_a_gpt_and_on_top_blocks():
    from utils.top_blocks import TopBlocks, block_inputs

    model = llama_model()
    examples = synthetic_pairs(3)
    ids, labels = pad_right(examples, pad_id=0)
    expected = sequence_logprobs(model, ids, labels)
    batches = chat_batches(examples, examples)
    x, y, _ = batches.collate("train", list(range(6)))
    torch.testing.assert_close(scored_logprobs(model, x, y), expected)
    top = TopBlocks(model, 1)
    states = block_inputs(model, [e[0][:-1] for e in examples], top.first)
    xs, ys, _ = batches.with_states({"train": states, "val": states}).collate("train", list(range(6)))
    torch.testing.assert_close(scored_logprobs(top, xs, ys), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(logprobs(model, examples, pad_id=0, batch_size=4)), expected)


def test_dpo_loss_fn_draws_pairs_and_remembers_the_reference():
    model = llama_model()
    examples = synthetic_pairs(3)
    apply_lora(model, r=4, alpha=8, target_modules=["attn.c_attn"])
    perturb_adapters(model)
    loss = DPOLoss(chat_batches(examples, examples, batch_size=3), beta=0.1)
    x, y, _ = loss.batch_fn("train", np.random.default_rng(0))
    split, rows = loss.drawn
    ids, labels = pad_right([examples[r] for r in rows] + [examples[3 + r] for r in rows], pad_id=0)
    with adapters_disabled(model):
        reference = sequence_logprobs(model, ids, labels)
    policy = sequence_logprobs(model, ids, labels)
    expected = dpo_loss(policy[:3], policy[3:], reference[:3], reference[3:], 0.1)[0]
    torch.testing.assert_close(loss.loss_fn(model, (x, y))[0], expected, rtol=1e-5, atol=1e-6)
    remembered = dict(loss.reference)
    assert len(remembered) == len(set(rows)) * 2
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                p.add_(1.0)  # the base changed: a recomputed reference would differ from the remembered one
    loss.drawn = (split, rows)
    loss.loss_fn(model, (x, y))
    assert loss.reference == remembered  # every reference came from what was remembered


def test_the_rpo_term_adds_the_chosen_replies_cross_entropy_per_token():
    model = llama_model()
    examples = synthetic_pairs(2)
    apply_lora(model, r=4, alpha=8, target_modules=["attn.c_attn"])
    plain, rpo = (DPOLoss(chat_batches(examples, examples, batch_size=2), 0.1, w) for w in (0.0, 2.0))
    x, y, _ = plain.batch_fn("train", np.random.default_rng(0))
    rpo.drawn = plain.drawn
    chosen_tokens = (y[:2] != -100).sum()
    policy = scored_logprobs(model, x, y)
    extra = -2.0 * policy[:2].sum() / chosen_tokens
    torch.testing.assert_close(rpo.loss_fn(model, (x, y))[0], plain.loss_fn(model, (x, y))[0] + extra)


@pytest.mark.parametrize("cache", [True, False])
def test_dpo_through_training_train_ranks_the_chosen_replies_first_and_leaves_the_reference_alone(cache):
    model = llama_model()
    train_examples, val_examples = synthetic_pairs(8, seed=0), synthetic_pairs(4, seed=1)
    apply_lora(model, r=4, alpha=8, target_modules=[f"transformer.h.1.{n}" for n in
                                                     ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")])
    with adapters_disabled(model):
        reference = logprobs(model, val_examples, pad_id=0)
    before = pair_rewards(model, val_examples, 0, 0.1, reference)
    assert preference_accuracy(before) == 0.5 and np.all(before.margins == 0)  # policy = reference: all ties
    cfg = DPOConfig(max_iters=12, batch_size=4, beta=0.1, lora_layers=1, learning_rate=1e-2, warmup_iters=1,
                    progress=False, cache_frozen_blocks=cache)
    metrics, loss = train_dpo(model, chat_batches(train_examples, val_examples), cfg)
    after = pair_rewards(model, val_examples, 0, 0.1, reference)
    assert preference_accuracy(after) == 1.0 and after.margins.min() > 0  # held-out pairs ranked right
    assert len(loss.history) == 12 and loss.history[-1]["loss"] < math.log(2)
    assert metrics["val_loss"] < math.log(2) and metrics["iters"] == 12
    with adapters_disabled(model):
        np.testing.assert_allclose(logprobs(model, val_examples, pad_id=0), reference, rtol=1e-6)


def test_reply_kl_is_zero_for_the_reference_and_the_exact_kl_otherwise():
    model = llama_model()
    ids = torch.randint(0, 64, (2, 9))
    labels = ids.clone()
    labels[:, :5] = -100
    apply_lora(model, r=4, alpha=8, target_modules=["attn.c_attn"])
    assert torch.equal(reply_kl(model, None, ids, labels), torch.zeros(2))
    perturb_adapters(model, seed=1)
    kl = reply_kl(model, None, ids, labels)
    p = torch.log_softmax(model(ids)[0], -1)
    with adapters_disabled(model):
        q = torch.log_softmax(model(ids)[0], -1)
    by_hand = sum((p[:, t].exp() * (p[:, t] - q[:, t])).sum(-1) for t in range(4, 8))  # predicts tokens 5..8
    torch.testing.assert_close(kl, by_hand)
    assert (kl > 0).all()
    other = llama_model(seed=3)  # a separate reference model
    q2 = torch.log_softmax(other(ids)[0], -1)
    by_hand2 = sum((p[:, t].exp() * (p[:, t] - q2[:, t])).sum(-1) for t in range(4, 8))
    torch.testing.assert_close(reply_kl(model, other, ids, labels), by_hand2)


def test_replies_kl_is_reply_kl_of_each_reply_in_padded_batches():
    model = llama_model()
    apply_lora(model, r=4, alpha=8, target_modules=["attn.c_attn"])
    perturb_adapters(model, seed=2)
    replies = [([1, 2, 3, 4], [-100, -100, 3, 4]), ([5, 6, 7], [-100, 6, 7]),
               ([2, 3, 4, 5, 6], [-100, -100, -100, 5, 6])]
    one_by_one = [reply_kl(model, None, *pad_right([reply], pad_id=0)).item() for reply in replies]
    assert min(one_by_one) > 0
    np.testing.assert_allclose(replies_kl(model, None, replies, pad_id=0, batch_size=2), one_by_one, rtol=1e-5,
                               atol=1e-7)


def test_ensure_aligned_makes_the_model_once_with_a_message_then_loads_it_with_its_probe(tmp_path, monkeypatch,
                                                                                         capsys):
    from utils import alignment, config
    from utils.refusal_probe import RefusalProbe
    from utils.tokenization import gpt2_reference_tokenizer

    paths = config.Paths(tmp_path, "ci").make()
    cfg = config.CourseConfig(profile=config.PROFILES["ci"], device="cpu", online=False, seed=0, paths=paths)
    tokenizer = gpt2_reference_tokenizer()
    made = []

    def fake_make_aligned(cfg, log=print):  # the real one loads SmolLM2 (07 and the benchmark run it)
        made.append(True)
        probe = RefusalProbe(layer=1, weight=[0.5] * 32, bias=-1.0, scale=2.0, threshold=0.6)
        alignment.save_dpo(llama_model(len(tokenizer)), tokenizer, alignment.dpo_dir(cfg), probe, {"identity": {}})

    monkeypatch.setattr(alignment, "make_aligned", fake_make_aligned)
    model, _, probe = alignment.ensure_aligned(cfg)
    assert "No aligned model in checkpoints/ci/smollm2-dpo yet" in capsys.readouterr().out and made == [True]
    assert isinstance(model, GPT) and probe.threshold == 0.6 and probe.layer == 1
    alignment.ensure_aligned(cfg)
    assert made == [True]  # there now: loaded, not made again


def test_the_aligned_model_saves_its_base_weights_decline_adapter_and_probe_and_loads_them_back(tmp_path):
    from utils import alignment
    from utils.refusal_probe import RefusalProbe, adapters
    from utils.tokenization import gpt2_reference_tokenizer

    tokenizer = gpt2_reference_tokenizer()
    model = llama_model(len(tokenizer))
    base_logits = model(torch.tensor([[1, 2, 3]]))[0]
    apply_lora(model, r=4, alpha=8, target_modules=["transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc"])
    perturb_adapters(model)
    x = torch.tensor([[1, 2, 3]])
    with_adapter = model(x)[0]
    probe = RefusalProbe(layer=1, weight=[0.1] * 32, bias=0.0, scale=1.0, threshold=0.7)
    alignment.save_dpo(model, tokenizer, tmp_path, probe, {"identity": {"name": "Pip"}})
    loaded, _, report = alignment.load_dpo(tmp_path)
    assert report["adapter"]["r"] == 4 and report["adapter"]["alpha"] == 8
    torch.testing.assert_close(loaded(x)[0], base_logits)  # loaded with the adapters off: the model they were added to
    with adapters(loaded, on=True):
        torch.testing.assert_close(loaded(x)[0], with_adapter)  # on (while declining): the decline adapter
    assert RefusalProbe.load(tmp_path) == probe
