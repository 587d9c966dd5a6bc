"""The GPT of utils/model.py: shapes, causality, the loss, equivalence with transformers'
GPT-2, parameter counts, KV-cache generation and sampling. Tiny configs: a few seconds."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from utils.model import GPT, GPTConfig, KVCache, filter_logits, left_pad, sample_next_token
from utils.model_sizes import (
    GPT_PRESETS,
    PUBLISHED_PARAMETERS,
    count_parameters,
    flops_per_token,
    largest_batch_that_fits,
    training_memory,
)

TINY = dict(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)
LOGIT_TOLERANCE = 1e-5  # fp32; the measured max |difference| is ~3e-7


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=g)


# ---- shapes, causality, attention paths ----


def test_forward_shapes_and_no_loss_without_targets():
    model = tiny_model()
    logits, loss = model(random_ids(3, 17))
    assert logits.shape == (3, 17, TINY["vocab_size"])  # every position, not only the last
    assert loss is None


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    model = tiny_model()
    ids = random_ids(2, 32)
    changed = ids.clone()
    changed[:, 20] = (changed[:, 20] + 1) % TINY["vocab_size"]
    for kind in ("sdpa", "explicit"):
        model.set_attention(kind)
        before, after = model(ids)[0], model(changed)[0]
        assert torch.equal(before[:, :20], after[:, :20]), kind
        assert not torch.allclose(before[:, 20:], after[:, 20:]), kind


def test_sdpa_and_explicit_attention_agree():
    model = tiny_model()
    ids = random_ids(3, 64)
    fast = model(ids)[0]
    explicit = copy.deepcopy(model).set_attention("explicit")(ids)[0]
    assert (fast - explicit).abs().max().item() < LOGIT_TOLERANCE


def test_too_long_prompt_says_the_length_the_block_size_and_to_crop():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"65 tokens.*block_size is 64.*crop"):
        model(random_ids(1, 65))


def test_bad_config_says_what_to_do():
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="attention"):
        GPTConfig(attention="flash")
    with pytest.raises(ValueError, match="n_kv_head=3 must divide n_head=4"):
        GPTConfig(n_embd=64, n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="norm"):
        GPTConfig(norm="batchnorm")


# ---- the loss ----


def test_loss_is_cross_entropy_on_targets_the_caller_shifted():
    model = tiny_model()
    text = random_ids(4, 33)
    idx, targets = text[:, :-1], text[:, 1:]  # the shift happens here, in the caller
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits.reshape(-1, TINY["vocab_size"]), targets.reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)
    # a random model predicts about uniformly: loss ~ ln(65)
    assert abs(loss.item() - math.log(TINY["vocab_size"])) < 0.5


def test_loss_ignores_minus_100():
    model = tiny_model()
    text = random_ids(2, 33)
    idx, targets = text[:, :-1], text[:, 1:].clone()
    targets[:, :10] = -100  # e.g. prompt tokens during fine-tuning
    logits, loss = model(idx, targets)
    kept = logits[:, 10:].reshape(-1, TINY["vocab_size"])
    assert torch.allclose(loss, F.cross_entropy(kept, targets[:, 10:].reshape(-1)), atol=1e-6)
    with pytest.raises(ValueError, match="targets"):
        model(idx, targets[:, :-1])


# ---- weights: tying, init, transformers ----


def test_lm_head_is_tied_to_the_token_embedding():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_gpt2_initialization():
    model = GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=8, n_head=4, n_embd=256))
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    residual_std = 0.02 / math.sqrt(2 * 8)
    assert abs(model.transformer.h[0].mlp.c_proj.weight.std().item() - residual_std) < 0.001
    assert abs(model.transformer.h[0].attn.c_proj.weight.std().item() - residual_std) < 0.001
    assert model.transformer.h[0].attn.c_attn.bias.abs().max().item() == 0.0


def test_from_hf_gives_transformers_logits(make_hf_gpt2):
    hf = make_hf_gpt2(**TINY)
    ours = GPT.from_hf(hf).eval()
    ids = random_ids(3, 64)
    with torch.no_grad():
        difference = (ours(ids)[0] - hf(ids).logits).abs().max().item()
    print(f"from_hf: max |logit difference| = {difference:.2e}")
    assert difference < LOGIT_TOLERANCE
    assert ours.num_parameters() == hf.num_parameters()


def test_to_hf_gives_our_logits_and_round_trips():
    ours = tiny_model(seed=3)
    hf = ours.to_hf().eval()
    ids = random_ids(3, 64)
    with torch.no_grad():
        difference = (ours(ids)[0] - hf(ids).logits).abs().max().item()
    print(f"to_hf: max |logit difference| = {difference:.2e}")
    assert difference < LOGIT_TOLERANCE
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # still tied
    back = GPT.from_hf(hf)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, back.state_dict()[name]), name


def test_training_gradients_equal_transformers():
    """Same weights, same batch: the same loss and the same gradients (what the step benchmark compares)."""
    from utils.model import CONV1D_WEIGHTS

    ours = tiny_model(seed=4).train()  # dropout 0: train mode changes nothing but the flags
    hf = ours.to_hf().train()
    text = random_ids(3, 33)
    idx, targets = text[:, :-1].contiguous(), text[:, 1:].contiguous()  # transformers' loss needs views
    _, loss = ours(idx, targets)
    hf_loss = hf(input_ids=idx, labels=targets, shift_labels=targets).loss  # already shifted
    assert abs(loss.item() - hf_loss.item()) < 1e-6
    loss.backward()
    hf_loss.backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        g = theirs[name].grad
        g = g.t() if name.endswith(CONV1D_WEIGHTS) else g  # Conv1D (in, out) -> Linear (out, in)
        assert (p.grad - g).abs().max().item() < 1e-6, name


def test_to_hf_without_biases_uses_zero_biases():
    ours = tiny_model(bias=False)
    hf = ours.to_hf().eval()
    ids = random_ids(2, 16)
    with torch.no_grad():
        assert (ours(ids)[0] - hf(ids).logits).abs().max().item() < LOGIT_TOLERANCE


# ---- parameter counts, FLOPs, memory ----


def test_num_parameters_matches_the_analytic_count():
    for overrides in ({}, {"bias": False}, {"n_layer": 3, "n_embd": 96, "n_head": 3}):
        model = tiny_model(**overrides)
        assert model.num_parameters() == count_parameters(model.config)
        assert model.num_parameters(non_embedding=True) == count_parameters(model.config, non_embedding=True)


def test_presets_match_published_parameter_counts():
    assert count_parameters(GPT_PRESETS["gpt2"]) == 124_439_808  # exactly, with tied embeddings
    for name in ("gpt2-medium", "gpt2-large", "gpt2-xl"):  # released checkpoints: exact
        assert count_parameters(GPT_PRESETS[name]) == PUBLISHED_PARAMETERS[name], name
    assert abs(count_parameters(GPT_PRESETS["gpt3-175b"]) / 175e9 - 1) < 0.01  # within 1%
    assert abs(count_parameters(GPT_PRESETS["gpt1"]) / 117e6 - 1) < 0.01
    for name in GPT_PRESETS:  # GPT-3 Table 2.1 rounds to 2-3 significant figures: within 2%
        assert abs(count_parameters(GPT_PRESETS[name]) / PUBLISHED_PARAMETERS[name] - 1) < 0.02, name


def test_flops_and_memory_estimates():
    gpt2 = GPT_PRESETS["gpt2"]
    n = count_parameters(gpt2, non_embedding=True)
    assert flops_per_token(gpt2) == 6 * n + 12 * 12 * 1024 * 768
    memory = training_memory(gpt2, batch_size=8)
    assert memory["weights"] == memory["gradients"] == 4 * 124_439_808
    assert memory["optimizer_states"] == 2 * memory["weights"]  # AdamW: m and v
    assert memory["total"] == sum(v for k, v in memory.items() if k != "total")
    assert training_memory(gpt2, 16)["activations"] > memory["activations"]
    t4 = 16e9
    assert largest_batch_that_fits(gpt2, t4) >= 1  # GPT-2 small trains on a T4
    assert largest_batch_that_fits(GPT_PRESETS["gpt2-xl"], t4) == 0  # XL does not (fp32 AdamW)


# ---- generation ----


@pytest.mark.parametrize("kind", ["sdpa", "explicit"])
def test_cached_greedy_generation_equals_uncached_past_block_size(kind):
    model = tiny_model(seed=5).set_attention(kind)
    prompt = random_ids(2, 10)
    new = 80  # 10 + 80 > block_size 64: the window slides
    cached = model.generate(prompt, new, temperature=0, use_cache=True)
    uncached = model.generate(prompt, new, temperature=0, use_cache=False)
    assert cached.shape == (2, 90)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :10], prompt)


LAYOUTS = {"gpt2": {}, "llama": dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, n_kv_head=2)}


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("kind", ["sdpa", "explicit"])
@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_prompts_of_different_lengths_in_one_batch_equal_their_own_greedy_output(layout, kind, use_cache):
    """Left padding with a mask: each row gets exactly the tokens its prompt gets alone, past block_size too."""
    model = tiny_model(seed=7, **LAYOUTS[layout]).set_attention(kind)
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (3, 17, 9, 30)]
    new = 40  # 30 + 40 > block_size 64: the longest row's window slides, the shortest's does not
    idx, attention_mask = left_pad(prompts, pad_id=0)
    batched = model.generate(idx, new, temperature=0, use_cache=use_cache, attention_mask=attention_mask)
    assert batched.shape == (4, 30 + new)
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), new, temperature=0, use_cache=use_cache)  # (1, T + new)
        assert batched[row, -new:].tolist() == alone[0, len(prompt):].tolist(), (layout, kind, row)


def test_padded_forward_gives_each_row_its_own_logits():
    """A padded row's logits at its real tokens equal the logits of its tokens alone; padding never leaks (no NaN)."""
    for overrides in LAYOUTS.values():
        model = tiny_model(seed=3, **overrides)
        prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (5, 12)]
        idx, attention_mask = left_pad(prompts, pad_id=7)
        logits = model(idx, attention_mask=attention_mask)[0]  # (2, 12, V)
        assert torch.isfinite(logits).all()
        for row, prompt in enumerate(prompts):
            alone = model(torch.tensor([prompt]))[0][0]  # (T, V)
            assert (logits[row, -len(prompt):] - alone).abs().max().item() < LOGIT_TOLERANCE


