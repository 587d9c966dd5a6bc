"""Tests of utils.finetune, the chat metrics of utils.evaluation and load_chat_model: SFT, LoRA, export, the CLI."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from utils import checkpoint as ckpt
from utils import evaluation
from utils import finetune as ft
from utils.chat import (
    IGNORE_INDEX,
    ChatFormatError,
    add_chat_tokens,
    crop_prompt,
    encode_dataset,
    format_prompt,
)
from utils.checkpoint import load_chat_model
from utils.model import GPT, GPTConfig
from utils.replies import reply_to
from utils.tokenization import train_course_tokenizer
from utils.training import TrainConfig

REPO = Path(__file__).resolve().parent.parent

CONVERSATIONS = [
    [{"role": "user", "content": "hi, how are you?"}, {"role": "assistant", "content": "I am fine, thanks!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what is your name?"},
     {"role": "assistant", "content": "I am a small model."}],
    [{"role": "user", "content": "do you like dogs?"}, {"role": "assistant", "content": "Yes, I like dogs a lot."},
     {"role": "user", "content": "why?"}, {"role": "assistant", "content": "They are kind and fun."}],
    [{"role": "user", "content": "good morning"}, {"role": "assistant", "content": "Good morning to you too!"}],
    [{"role": "user", "content": "tell me a joke"}, {"role": "assistant", "content": "I am fine, thanks!"}],
    [{"role": "user", "content": "where do you live?"}, {"role": "assistant", "content": "In a small computer."}],
]
TEXTS = [m["content"] for c in CONVERSATIONS for m in c] * 4


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return add_chat_tokens(train_course_tokenizer(TEXTS, 300, tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def examples(tokenizer):
    return encode_dataset(tokenizer, CONVERSATIONS, max_length=64, verbose=False)


def tiny_gpt(tokenizer, seed=0, block_size=64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(tokenizer), block_size=block_size, n_layer=2, n_head=2, n_embd=32))


def sft_cfg(steps=30, lr=3e-3, **kw):
    return TrainConfig(batch_size=4, block_size=64, max_iters=steps, learning_rate=lr, min_lr=lr / 10,
                       warmup_iters=2, eval_interval=steps, eval_iters=2, log_interval=5, device="cpu",
                       progress=False, verbose=False, seed=3, **kw)


def test_batches_score_only_assistant_tokens(tokenizer, examples):
    batch_fn = ft.sft_batches(examples, examples, batch_size=6, pad_id=tokenizer.pad_token_id)
    x, y, mask = batch_fn("train", np.random.default_rng(0))
    assert x.shape == y.shape == mask.shape
    assert (x == tokenizer.pad_token_id).any()  # some rows are padded
    user_id, assistant_id, end_id = tokenizer.convert_tokens_to_ids(["<|user|>", "<|assistant|>", "<|end|>"])
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        role = None
        for t, token in enumerate(row_x):
            if token in (user_id, assistant_id) or token == tokenizer.convert_tokens_to_ids("<|system|>"):
                role = token
            if t + 1 < len(row_x):
                nxt = row_x[t + 1]
                if row_y[t] != IGNORE_INDEX:
                    assert row_y[t] == nxt  # shifted: position t predicts token t + 1
                    assert nxt != tokenizer.pad_token_id  # padding is never learned
                    # the target sits in an assistant turn (its text or its closing <|end|>)
                    in_assistant = role == assistant_id and nxt != assistant_id
                    assert in_assistant, (t, row_x)
                elif role == assistant_id and nxt not in (tokenizer.pad_token_id, user_id, assistant_id):
                    raise AssertionError(f"assistant token {nxt} at {t + 1} not learned")
            if token == end_id and role == assistant_id:
                role = None
    # the mask the loop counts real tokens with marks exactly the non-pad positions
    assert torch.equal(mask.bool(), x != tokenizer.pad_token_id)


def test_sft_lowers_assistant_loss_through_the_shared_loop(tokenizer, examples, tmp_path):
    model = tiny_gpt(tokenizer)
    before = evaluation.assistant_perplexity(model, examples, tokenizer.pad_token_id)
    metrics = ft.fine_tune(model, tokenizer, examples, examples, sft_cfg(), out_dir=tmp_path / "chat")
    after = evaluation.assistant_perplexity(model, examples, tokenizer.pad_token_id)
    assert after < before / 3, (before, after)
    assert metrics["iters"] == 30 and metrics["tokens_per_second"] > 0
    # the folder is a chat checkpoint: CLI and load_chat_model read it
    loaded, tok = load_chat_model(tmp_path / "chat")
    assert len(tok) == len(tokenizer)
    ids = torch.tensor([format_prompt(tokenizer, CONVERSATIONS[0][:1])])
    assert torch.allclose(loaded(ids)[0], model.eval()(ids)[0], atol=1e-6)


def test_sft_resume_is_exact(tokenizer, examples, tmp_path):
    straight = tiny_gpt(tokenizer)
    ft.fine_tune(straight, tokenizer, examples, examples, sft_cfg(6, lr_decay_iters=6))
    first = tiny_gpt(tokenizer)
    ft.fine_tune(first, tokenizer, examples, examples, sft_cfg(3, lr_decay_iters=6), out_dir=tmp_path)
    second = tiny_gpt(tokenizer, seed=99)
    ft.fine_tune(second, tokenizer, examples, examples, sft_cfg(6, lr_decay_iters=6), out_dir=tmp_path, resume=True)
    for a, b in zip(straight.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_lora_freezes_base_trains_adapters_and_merges(tokenizer, examples):
    model = ft.apply_lora(tiny_gpt(tokenizer), r=4, alpha=8)
    trainable, total = ft.trainable_parameters(model)
    assert 0 < trainable < total / 5
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    ft.fine_tune(model, tokenizer, examples, examples, sft_cfg(8, lr=1e-2, weight_decay=0.0))
    for name, p in model.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), f"{name} changed"
    ids = torch.tensor([format_prompt(tokenizer, CONVERSATIONS[2][:3])])
    model.eval()
    lora_logits = model(ids)[0]
    merged = ft.merge_lora(copy.deepcopy(model))
    assert type(merged) is GPT and not ft.has_lora(merged)
    assert not any("lora" in name for name in merged.state_dict())
    assert torch.allclose(merged(ids)[0], lora_logits, atol=1e-5)
    assert not torch.allclose(tiny_gpt(tokenizer).eval()(ids)[0], lora_logits, atol=1e-3)  # adapters learned


def test_export_loads_offline_in_transformers(tokenizer, examples, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_gpt(tokenizer)
    ft.fine_tune(model, tokenizer, examples, examples, sft_cfg(10))
    out = ft.export_hf(model, tokenizer, tmp_path / "hf", max_new_tokens=8)
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template and len(tok) == len(tokenizer)
    messages = CONVERSATIONS[1][:2]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == format_prompt(tokenizer, messages)
    x = torch.tensor([ids])
    assert torch.allclose(hf(x).logits, model.eval()(x)[0], atol=1e-5)
    assert hf.generation_config.eos_token_id[0] == tok.convert_tokens_to_ids("<|end|>")
    chat = pipeline("text-generation", model=str(out))
    result = chat(messages, do_sample=False)
    conversation = result[0]["generated_text"]
    assert conversation[-1]["role"] == "assistant" and isinstance(conversation[-1]["content"], str)
    # our loader reads the exported folder too
    again, _ = load_chat_model(out)
    assert torch.allclose(again(x)[0], hf(x).logits, atol=1e-5)


def test_checkpoint_vocabulary_mismatch_is_refused(tokenizer, tmp_path):
    model = tiny_gpt(tokenizer)
    ckpt.save_model(model, tmp_path, "chat", len(tokenizer))
    other = add_chat_tokens(train_course_tokenizer(TEXTS, 280, tmp_path / "tokenizer"))
    other.save_pretrained(str(tmp_path / "tokenizer"))
    with pytest.raises(ValueError, match="vocabulary"):
        load_chat_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_chat_model(tmp_path / "missing")


def test_cli_answers_piped_messages(tokenizer, tmp_path):
    model = tiny_gpt(tokenizer)
    ckpt.save_model(model, tmp_path, "chat", len(tokenizer))
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tools.chat", "--checkpoint", str(tmp_path), "--max-new-tokens", "5"],
        input="hello there\n/reset\nhow are you?\n/quit\nnever read\n", capture_output=True, text=True,
        cwd=REPO, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("assistant> ") == 2
    assert "(new conversation)" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "tools.chat", "--checkpoint", str(tmp_path / "nope")],
                         input="", capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert bad.returncode == 2 and "not a checkpoint" in bad.stderr


def test_format_adherence_measures_the_chat_box_replies(tokenizer, examples):
    """Format adherence is the share of the chat box's greedy replies (one path, one stop rule) that end their turn."""
    model = tiny_gpt(tokenizer)
    ft.fine_tune(model, tokenizer, examples, examples, sft_cfg(30))
    shares = ft.format_adherence_by_position(model, tokenizer, CONVERSATIONS, 12)
    for position, share in shares.items():
        ended = [reply_to(model, tokenizer, ft.prompt_at(c, position), 12).ended for c in CONVERSATIONS]
        assert share == sum(ended) / len(CONVERSATIONS), position
    assert 0 < sum(shares.values()) < 3  # the fine-tuned model ends some replies and not others: a share can move


