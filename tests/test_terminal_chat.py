"""tools.chat, what `make chat` runs: which model it talks to, what it says when there is none yet, the chat itself."""

import io
import sys

import pytest
import torch

from tools import chat
from utils import checkpoint as ckpt
from utils.chat import add_chat_tokens, format_prompt
from utils.model import GPT, GPTConfig
from utils.tokenization import train_course_tokenizer

TEXTS = ["hello there, how are you today?", "i am fine, thanks for asking!", "what do you like to do?"] * 5


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return add_chat_tokens(train_course_tokenizer(TEXTS, 300, tmp_path_factory.mktemp("tok")))



def tiny(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))


def save_yours_like(folder, tokenizer, name="Pip", maker="Alex"):
    from utils import identity

    model = tiny(len(tokenizer))
    identity.save_yours(model, tokenizer, folder, {"identity": {"name": name, "maker": maker}})
    return model


def save_aligned_like(folder, tokenizer, report, probe=None):
    from utils import alignment

    model = tiny(len(tokenizer), seed=1)
    alignment.save_dpo(model, tokenizer, folder, probe, report)
    return model


def same_logits(loaded, model, tokenizer):
    x = torch.tensor([format_prompt(tokenizer, [{"role": "user", "content": "Hi"}])])
    return torch.allclose(loaded(x)[0], model.eval()(x)[0], atol=1e-6)


# --------------------------------------------------------------------------- make chat: which model