def test_padding_must_be_on_the_left():
    model = tiny_model()
    idx, attention_mask = left_pad([[1, 2, 3], [4]])
    with pytest.raises(ValueError, match="left"):
        model.generate(idx, 2, temperature=0, attention_mask=attention_mask.flip(1))
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []])


def test_repetition_penalty_ignores_padding():
    """The pad id is not a token the row has written: penalizing it would change the row's output."""
    model = tiny_model(seed=2)
    prompts = [[5, 6, 7], [8, 9, 10, 12, 13, 14]]
    alone = model.generate(torch.tensor([prompts[0]]), 8, temperature=0, repetition_penalty=50.0)[0, 3:].tolist()
    pad_id = alone[0]  # the token row 0 writes first: a penalized pad would forbid it
    assert pad_id not in prompts[0]
    idx, attention_mask = left_pad(prompts, pad_id=pad_id)
    batched = model.generate(idx, 8, temperature=0, repetition_penalty=50.0, attention_mask=attention_mask)
    assert batched[0, -8:].tolist() == alone


def test_cached_forward_gives_the_full_forward_logits():
    model = tiny_model()
    ids = random_ids(2, 20)
    full = model(ids)[0]
    cache = KVCache(model.config.n_layer)
    first = model(ids[:, :12], cache=cache)[0]  # prefill 12 tokens
    middle = model(ids[:, 12:15], cache=cache)[0]  # 3 tokens at once: needs the offset mask
    last = model(ids[:, 15:16], cache=cache)[0]  # one token
    stepwise = torch.cat([first, middle, last], dim=1)
    assert len(cache) == 16
    assert (stepwise - full[:, :16]).abs().max().item() < LOGIT_TOLERANCE


