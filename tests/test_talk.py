"""Tests of utils.talk: the chat box's reply function, SmolLM2 (or your fine-tuned copy) in the terminal chat."""

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


class Scripted(torch.nn.Module):
    """Stands in for a GPT whose next tokens we choose: generate() appends ``script`` as GPT.generate would."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.config = GPTConfig(vocab_size=60000, block_size=64, n_layer=1, n_head=1, n_embd=8)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, idx, max_new_tokens, stop_ids=None, on_token=None, **sampling):
        for token in self.script[:max_new_tokens]:
            idx = torch.cat([idx, torch.tensor([[token]])], dim=1)
            if token in stop_ids:
                break
        return idx


def tiny(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))


def test_reply_fn_streams_and_repeats_with_a_seed(course):
    model = tiny(len(course))
    pieces = []
    reply = talk.reply_fn(model, course, max_new_tokens=8, seed=3)
    first = reply([{"role": "user", "content": "hello"}], pieces.append, temperature=1.0)
    assert first == "".join(pieces)
    again = talk.reply_fn(model, course, max_new_tokens=8, seed=3)([{"role": "user", "content": "hello"}],
                                                                   temperature=1.0)
    assert again == first  # same seed, same sampled reply: the generator is the function's own


def test_a_tokenizer_with_its_own_template_chats_in_its_own_format(own_template):
    messages = [{"role": "user", "content": "Hi"}]
    ids = format_prompt(own_template, messages)
    assert own_template.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert end_of_turn_id(own_template) == own_template.convert_tokens_to_ids("<|im_end|>")
    ok = own_template.encode("ok", add_special_tokens=False)
    reply = talk.reply_to(Scripted(ok + [end_of_turn_id(own_template)]), own_template, messages, max_new_tokens=5)
    assert reply.ended and reply.text == "ok"  # <|im_end|> closes the turn, as <|end|> does in the course format
    start = own_template.convert_tokens_to_ids("<|im_start|>")
    wandering = talk.reply_to(Scripted(ok + [start]), own_template, messages, max_new_tokens=5)
    assert wandering.text == "ok" and not wandering.ended


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
