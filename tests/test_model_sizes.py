"""The size calculator on the Llama layout: SmolLM2-135M counted on paper, as built, and as published."""

import torch

from utils.model import GPT, GPTConfig
from utils.model_sizes import GPT_PRESETS, PUBLISHED_PARAMETERS, count_parameters, training_memory


def test_smollm2_preset_counts_its_published_parameters_exactly():
    config = GPT_PRESETS["smollm2-135m"]
    assert config.layout == "llama" and (config.n_head, config.kv_heads, config.hidden_size) == (9, 3, 1536)
    assert count_parameters(config) == PUBLISHED_PARAMETERS["smollm2-135m"] == 134_515_008
    with torch.device("meta"):  # the real module, without allocating its 135 M values
        model = GPT(config)
    assert model.num_parameters() == count_parameters(config)


def test_llama_count_follows_each_field():
    base = GPTConfig.llama(vocab_size=100, block_size=16, n_layer=2, n_head=4, n_embd=32, mlp_hidden=48)
    with torch.device("meta"):
        for overrides in ({}, {"n_kv_head": 1}, {"n_kv_head": 2}, {"tie_embeddings": False}, {"mlp_hidden": 80}):
            config = GPTConfig(**{**base.__dict__, **overrides})
            assert GPT(config).num_parameters() == count_parameters(config), overrides
    # fewer key/value heads: the key and value projections shrink, nothing else
    full, grouped = base, GPTConfig(**{**base.__dict__, "n_kv_head": 1})
    assert count_parameters(full) - count_parameters(grouped) == 2 * 2 * 32 * (32 - 8)  # 2 layers, k and v


def test_training_memory_works_for_the_llama_layout():
    parts = training_memory(GPT_PRESETS["smollm2-135m"], batch_size=1, seq_len=512)
    assert parts["weights"] == 4 * 134_515_008
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