def test_long_prompt_is_cropped_by_generate():
    model = tiny_model()
    prompt = random_ids(1, 100)  # longer than block_size: generate keeps the last 64
    out = model.generate(prompt, 3, temperature=0)
    assert torch.equal(out, model.generate(prompt, 3, temperature=0, use_cache=False))
    assert out.shape == (1, 103)


def test_sampling_is_reproducible_with_a_generator_and_restores_training_mode():
    model = tiny_model().train()
    prompt = random_ids(2, 5)
    a = model.generate(prompt, 20, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 20, generator=torch.Generator().manual_seed(0), use_cache=False)
    assert torch.equal(a, b)
    assert model.training


def test_generation_stops_at_a_stop_id_and_streams_the_other_tokens():
    model = tiny_model()
    prompt = random_ids(1, 5)
    greedy = model.generate(prompt, 10, temperature=0)
    eos = greedy[0, 7].item()  # the 3rd generated token
    streamed = []
    out = model.generate(prompt, 10, temperature=0, stop_ids=[eos], on_token=streamed.append)
    stop = (greedy[0, 5:] == eos).nonzero()[0].item() + 5
    assert torch.equal(out, greedy[:, : stop + 1])  # the stop token is kept
    assert streamed == greedy[0, 5:stop].tolist()  # every token before it, not the stop itself
    with pytest.raises(ValueError, match="one conversation"):
        model.generate(random_ids(2, 5), 3, on_token=print)