def test_lora_trains_the_chat_token_rows_tied_and_merges_them(tokenizer, examples):
    """LoRA alone freezes the tied embedding; with trainable_tokens the chat tokens' rows learn, in and out."""
    chat_ids = sorted(tokenizer.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]))
    plain = ft.trainable_parameters(ft.apply_lora(tiny_gpt(tokenizer), r=4, alpha=8))[0]
    model = ft.apply_lora(tiny_gpt(tokenizer), r=4, alpha=8, trainable_tokens=chat_ids)
    assert ft.trainable_parameters(model)[0] == plain + len(chat_ids) * 32  # 4 rows of width 32, shared in and out
    start = tiny_gpt(tokenizer).transformer.wte.weight.detach().clone()  # (V, C)
    ft.fine_tune(model, tokenizer, examples, examples, sft_cfg(8, lr=1e-2, weight_decay=0.0))
    ids = torch.tensor([format_prompt(tokenizer, CONVERSATIONS[2][:3])])
    logits = model.eval()(ids)[0]
    merged = ft.merge_lora(copy.deepcopy(model))
    assert type(merged) is GPT and not ft.has_lora(merged)
    assert merged.lm_head.weight is merged.transformer.wte.weight  # still tied
    assert sorted(merged.state_dict()) == sorted(tiny_gpt(tokenizer).state_dict())
    assert torch.allclose(merged(ids)[0], logits, atol=1e-5)
    changed = (merged.transformer.wte.weight != start).any(dim=1).nonzero().flatten().tolist()
    assert changed == chat_ids  # exactly the chat tokens' rows moved; every other row stayed frozen


