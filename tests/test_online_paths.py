"""The online code paths, run offline on tiny folders in the hub's own formats.

On Colab these functions fetch from the Hugging Face hub; here the same functions read
local folders written the way the hub stores them, so a change that breaks the online
path fails a test instead of a learner's notebook:

- a conversation dataset shaped like OpenAssistant/oasst1 (``utils.data.load_hub_conversations``,
  through ``load_conversations``): the hub's parquet files, jsonl files, and ``save_to_disk``;
- GPT-2 weights (``GPT.from_pretrained``) and 05's online perplexity of GPT-2
  (``GPT2LMHeadModel.from_pretrained`` + ``evaluation.documents_nats``);
- SmolLM2 from the hub (``utils.pretrained.load_smollm2(source=...)``): weights and chat template.

Every fixture is built in ``tmp_path`` at a few KB to a few MB (GPT-2's 50,257-token vocabulary).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils import data, evaluation
from utils.model import GPT

# --------------------------------------------------------------------------- a conversation dataset


def oasst_row(message_id, parent_id, role, text, tree, lang="en", rank=None, deleted=False, review_result=True):
    """One row with every column of OpenAssistant/oasst1 on the hub, with its types."""
    return {
        "message_id": message_id, "parent_id": parent_id, "user_id": f"user-{message_id}",
        "created_date": "2023-02-05T14:23:50.983374+00:00", "text": text, "role": role, "lang": lang,
        "review_count": 3, "review_result": review_result, "deleted": deleted, "rank": rank,
        "synthetic": False, "model_name": None,
        "detoxify": {"toxicity": 0.0003, "severe_toxicity": 0.00003, "obscene": 0.0001, "identity_attack": 0.0001,
                     "insult": 0.0002, "threat": 0.00004, "sexual_explicit": 0.00002},
        "message_tree_id": tree, "tree_state": "ready_for_export",
        "emojis": {"name": ["+1"], "count": [2]},
        "labels": {"name": ["spam", "quality"], "value": [0.0, 0.75], "count": [3, 3]},
    }


# oasst1 splits by message tree: train and validation never share one.
TRAIN_ROWS = [
    oasst_row("r1", None, "prompter", "What is a prime number?", "r1"),
    oasst_row("a1", "r1", "assistant", "A worse answer.", "r1", rank=1),
    oasst_row("a2", "r1", "assistant", "A number with exactly two divisors.", "r1", rank=0),
    oasst_row("p1", "a2", "prompter", "Is 1 prime?", "r1"),
    oasst_row("a3", "p1", "assistant", "No: it has one divisor.", "r1"),
    oasst_row("r2", None, "prompter", "Hola, ¿qué tal?", "r2", lang="es"),
    oasst_row("a4", "r2", "assistant", "Bien, gracias.", "r2", lang="es"),
    oasst_row("r3", None, "prompter", "Spam spam spam", "r3", review_result=False),
    oasst_row("r4", None, "prompter", "Tell me a joke.", "r4"),
    oasst_row("a5", "r4", "assistant", "Deleted reply.", "r4", rank=0, deleted=True),
    oasst_row("a6", "r4", "assistant", "Why did the GPT cross the road?", "r4", rank=1),
]
VALIDATION_ROWS = [
    oasst_row("r5", None, "prompter", "How do I boil an egg?", "r5"),
    oasst_row("a7", "r5", "assistant", "Put it in boiling water for eight minutes.", "r5", rank=0),
]


def hub_dataset_dict():
    import datasets

    return datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN_ROWS),
                                 "validation": datasets.Dataset.from_list(VALIDATION_ROWS)})


def write_hub_files(folder, kind: str):
    """The dataset as a hub repository stores it: data/<split>-00000-of-00001.<ext> (oasst1: parquet)."""
    (folder / "data").mkdir(parents=True)
    for split, rows in hub_dataset_dict().items():
        path = folder / "data" / f"{split}-00000-of-00001.{kind}"
        rows.to_parquet(str(path)) if kind == "parquet" else rows.to_json(str(path), lines=True)
    return folder


@pytest.fixture
def private_datasets_cache(tmp_path, monkeypatch):
    """``load_dataset`` of a local folder writes an Arrow cache: keep it in tmp_path, not in ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


@pytest.fixture(params=["parquet", "jsonl", "save_to_disk"])
def oasst_folder(request, tmp_path, private_datasets_cache):
    folder = tmp_path / "oasst1"
    if request.param == "save_to_disk":
        hub_dataset_dict().save_to_disk(str(folder))
        return folder
    return write_hub_files(folder, request.param)