def test_finished_rows_repeat_their_stop_token_while_others_go_on():
    model = tiny_model(seed=2)
    prompt = random_ids(2, 5, seed=3)
    greedy = model.generate(prompt, 12, temperature=0)
    stop = greedy[0, 6].item()  # row 0 stops at its 2nd new token
    out = model.generate(prompt, 12, temperature=0, stop_ids=[stop])
    first = (greedy[0, 5:] == stop).nonzero()[0].item() + 5
    assert (out[0, first:] == stop).all()
    row1_stops = (greedy[1, 5:] == stop).nonzero()
    end = row1_stops[0].item() + 6 if len(row1_stops) else greedy.size(1)
    assert torch.equal(out[1, :end], greedy[1, :end])


def test_repetition_penalty_equals_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    from utils.model import penalize_repetition

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    idx = torch.randint(0, 50, (3, 12), generator=g)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(idx, logits.clone())
    assert torch.allclose(penalize_repetition(logits, idx, 1.3), theirs)
    model = tiny_model()
    prompt = random_ids(1, 5)
    plain = model.generate(prompt, 30, temperature=0)
    penalized = model.generate(prompt, 30, temperature=0, repetition_penalty=1.5)
    assert not torch.equal(plain, penalized)


def test_top_p_one_changes_nothing_and_top_p_equals_transformers():
    from transformers import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 50_000, generator=g) * 3  # a GPT-2-sized vocabulary, a peaked distribution
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)
    for p in (0.5, 0.9, 0.99):
        ours = torch.isfinite(filter_logits(logits, top_p=p))
        theirs = torch.isfinite(TopPLogitsWarper(p)(None, logits.clone()))
        assert (ours != theirs).sum().item() <= 2, p  # at most the boundary token of each row differs


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    top2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(top2).tolist() == [[True, True, False, False, False]]
    nucleus = filter_logits(logits, top_p=0.8)  # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15
    assert torch.isfinite(nucleus).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.4)).sum() == 1  # the top token always stays
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next_token(logits, 1.0, top_k=2, generator=g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}
    draws = torch.cat([sample_next_token(logits, 1.0, top_p=0.8, generator=g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1, 2}
    model = tiny_model()
    prompt = random_ids(2, 5)
    assert torch.equal(model.generate(prompt, 10, top_k=1), model.generate(prompt, 10, temperature=0))
    with pytest.raises(ValueError, match="temperature"):
        sample_next_token(logits, -1.0)


# ---- the Llama layout: RMSNorm, RoPE, SwiGLU, grouped-query attention ----

LLAMA_TINY = dict(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64, mlp_hidden=96)


def make_hf_llama(n_kv_head: int, tied: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=65, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=n_kv_head, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 500.0}, rms_norm_eps=1e-6,
                         tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # transformers starts the norms at 1: make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
    return model


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_llama_from_hf_gives_transformers_logits(n_kv_head, tied):
    hf = make_hf_llama(n_kv_head, tied)
    ours = GPT.from_hf(hf).eval()
    assert ours.config.layout == "llama" and ours.config.kv_heads == n_kv_head
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == tied
    ids = random_ids(3, 64)
    with torch.no_grad():
        difference = (ours(ids)[0] - hf(ids).logits).abs().max().item()
    print(f"Llama from_hf (n_kv_head={n_kv_head}, tied={tied}): max |logit difference| = {difference:.2e}")
    assert difference < 1e-4
    assert ours.num_parameters() == hf.num_parameters() == count_parameters(ours.config)


@pytest.mark.parametrize("tied", [True, False])
def test_llama_to_hf_gives_our_logits_and_round_trips(tied):
    torch.manual_seed(7)
    ours = GPT(GPTConfig.llama(**LLAMA_TINY, n_kv_head=2, rope_theta=500.0, tie_embeddings=tied)).eval()
    hf = ours.to_hf().eval()
    ids = random_ids(2, 40)
    with torch.no_grad():
        assert (ours(ids)[0] - hf(ids).logits).abs().max().item() < 1e-4
    back = GPT.from_hf(hf)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, back.state_dict()[name]), name


def test_a_mixed_layout_trains_but_has_no_transformers_class():
    model = tiny_model(norm="rmsnorm")  # GPT-2 otherwise
    assert model.config.layout == "custom"
    model(random_ids(1, 8))
    with pytest.raises(ValueError, match="mixes GPT-2 and Llama"):
        model.to_hf()


def test_from_hf_refuses_what_it_cannot_convert():
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(vocab_size=65, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                      num_attention_heads=4, attention_bias=True))
    with pytest.raises(ValueError, match="attention_bias=True"):
        GPT.from_hf(hf)
    bert_like = SimpleNamespace(config=SimpleNamespace(model_type="bert"))
    with pytest.raises(ValueError, match="converts GPT2LMHeadModel"):
        GPT.from_hf(bert_like)


@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_llama_kv_cache_equals_the_full_forward_and_shrinks_with_grouped_query_attention(n_kv_head):
    torch.manual_seed(1)
    model = GPT(GPTConfig.llama(**LLAMA_TINY, n_kv_head=n_kv_head)).eval()
    ids = random_ids(2, 20)
    full = model(ids)[0]
    cache = KVCache(model.config.n_layer)
    stepwise = torch.cat([model(ids[:, :12], cache=cache)[0], model(ids[:, 12:15], cache=cache)[0],
                          model(ids[:, 15:16], cache=cache)[0]], dim=1)
    assert (stepwise - full[:, :16]).abs().max().item() < LOGIT_TOLERANCE
    # keys and values of 2 layers x 16 positions x 2 rows x n_kv_head heads of 16 channels, fp32
    assert cache.num_bytes() == 2 * 2 * 16 * 2 * n_kv_head * 16 * 4
    prompt = random_ids(2, 10)
    assert torch.equal(model.generate(prompt, 70, temperature=0), model.generate(prompt, 70, temperature=0,
                                                                                  use_cache=False))
