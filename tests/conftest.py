"""Fixtures shared by the unit tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Models this small run faster on one thread (two wait on each other, badly on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_hf_gpt2():
    """Builds a randomly initialised ``transformers`` GPT2LMHeadModel of a given tiny shape (the hub is offline)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def build(vocab_size, block_size, n_layer, n_head, n_embd, seed=0):
        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_layer=n_layer, n_head=n_head,
                            n_embd=n_embd, bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")
        return GPT2LMHeadModel(config).eval()

    return build


# A chat template of its own, as SmolLM2 has: <|im_start|>role\ntext<|im_end|>\n, eos = <|im_end|>.
IM_TEMPLATE = ("{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + "
               "'<|im_end|>\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
               "{%- endif -%}")


@pytest.fixture(scope="module")
def own_template():
    """A tokenizer with its own chat format (no course tokens), like SmolLM2's: GPT-2's BPE, <|im_start|> and <|im_end|>."""
    from utils.tokenization import gpt2_reference_tokenizer

    tokenizer = gpt2_reference_tokenizer()
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = IM_TEMPLATE
    return tokenizer