def test_hub_conversations_from_every_hub_format_as_flatten_gives_them(oasst_folder):
    conversations = data.load_hub_conversations(str(oasst_folder))
    expected = data.flatten_message_tree(TRAIN_ROWS + VALIDATION_ROWS, source=str(oasst_folder),
                                         license=f"see {oasst_folder}")
    assert [c["id"] for c in conversations] == ["r1", "r4", "r5"]  # Spanish, failed review left out; both splits
    assert [c["messages"] for c in conversations] == [c["messages"] for c in expected]
    assert [m["content"] for m in conversations[0]["messages"]] == [
        "What is a prime number?", "A number with exactly two divisors.", "Is 1 prime?", "No: it has one divisor."]
    assert conversations[1]["messages"][1]["content"] == "Why did the GPT cross the road?"  # the deleted reply is gone
    assert {c["source"] for c in conversations} == {str(oasst_folder)}
    assert data.load_hub_conversations(oasst_folder, max_conversations=1, lang="es")[0]["id"] == "r2"


def test_load_conversations_adds_the_hub_dataset_online(tmp_path, private_datasets_cache, capsys):
    folder = write_hub_files(tmp_path / "oasst1", "parquet")
    conversations = data.load_conversations(str(folder), online=True, max_conversations=2)
    assert [c["source"] for c in conversations] == [data.CHITCHAT] * 2 + [str(folder)] * 2
    assert "Added 2 conversations" in capsys.readouterr().out
    for conversation in conversations:
        data.validate_conversation(conversation)


def test_a_dataset_of_another_shape_is_refused_with_the_missing_columns(tmp_path, private_datasets_cache):
    import datasets

    folder = tmp_path / "dialogues"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"dialog": ["hi", "hello"]}])}).save_to_disk(str(folder))
    with pytest.raises(data.DataFormatError, match="message_id, parent_id, role, text"):
        data.load_hub_conversations(str(folder))
    # load_conversations goes on with the embedded chats and says why
    conversations = data.load_conversations(str(folder), online=True, max_conversations=1)
    assert [c["source"] for c in conversations] == [data.CHITCHAT]


# --------------------------------------------------------------------------- GPT-2 weights and 05's online perplexity


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A folder like the hub's openai-community/gpt2: config, safetensors and GPT-2's own tokenizer files.

    Tiny but real in its vocabulary (50,257 ids), so GPT-2's tokenizer drives it as it drives GPT-2 124M.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from utils.tokenization import GPT2_VOCAB_SIZE, gpt2_reference_tokenizer

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=GPT2_VOCAB_SIZE, n_positions=64, n_layer=1, n_head=2, n_embd=8)
    folder = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).eval().save_pretrained(str(folder))
    gpt2_reference_tokenizer().save_pretrained(str(folder))
    return folder