def test_lora_token_rows_of_an_untied_output_layer_train_on_their_own(tokenizer, examples):
    torch.manual_seed(0)
    untied = GPT(GPTConfig(vocab_size=len(tokenizer), block_size=64, n_layer=2, n_head=2, n_embd=32,
                           tie_embeddings=False))
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    before_in, before_out = (untied.transformer.wte.weight[end].clone(), untied.lm_head.weight[end].clone())
    model = ft.apply_lora(untied, r=4, alpha=8, trainable_tokens=[end])
    ft.fine_tune(model, tokenizer, examples, examples, sft_cfg(8, lr=1e-2, weight_decay=0.0))
    ids = torch.tensor([format_prompt(tokenizer, CONVERSATIONS[0][:1])])
    logits = model.eval()(ids)[0]
    merged = ft.merge_lora(model)
    assert merged.lm_head.weight is not merged.transformer.wte.weight
    assert not torch.equal(merged.transformer.wte.weight[end], before_in)
    assert not torch.equal(merged.lm_head.weight[end], before_out)
    assert not torch.equal(merged.transformer.wte.weight[end], merged.lm_head.weight[end])
    assert torch.allclose(merged(ids)[0], logits, atol=1e-5)
    with pytest.raises(ValueError, match="below the vocabulary size"):
        ft.apply_lora(tiny_gpt(tokenizer), trainable_tokens=[len(tokenizer)])


