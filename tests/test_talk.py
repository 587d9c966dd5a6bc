"""Tests of utils.talk: the terminal chat, and SmolLM2 (or your fine-tuned copy) in it."""

import io
import sys

import pytest
import torch

from utils import checkpoint as ckpt
from utils import talk
from utils.chat import add_chat_tokens, end_of_turn_id, format_prompt
from utils.model import GPT, GPTConfig
from utils.tokenization import gpt2_reference_tokenizer, train_course_tokenizer

TEXTS = ["hello there, how are you today?", "i am fine, thanks for asking!", "what do you like to do?"] * 5
# A chat template of its own, as SmolLM2 has: <|im_start|>role\ntext<|im_end|>\n, eos = <|im_end|>.
IM_TEMPLATE = ("{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + "
               "'<|im_end|>\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
               "{%- endif -%}")


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return add_chat_tokens(train_course_tokenizer(TEXTS, 300, tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def own_template():
    """A tokenizer with its own chat format (no course tokens), like SmolLM2's."""
    tokenizer = gpt2_reference_tokenizer()
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = IM_TEMPLATE
    return tokenizer


def tiny(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))


def save_yours_like(folder, tokenizer, name="Pip", maker="Alex"):
    from utils import identity

    model = tiny(len(tokenizer))
    identity.save_yours(model, tokenizer, folder, {"identity": {"name": name, "maker": maker}})
    return model


def test_smollm2_chat_takes_your_fine_tuned_model_when_there_is_one(own_template, tmp_path, monkeypatch):
    from utils import identity

    monkeypatch.setenv("COURSE_PROFILE", "ci")
    folder = tmp_path / "checkpoints" / "ci" / identity.YOURS
    model = save_yours_like(folder, own_template)
    loaded, tokenizer, description = talk.load_smollm2_chat(root=tmp_path)
    assert description.startswith("your fine-tuned SmolLM2 (Pip, made by Alex)")
    x = torch.tensor([format_prompt(tokenizer, [{"role": "user", "content": "Hi"}])])
    assert torch.allclose(loaded(x)[0], model.eval()(x)[0], atol=1e-6)


def test_terminal_chat_with_smollm2_says_which_model_and_streams(own_template, monkeypatch, capsys):
    model = tiny(len(own_template))
    monkeypatch.setattr(talk, "load_smollm2_chat", lambda device: (model, own_template, "SmolLM2 as a test"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi there\n/quit\n"))
    assert talk.main(["--model", "smollm2", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Chatting with SmolLM2 as a test." in out and out.count("assistant> ") == 1


def test_terminal_chat_refuses_a_pretrained_checkpoint_in_plain_words(course, tmp_path, capsys):
    folder = tmp_path / "checkpoints" / "cpu" / "pretrained"
    ckpt.save_model(tiny(len(course)), folder, "course", len(course))
    tokenizer = train_course_tokenizer(TEXTS, 300, tmp_path / "plain")  # chat tokens, but no chat template
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    assert talk.main(["--checkpoint", str(folder), "--device", "cpu"]) == 2
    assert (f"{folder} is a pretrained model without the chat format: fine-tune it in notebook 06, or pass "
            f"{folder.parent / 'chat'}") in capsys.readouterr().err