def test_gpt_from_pretrained_loads_a_hub_folder_with_equal_logits(gpt2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours = GPT.from_pretrained(str(gpt2_folder)).eval()
    theirs = AutoModelForCausalLM.from_pretrained(str(gpt2_folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gpt2_folder))
    idx = torch.tensor([tokenizer.encode("The meaning of life is")])  # (1, T)
    with torch.no_grad():
        assert torch.allclose(ours(idx)[0], theirs(idx).logits, atol=1e-5)
    assert ours.config.vocab_size == len(tokenizer) == 50_257


def test_gpt_from_pretrained_offline_says_what_to_do_instead():
    with pytest.raises(OSError, match="Use a local folder"):
        GPT.from_pretrained("openai-community/not-a-model-in-any-cache")


def test_online_perplexity_of_gpt2_as_05_computes_it(gpt2_folder):
    """05's GPT-2 cell: GPT-2's own tokenizer and <|endoftext|>, documents scored one by one."""
    from transformers import GPT2LMHeadModel

    from utils.tokenization import gpt2_reference_tokenizer

    gpt2_tokenizer = gpt2_reference_tokenizer()
    gpt2 = GPT2LMHeadModel.from_pretrained(str(gpt2_folder)).eval()  # 05: .from_pretrained("gpt2")
    documents = ["hi! how are you?\ngood, you?", "where are you from?\nsalt lake city"]
    gpt2_documents = [gpt2_tokenizer.encode(d) for d in documents]
    eot = gpt2_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    nats = evaluation.documents_nats(lambda x: evaluation.token_losses(gpt2, x, batch_size=1), gpt2_documents, [eot])

    for document, total in zip(gpt2_documents, nats):  # the same sums, by hand from the logits
        row = torch.tensor([[eot] + document])  # (1, 1 + T)
        with torch.no_grad():
            logits = gpt2(row).logits[0, :-1]  # (T, V): each prediction of the next token
        assert total == pytest.approx(F.cross_entropy(logits, row[0, 1:], reduction="sum").item(), rel=1e-5)
    bits_per_byte = nats.sum() / math.log(2) / sum(len(d.encode()) for d in documents)
    assert 0 < bits_per_byte < math.log2(50_257)  # a random model: near uniform over its vocabulary per token
    ids = np.array([eot] + gpt2_documents[0])
    assert evaluation.perplexity(gpt2, ids) == pytest.approx(
        math.exp(nats[0] / len(gpt2_documents[0])), rel=1e-5)


# --------------------------------------------------------------------------- SmolLM2 from the hub

# SmolLM2-135M-Instruct's chat template, as its tokenizer_config.json on the hub carries it
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    """A folder like the hub's HuggingFaceTB/SmolLM2-135M-Instruct, at toy size.

    SmolLM2's layout (tied embeddings, grouped-query attention, RoPE theta 100000, no biases),
    a byte-level BPE tokenizer with its special tokens and chat template, saved by save_pretrained.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = ["The capital of France is Paris.", "Hello! How are you today?", "You are a helpful AI assistant."]
    bpe.train_from_iterator(text * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    folder = tmp_path_factory.mktemp("smollm2")
    LlamaForCausalLM(config).eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_load_smollm2_from_a_hub_folder_gives_our_gpt_with_equal_logits_and_the_chat_template(smollm2_folder):
    from transformers import AutoModelForCausalLM

    from utils.pretrained import load_smollm2

    model, tokenizer = load_smollm2(source=str(smollm2_folder))
    theirs = AutoModelForCausalLM.from_pretrained(str(smollm2_folder)).eval()
    assert isinstance(model, GPT) and model.config.layout == "llama" and not model.training
    assert (model.config.n_head, model.config.n_kv_head) == (4, 2)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n")
    idx = torch.tensor([tokenizer.encode(prompt)])  # (1, T)
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], theirs(idx).logits, atol=1e-5)
        greedy = model.generate(idx, 8, temperature=0.0)  # (1, T + 8)
        expected = theirs.generate(idx, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=2)
    assert greedy.tolist() == expected.tolist()


def test_load_smollm2_from_a_hub_folder_in_bfloat16(smollm2_folder):
    from utils.pretrained import load_smollm2

    model, _ = load_smollm2(source=str(smollm2_folder), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits, _ = model(torch.tensor([[1, 5, 9]]))
    assert torch.isfinite(logits).all()


def test_06s_gpt2_chat_cell_on_hub_folders(gpt2_folder, tmp_path, private_datasets_cache):
    """06's gpu-profile cell, step by step, at toy sizes: GPT-2 from the hub fine-tuned on a hub chat dataset."""
    from transformers import AutoTokenizer

    from utils import finetune as ft
    from utils import training
    from utils.chat import add_chat_tokens, encode_dataset
    from utils.replies import reply_to

    gpt2_tokenizer = add_chat_tokens(AutoTokenizer.from_pretrained(str(gpt2_folder)))  # 06: "openai-community/gpt2"
    gpt2 = GPT.from_pretrained(str(gpt2_folder))  # 06: GPT.from_pretrained("gpt2")
    ft.prepare_chat_model(gpt2, gpt2_tokenizer)
    assert gpt2.config.vocab_size == len(gpt2_tokenizer) > 50_257  # the chat tokens have rows of their own
    hub = data.load_hub_conversations(str(write_hub_files(tmp_path / "oasst1", "parquet")))  # 06: the profile's
    gpt2_train = encode_dataset(gpt2_tokenizer, hub[:2], 64, verbose=False)
    gpt2_val = encode_dataset(gpt2_tokenizer, hub[2:], 64, verbose=False)
    gpt2_cfg = training.TrainConfig(batch_size=2, block_size=64, max_iters=2, warmup_iters=1, eval_interval=2,
                                    eval_iters=1, progress=False, verbose=False, device="cpu", seed=0)
    before = evaluation.assistant_perplexity(gpt2, gpt2_val, gpt2_tokenizer.pad_token_id)
    metrics = ft.fine_tune(gpt2, gpt2_tokenizer, gpt2_train, gpt2_val, gpt2_cfg, out_dir=tmp_path / "gpt2_chat")
    after = evaluation.assistant_perplexity(gpt2, gpt2_val, gpt2_tokenizer.pad_token_id)
    assert metrics["iters"] == 2 and math.isfinite(before) and math.isfinite(after) and after != before
    reply = reply_to(gpt2, gpt2_tokenizer, [{"role": "user", "content": "What is a language model?"}],
                     max_new_tokens=5, temperature=0.7, generator=torch.Generator(device="cpu").manual_seed(0))
    assert isinstance(reply.text, str)