LONG_CHAT = [{"role": "system", "content": "Be brief."}] + [
    {"role": role, "content": f"{role} says {i}"} for i in range(5) for role in ("user", "assistant")]


def test_prompts_at_first_middle_and_last_turns():
    first, middle, last = (ft.prompt_at(LONG_CHAT, position) for position in ft.POSITIONS)
    assert first == LONG_CHAT[:2]  # the system message and the first user turn
    assert middle == LONG_CHAT[:6] and middle[-1]["content"] == "user says 2"  # 2 of 5 pairs before it
    assert last == LONG_CHAT[:10] and last[-1]["content"] == "user says 4"
    unanswered = LONG_CHAT + [{"role": "user", "content": "bye?"}]  # a final question with no reply is not used
    assert ft.prompt_at(unanswered, "last") == last
    short = CONVERSATIONS[0]
    assert ft.prompt_at(short, "first") == ft.prompt_at(short, "middle") == ft.prompt_at(short, "last")
    no_reply = [{"role": "user", "content": "anyone there?"}]
    assert ft.evaluation_conversations([short, no_reply, LONG_CHAT, short, LONG_CHAT], n=1) == [LONG_CHAT]
    with pytest.raises(ValueError, match="position"):
        ft.prompt_at(LONG_CHAT, "end")


class ScriptedModel(torch.nn.Module):
    """Stands in for a GPT whose next tokens we choose: generate() appends ``script`` to every row."""

    def __init__(self, script, block_size=64):
        super().__init__()
        self.script = script
        self.config = GPTConfig(vocab_size=400, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, idx, max_new_tokens, stop_ids=None, **sampling):
        script = torch.tensor(self.script[:max_new_tokens]).expand(idx.size(0), -1)  # (B, new)
        return torch.cat([idx, script], dim=1)


def test_format_adherence_by_position_counts_replies_that_close_their_turn(tokenizer):
    end, user_marker = tokenizer.convert_tokens_to_ids(["<|end|>", "<|user|>"])
    ok = tokenizer.encode("ok", add_special_tokens=False)
    closes = ScriptedModel(ok + [end])
    assert ft.format_adherence_by_position(closes, tokenizer, [LONG_CHAT] * 2, 8) == {
        "first": 1.0, "middle": 1.0, "last": 1.0}
    wanders = ScriptedModel(ok + [user_marker])
    assert set(ft.format_adherence_by_position(wanders, tokenizer, [LONG_CHAT], 8).values()) == {0.0}


def test_a_pretrained_checkpoint_is_refused_with_what_to_do(tokenizer, tmp_path):
    folder = tmp_path / "checkpoints" / "cpu" / "pretrained"
    ckpt.save_model(tiny_gpt(tokenizer), folder, "course", len(tokenizer))
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None  # 04's tokenizer: the chat tokens exist, the chat format does not
    plain.save_pretrained(str(folder / "tokenizer"))
    with pytest.raises(ChatFormatError) as error:
        load_chat_model(folder)
    assert str(error.value) == (f"{folder} is a pretrained model without the chat format: fine-tune it in "
                                f"notebook 06, or pass {folder.parent / 'chat'} (the chat model 06 saves).")


def test_people_adherence_counts_the_replies_that_fit_with_their_end(tokenizer):
    lengths = [len(tokenizer.encode(m["content"], add_special_tokens=False)) + 1 for m in LONG_CHAT[2::2]]
    limit = lengths[0]  # the first reply (and its <|end|>) just fits
    shares = ft.people_adherence(tokenizer, [LONG_CHAT], max_new_tokens=limit)
    assert shares == {position: float(lengths[k] <= limit) for position, k in (("first", 0), ("middle", 2), ("last", 4))}
    assert ft.people_adherence(tokenizer, [LONG_CHAT], max_new_tokens=1) == {p: 0.0 for p in ft.POSITIONS}