def test_chat_says_what_to_run_first_without_a_chat_model(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    with pytest.raises(FileNotFoundError, match="make course") as missing:
        chat.chat_arguments([], root=tmp_path)
    assert "checkpoints/cpu/chat/config.json does not exist" in str(missing.value)
    assert "COURSE_PROFILE=ci make course" in str(missing.value)


def test_chat_without_a_chat_model_exits_1_with_what_to_run_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    assert chat.main(["--temperature", "0.5"], root=tmp_path) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("No chat model for the `cpu` profile yet") and captured.out == ""


def test_chat_uses_the_profile_checkpoint_and_passes_extra_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    folder = tmp_path / "checkpoints" / "ci" / "chat"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert chat.chat_arguments(["--temperature", "0.5"], root=tmp_path) == [
        "--checkpoint", "checkpoints/ci/chat", "--temperature", "0.5"]
    # An argument that chooses the model goes through as it is, with no checkpoint of ours.
    assert chat.chat_arguments(["--model", "smollm2"], root=tmp_path) == ["--model", "smollm2"]
    assert chat.chat_arguments(["--checkpoint=elsewhere"], root=tmp_path) == ["--checkpoint=elsewhere"]


def test_one_parser_checkpoint_and_model_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as stopped:
        chat.main(["--checkpoint", "x", "--model", "smollm2"])
    assert stopped.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        chat.main(["--model", "gpt5"])


def test_smollm2_chat_takes_your_fine_tuned_model_when_there_is_one(own_template, tmp_path, monkeypatch):
    from utils import identity

    monkeypatch.setenv("COURSE_PROFILE", "ci")
    folder = tmp_path / "checkpoints" / "ci" / identity.YOURS
    model = save_yours_like(folder, own_template)
    loaded, tokenizer, description, _ = chat.load_smollm2_chat(root=tmp_path)
    assert description.startswith("your fine-tuned SmolLM2 (Pip, made by Alex)")
    x = torch.tensor([format_prompt(tokenizer, [{"role": "user", "content": "Hi"}])])
    assert torch.allclose(loaded(x)[0], model.eval()(x)[0], atol=1e-6)


def test_smollm2_chat_takes_the_aligned_model_of_07_first(own_template, tmp_path, monkeypatch):
    from utils import alignment, identity

    monkeypatch.setenv("COURSE_PROFILE", "ci")
    checkpoints = tmp_path / "checkpoints" / "ci"
    yours = save_yours_like(checkpoints / identity.YOURS, own_template)
    aligned = save_aligned_like(checkpoints / alignment.DPO, own_template,
                                {"identity": {"name": "Pip", "maker": "Alex"}})
    loaded, tokenizer, description, _ = chat.load_smollm2_chat(root=tmp_path)
    assert description == "your aligned SmolLM2 (Pip, made by Alex) from checkpoints/ci/smollm2-dpo"
    assert same_logits(loaded, aligned, tokenizer)
    # with its refusal probe: loaded with it, and said
    from utils.refusal_probe import RefusalProbe

    probe = RefusalProbe(layer=0, weight=[0.0] * 16, bias=0.0, scale=1.0, threshold=0.9)
    save_aligned_like(checkpoints / alignment.DPO, own_template, {"identity": {"name": "Pip", "maker": "Alex"}}, probe)
    _, _, description, loaded_probe = chat.load_smollm2_chat(root=tmp_path)
    assert loaded_probe == probe and description.endswith("smollm2-dpo, with its refusal probe")
    # --model smollm2-yours: 06's model, even with 07's there
    loaded, tokenizer, description, _ = chat.load_smollm2_chat(root=tmp_path, which="smollm2-yours")
    assert description == "your fine-tuned SmolLM2 (Pip, made by Alex) from checkpoints/ci/smollm2-yours"
    assert same_logits(loaded, yours, tokenizer)

    # A report without a name and maker: "?" for each.
    save_aligned_like(checkpoints / alignment.DPO, own_template, {"beta": 0.1})
    assert chat.load_smollm2_chat(root=tmp_path)[2] == \
        "your aligned SmolLM2 (?, made by ?) from checkpoints/ci/smollm2-dpo"

    # An aligned folder without its report is unfinished (07 writes the report last): 06's model answers.
    (checkpoints / alignment.DPO / alignment.REPORT_FILE).unlink()
    assert chat.load_smollm2_chat(root=tmp_path)[2].startswith("your fine-tuned SmolLM2 (Pip, made by Alex)")


def test_smollm2_as_released_when_asked_or_when_nothing_is_yours(own_template, tmp_path, monkeypatch):
    from utils import identity, pretrained

    monkeypatch.setenv("COURSE_PROFILE", "ci")
    released = tiny(len(own_template), seed=2)
    monkeypatch.setattr(pretrained, "load_smollm2", lambda device="cpu": (released, own_template))
    loaded, _, description, _ = chat.load_smollm2_chat(root=tmp_path)
    assert loaded is released and description.startswith(
        "SmolLM2-135M-Instruct as released (no 'Make it yours' model in checkpoints/ci/smollm2-yours yet")
    with pytest.raises(FileNotFoundError, match="smollm2-yours/identity.json does not exist"):
        chat.load_smollm2_chat(root=tmp_path, which="smollm2-yours")
    save_yours_like(tmp_path / "checkpoints" / "ci" / identity.YOURS, own_template)
    loaded, _, description, _ = chat.load_smollm2_chat(root=tmp_path, which="smollm2-released")
    assert loaded is released and description == "SmolLM2-135M-Instruct as released"


# --------------------------------------------------------------------------- the chat


def test_terminal_chat_with_smollm2_says_which_model_and_streams(own_template, monkeypatch, capsys):
    model = tiny(len(own_template))
    monkeypatch.setattr(chat, "load_smollm2_chat",
                        lambda device, **where: (model, own_template, "SmolLM2 as a test", None))
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi there\n/quit\n"))
    assert chat.main(["--model", "smollm2", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Chatting with SmolLM2 as a test." in out and out.count("assistant> ") == 1


def test_smollm2_yours_missing_is_an_error_that_says_what_makes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    assert chat.main(["--model", "smollm2-yours", "--device", "cpu"], root=tmp_path) == 2
    assert "python -m utils.identity" in capsys.readouterr().err


def test_make_chat_talks_to_the_profile_s_chat_model_in_one_process(course, tmp_path, monkeypatch, capsys):
    """The default checkpoint is found from the course's root, the chat runs here: /reset, the end of input."""
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    folder = tmp_path / "checkpoints" / "ci" / "chat"
    ckpt.save_model(tiny(len(course)), folder, "course", len(course))
    course.save_pretrained(str(folder / "tokenizer"))
    monkeypatch.chdir(tmp_path.parent)  # elsewhere: checkpoints/ci/chat is the course's, not this folder's
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\nhi again\n"))
    assert chat.main(["--max-new-tokens", "2", "--device", "cpu", "--system", "Be brief."], root=tmp_path) == 0
    out = capsys.readouterr().out
    assert out.startswith("Chatting with the model in checkpoints/ci/chat.\n" + chat.HELP + "\n")
    assert out.count("assistant> ") == 2 and "(new conversation)" in out


def test_ctrl_c_leaves_at_once_with_exit_code_130(own_template, monkeypatch, capsys):
    class CtrlC(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    model = tiny(len(own_template))
    monkeypatch.setattr(chat, "load_smollm2_chat",
                        lambda device, **where: (model, own_template, "SmolLM2 as a test", None))
    monkeypatch.setattr(sys, "stdin", CtrlC())
    assert chat.main(["--model", "smollm2", "--device", "cpu"]) == 130
    captured = capsys.readouterr()
    assert captured.out.endswith(chat.HELP + "\n\n") and "Traceback" not in captured.err


def test_terminal_chat_refuses_a_pretrained_checkpoint_in_plain_words(course, tmp_path, capsys):
    folder = tmp_path / "checkpoints" / "cpu" / "pretrained"
    ckpt.save_model(tiny(len(course)), folder, "course", len(course))
    tokenizer = train_course_tokenizer(TEXTS, 300, tmp_path / "plain")  # chat tokens, but no chat template
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    assert chat.main(["--checkpoint", str(folder), "--device", "cpu"]) == 2
    assert (f"{folder} is a pretrained model without the chat format: fine-tune it in notebook 06, or pass "
            f"{folder.parent / 'chat'}") in capsys.readouterr().err
