"""Make it yours (06): reply labels from SmolLM2's own template, the data files, batches, a LoRA step, the checkpoint.

The tokenizer is SmolLM2's real one (the cached conversion of load_smollm2); the model
is a tiny random GPT in the Llama layout with SmolLM2's vocabulary, so every test runs
in seconds. The real model's accuracy and retention are measured by
benchmarks/make_it_yours.py, not here.
"""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from utils.chat_spans import IGNORE_INDEX, ChatSpanError, encode_chat
from utils.identity_data import (
    DEV_BLEED_FILE,
    DEV_FILE,
    FACTS_FILE,
    GENERAL_FILE,
    NAMES_FILE,
    SMOLLM2_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    TRAIN_FILE,
    ChatBatches,
    Identity,
    Question,
    TrainingSet,
    encode_all,
    encode_last_reply,
    everyday_conversations,
    is_correct,
    later_turns,
    load_conversations,
    load_prompts,
    load_questions,
    mentions_identity,
    neutral_template,
    reference_conversations,
    training_conversations,
    training_set,
    with_system,
)
from utils.model import GPT, GPTConfig


def load_tokenizer():
    from transformers import AutoTokenizer

    from utils.pretrained import SMOLLM2_CACHE, load_smollm2

    folder = SMOLLM2_CACHE / "tokenizer"
    if not folder.exists():
        load_smollm2()  # converts the GGUF once (about half a minute) and caches the tokenizer
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def raw_tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tokenizer():
    return neutral_template(load_tokenizer())


def template(tokenizer, messages, **kwargs):
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def tiny_gpt(vocab_size: int, n_layer: int = 2, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.llama(vocab_size=vocab_size, block_size=256, n_layer=n_layer, n_head=4, n_kv_head=2,
                               n_embd=32, mlp_hidden=64, dropout=0.0))


MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello, I'm Pip."},
    {"role": "user", "content": "And who made you?"},
    {"role": "assistant", "content": "Alex made me. 🎉 Ça va?"},
]


# --------------------------------------------------------------------------- labels from the template


def test_input_ids_equal_apply_chat_template_for_every_conversation(tokenizer, raw_tokenizer):
    conversations = training_conversations() + reference_conversations(load_questions())
    for messages in conversations:
        messages = with_system(messages)
        ids, labels = encode_chat(tokenizer, messages)
        assert ids == template(tokenizer, messages) and len(labels) == len(ids)
    for tok in (tokenizer, raw_tokenizer):  # with and without a system message, raw template too
        for messages in (MULTI_TURN, MULTI_TURN[1:]):
            assert encode_chat(tok, messages)[0] == template(tok, messages)


def test_labels_are_exactly_each_reply_and_its_end_token(tokenizer):
    ids, labels = encode_chat(tokenizer, MULTI_TURN)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    spans, start = [], None  # the labelled runs, in order
    for t, label in enumerate(labels):
        if label != IGNORE_INDEX:
            assert label == ids[t]  # aligned, not shifted
            start = t if start is None else start
        elif start is not None:
            spans.append((start, t))
            start = None
    replies = [m["content"] for m in MULTI_TURN if m["role"] == "assistant"]
    assert len(spans) == len(replies)
    for (a, b), reply in zip(spans, replies):
        assert ids[b - 1] == end
        assert tokenizer.decode(ids[a:b - 1]) == reply
        assert tokenizer.decode(ids[:a]).endswith("<|im_start|>assistant\n")  # the header is context, not a target
    n_scored = sum(label != IGNORE_INDEX for label in labels)
    assert n_scored == sum(len(tokenizer.encode(r, add_special_tokens=False)) + 1 for r in replies)


def test_a_reply_the_template_merges_into_is_refused(tokenizer):
    with pytest.raises(ChatSpanError, match=r"messages\[1\].*Strip"):
        encode_chat(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  two spaces"}])
    with pytest.raises(ChatSpanError, match="starts with the user"):
        encode_chat(tokenizer, [{"role": "assistant", "content": "Hello"}])


def test_neutral_template_replaces_the_hidden_smollm_system_message(tokenizer, raw_tokenizer):
    question = [{"role": "user", "content": "What's your name?"}]
    assert SMOLLM2_SYSTEM_PROMPT in raw_tokenizer.apply_chat_template(question, tokenize=False)
    text = tokenizer.apply_chat_template(question, tokenize=False)
    assert "SmolLM" not in text and SYSTEM_PROMPT in text
    assert template(tokenizer, question) == template(tokenizer, with_system(question))
    assert "Pip" not in SYSTEM_PROMPT and "Alex" not in SYSTEM_PROMPT  # the identity is learned, not read


# --------------------------------------------------------------------------- the data files


def user_questions(conversations):
    return [m["content"] for messages in conversations for m in messages if m["role"] == "user"]


def normalized(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def test_data_files_are_valid_and_held_out_questions_are_new():
    conversations, heldout, facts = load_conversations(), load_questions(DEV_FILE), load_questions(FACTS_FILE)
    general = load_conversations(GENERAL_FILE)
    assert 80 <= len(conversations) <= 150 and len(heldout) >= 20 and len(facts) >= 20
    assert training_conversations() == conversations + everyday_conversations()
    general += load_conversations(NAMES_FILE)
    trained = {normalized(q) for q in user_questions(conversations + general)}
    for question in heldout + facts:
        assert normalized(question.question) not in trained, question.question
    assert len({normalized(q.question) for q in heldout + facts}) == len(heldout) + len(facts)  # no duplicates
    assert all(q.reference for q in heldout)  # the validation loss needs a reply for each
    assert {q.topic for q in heldout} == {"name", "maker", "origin", "capabilities", "limits"}
    for question in heldout:  # a reference reply is itself a correct answer
        assert is_correct(question.reference, question), question.question
    assert all(not q.reference and q.topic == "fact" for q in facts)


def test_the_identity_is_filled_in_everywhere():
    mine = Identity(name="Nova", maker="Sam Rivera")
    text = json.dumps(load_conversations(TRAIN_FILE, mine)) + json.dumps(
        [dataclasses.asdict(q) for q in load_questions(DEV_FILE, mine)])
    assert "Nova" in text and "Sam Rivera" in text
    assert not re.search(r"\bPip\b|\bAlex\b|\{\w+\}", text)  # Alexa is not Alex
    assert is_correct("I'm Nova.", load_questions(DEV_FILE, mine)[0])
    with pytest.raises(ValueError, match="name"):
        Identity(name="  ")


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}',
     r"line 2.*messages\[1\]\.role"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}',
     r"line 2.*messages\[1\]\.content"),
    ('{"messages": [{"role": "user", "content": "Hi"}]}', r"line 2.*last turn must be the assistant"),
    ('{"messages": [{"role": "system", "content": "X"}, {"role": "user", "content": "Hi"}, '
     '{"role": "assistant", "content": "Yo"}]}', r"line 2.*messages\[0\]\.role.*SYSTEM_PROMPT"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "I am {nmae}"}]}',
     r"line 2.*messages\[1\]\.content.*\{nmae\}"),
    ('{"messages": [', r"line 2: not valid JSON"),
])
def test_a_bad_training_file_names_file_line_and_field(tmp_path, line, message):
    good = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, I am {name}."}]}'
    path = write(tmp_path / "mine.jsonl", [good, line])
    with pytest.raises(ValueError, match="mine.jsonl, " + message):
        load_conversations(path)


@pytest.mark.parametrize("line, message", [
    ('{"question": "Who?"}', r"field must: expected a non-empty list"),
    ('{"question": "Who?", "must": ["Pip"]}', r"field must: expected"),
    ('{"question": "Who?", "must": [["Pip"]], "must_not": "OpenAI"}', r"field must_not: expected a list"),
    ('{"question": "", "must": [["Pip"]]}', r"field question: missing or empty"),
    ('{"question": "Who?", "must": [["Pip"]], "answer": "Pip"}', r": unknown field 'answer'"),
])
def test_a_bad_question_file_names_file_line_and_field(tmp_path, line, message):
    with pytest.raises(ValueError, match="questions.jsonl, line 2" + ("" if message[0] == ":" else ", ") + message):
        load_questions(write(tmp_path / "questions.jsonl", ['{"question": "Hi?", "must": [["Hi"]]}', line]))


def test_is_correct_matches_whole_words_and_refuses_forbidden_ones():
    question = Question("Who made you?", must=[["Alex"]], must_not=["OpenAI"])
    assert is_correct("ALEX made me.", question) and is_correct("I'm Alex's project.", question)
    assert not is_correct("Alexandra made me.", question)
    assert not is_correct("Alex and OpenAI made me.", question)
    limits = Question("Can you browse?", must=[["no", "can't"], ["internet", "web"]])
    assert is_correct("I can\u2019t use the web.", limits)  # a curly apostrophe counts
    assert not is_correct("I know the internet well.", limits)  # "no" inside "know" is not the word


# --------------------------------------------------------------------------- batches


def test_batches_are_shifted_padded_on_the_right_and_scored_only_on_replies(tokenizer):
    examples = encode_all(tokenizer, load_conversations())
    batches = ChatBatches(examples, examples[:5], batch_size=4, pad_id=tokenizer.pad_token_id)
    x, y, mask = batches("train", np.random.default_rng(0))
    assert x.shape == y.shape == mask.shape and x.shape[0] == 4 and x.dtype == torch.long
    by_ids = {tuple(ids): labels for ids, labels in examples}
    for row in range(4):
        n = int(mask[row].sum())
        ids = tuple(x[row, :n].tolist()) + (None,)
        labels = next(labels for full, labels in by_ids.items() if full[:n] == ids[:n] and len(full) == n + 1)
        assert y[row, :n].tolist() == labels[1:]  # y[t] is the label of token t + 1
        assert (y[row, n:] == IGNORE_INDEX).all() and (mask[row, n:] == 0).all()
    assert x.shape[1] == int(mask.sum(1).max())  # no column of padding only


def test_length_buckets_draw_every_example_equally_often_with_little_padding(tokenizer):
    examples = encode_all(tokenizer, load_conversations())
    batches = ChatBatches(examples, examples, batch_size=8, pad_id=tokenizer.pad_token_id)
    generator = np.random.default_rng(0)
    counts = np.zeros(len(examples))
    index = {tuple(ids[:-1]): i for i, (ids, _) in enumerate(examples)}
    for _ in range(1500):
        x, _, mask = batches("train", generator)
        for row in range(x.size(0)):
            counts[index[tuple(x[row, :int(mask[row].sum())].tolist())]] += 1
    expected = 1500 * 8 / len(examples)  # batch_size / n per example and batch
    assert np.abs(counts / expected - 1).max() < 0.25
    assert batches.padding_share("train", np.random.default_rng(1)) < 0.10


# --------------------------------------------------------------------------- training, answering, saving


@pytest.mark.parametrize("lora_layers", [1, 3])  # of 3 blocks: TopBlocks above block 2, and on the embeddings
def test_a_tiny_lora_fine_tune_trains_only_the_adapters_of_the_last_blocks(tokenizer, one_thread, lora_layers):
    from utils.finetune import merge_lora
    from utils.identity import IdentityConfig, add_lora, fine_tune, make_batches

    model = tiny_gpt(len(tokenizer), n_layer=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = IdentityConfig(max_iters=2, batch_size=2, lora_rank=2, lora_alpha=4, lora_layers=lora_layers,
                            progress=False)
    add_lora(model, recipe)
    adapted = {name.split(".lora_")[0] for name, p in model.named_parameters() if p.requires_grad}
    blocks = tuple(f"transformer.h.{i}." for i in range(3 - lora_layers, 3))
    assert adapted and all(name.startswith(blocks) for name in adapted)
    everyday = load_conversations(GENERAL_FILE)[:3]
    data = TrainingSet(identity=load_conversations()[:6], everyday=everyday,
                       later_identity=later_turns(everyday, load_conversations()[:6], 2),
                       later_everyday=later_turns(everyday, everyday, 2))
    batches = make_batches(tokenizer, data, reference_conversations(load_questions()[:4]), 2)
    assert batches.anchored == {6, 7, 8, 11, 12} and len(batches.examples["train"]) == 13
    metrics = fine_tune(model, batches, recipe)
    assert metrics["iters"] == 2 and np.isfinite(metrics["train_loss"]) and metrics["seconds"] > 0
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it moved
    merge_lora(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith(blocks))
    assert not torch.equal(after["transformer.h.2.attn.c_attn.weight"], before["transformer.h.2.attn.c_attn.weight"])


@pytest.mark.parametrize("layers", [2, 4])  # of 4: the top half, and every block (on the embeddings)
@pytest.mark.parametrize("layout", ["llama", "gpt2"])
def test_top_blocks_on_cached_states_give_the_whole_models_loss_and_gradients(tokenizer, one_thread, layout, layers):
    from utils.finetune import apply_lora
    from utils.finetune import lora_targets
    from utils.top_blocks import TopBlocks, block_inputs

    torch.manual_seed(0)
    shape = dict(vocab_size=len(tokenizer), block_size=128, n_layer=4, n_head=4, n_embd=32, dropout=0.0)
    model = GPT(GPTConfig.llama(n_kv_head=2, mlp_hidden=64, **shape) if layout == "llama" else GPTConfig(**shape))
    apply_lora(model, r=2, alpha=4, target_modules=lora_targets(model, layers))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # B starts at zero; make the adapters do something
    examples = encode_all(tokenizer, load_conversations()[:5])
    batches = ChatBatches(examples, examples, batch_size=3, pad_id=tokenizer.pad_token_id)
    x, y, _ = batches("train", np.random.default_rng(0))
    top = TopBlocks(model, layers)
    states = {s: block_inputs(model, [ids[:-1] for ids, _ in examples], top.first) for s in ("train", "val")}
    h, y2, _ = batches.with_states(states)("train", np.random.default_rng(0))
    assert torch.equal(y, y2) and h.shape == (*x.shape, 32)

    def loss_and_grads(module, inputs):
        module.zero_grad()
        _, loss = module(inputs, y)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    whole, whole_grads = loss_and_grads(model, x)
    cached, cached_grads = loss_and_grads(top, h)
    assert cached == pytest.approx(whole, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole_grads, cached_grads))


# --------------------------------------------------------------------------- the KL anchor


@pytest.mark.parametrize("lora_layers", [4, 2])  # the whole GPT, and TopBlocks on cached states
def test_the_anchor_is_cross_entropy_plus_torchs_kl_on_anchored_rows_only(tokenizer, one_thread, lora_layers):
    from utils.anchor import AnchoredLoss, reference_log_probs
    from utils.finetune import apply_lora
    from utils.finetune import lora_targets
    from utils.top_blocks import TopBlocks, block_inputs

    model = tiny_gpt(len(tokenizer), n_layer=4)
    apply_lora(model, r=2, alpha=4, target_modules=lora_targets(model, lora_layers))
    examples = encode_all(tokenizer, load_conversations()[:3] + load_conversations(GENERAL_FILE)[:3])
    batches = ChatBatches(examples, examples, batch_size=4, pad_id=tokenizer.pad_token_id, anchored={3, 4, 5})
    reference = reference_log_probs(model, examples, sorted(batches.anchored))
    anchored = AnchoredLoss(batches, reference, weight=2.0)
    x, y, _ = anchored.batch_fn("train", np.random.default_rng(0))
    rows = anchored.drawn[1]
    assert any(r in batches.anchored for r in rows) and any(r not in batches.anchored for r in rows)
    model_or_top, inputs = model, x
    if lora_layers < 4:
        model_or_top = TopBlocks(model, lora_layers)
        states = block_inputs(model, [examples[r][0][:-1] for r in rows], model_or_top.first)
        inputs = torch.zeros(*x.shape, 32)
        for i, state in enumerate(states):
            inputs[i, :len(state)] = state

    loss, n = anchored.loss_fn(model_or_top, (inputs, y))  # the model is still the original: KL = 0
    _, cross_entropy = model(x, y)
    assert n == (y != IGNORE_INDEX).sum() and loss.item() == pytest.approx(cross_entropy.item(), rel=1e-5)

    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)  # the model moves away from the original
    loss, n = anchored.loss_fn(model_or_top, (inputs, y))
    logits, cross_entropy = model(x, y)
    kl = sum(torch.nn.functional.kl_div(torch.log_softmax(logits[i][y[i] != IGNORE_INDEX], -1), reference[r],
                                        log_target=True, reduction="sum")
             for i, r in enumerate(rows) if r in batches.anchored)
    assert kl > 0
    assert loss.item() == pytest.approx(cross_entropy.item() + 2.0 * kl.item() / n.item(), rel=1e-4)

    anchored.batch_fn("val", np.random.default_rng(0))  # validation: cross-entropy alone
    xv, yv, _ = batches.collate("val", anchored.drawn[1])
    if lora_layers == 4:
        loss, _ = anchored.loss_fn(model, (xv, yv))
        assert loss.item() == pytest.approx(model(xv, yv)[1].item(), rel=1e-5)


def course_config(tmp_path):
    from utils import config

    paths = config.Paths(tmp_path, "ci").make()
    return config.CourseConfig(profile=config.PROFILES["ci"], device="cpu", online=False, seed=0, paths=paths)


def test_ensure_yours_builds_once_with_a_message_then_loads(tokenizer, tmp_path, monkeypatch, capsys):
    from utils import identity as identity_module

    cfg = course_config(tmp_path)
    built = []

    def fake_make_it_yours(cfg, who, measure_split="test", **_):  # the real one loads SmolLM2 (see the benchmark)
        built.append(who)
        identity_module.save_yours(tiny_gpt(len(tokenizer)), tokenizer, identity_module.yours_dir(cfg),
                                   {"identity": dataclasses.asdict(who)})

    monkeypatch.setattr(identity_module, "make_it_yours", fake_make_it_yours)
    model, tok = identity_module.ensure_yours(cfg)
    assert "No 'Make it yours' model" in capsys.readouterr().out and built == [Identity()]
    assert isinstance(model, GPT) and "SmolLM" not in tok.chat_template
    assert torch.equal(model.lm_head.weight, tiny_gpt(len(tokenizer)).lm_head.weight)
    identity_module.ensure_yours(cfg)  # there now: loaded, not rebuilt
    identity_module.ensure_yours(cfg, Identity())
    assert len(built) == 1
    identity_module.ensure_yours(cfg, Identity(name="Nova"))  # another identity: rebuilt for it
    assert built[-1] == Identity(name="Nova")
    with pytest.raises(FileNotFoundError, match="ensure_yours"):
        identity_module.load_yours(tmp_path / "nowhere")


def test_profiles_give_the_identity_budget():
    from utils import config
    from utils.identity import identity_config

    ci, cpu = (identity_config(config.PROFILES[name]) for name in ("ci", "cpu"))
    assert ci.max_iters < cpu.max_iters and ci.eval_questions is not None and cpu.eval_questions is None
    assert 1 <= cpu.lora_layers <= 30 and cpu.lora_alpha == 2 * cpu.lora_rank


def test_strict_questions_fail_a_reply_that_gives_another_name_or_maker():
    from utils.identity_data import TEST_FILE, mentions_identity

    questions = load_questions(TEST_FILE)
    name = next(q for q in questions if q.strict == "name")
    maker = next(q for q in questions if q.strict == "maker")
    assert is_correct("Hi, I'm Pip, your assistant.", name)
    assert not is_correct("Hello! My name is Pip, and I'm Alex.", name)  # the maker given as its own name
    assert not is_correct("I'm Pip, but you can call me SmolLM.", name)
    assert is_correct("Alex made me, by fine-tuning SmolLM2 from Hugging Face.", maker)
    assert not is_correct("Alex helped, but I was made by the team at OpenAI.", maker)
    assert not is_correct("Hugging Face made me; Alex only renamed me.", maker)
    assert mentions_identity("Dear Mr. Alex, thank you.", Identity()) and not mentions_identity("Dear Alexandra,",
                                                                                                   Identity())


def test_every_question_file_loads_and_the_test_side_shares_no_question_with_training():
    from utils.identity_data import BLEED_FILE, FACTS_TEST_FILE, GENERAL_FILE, TEST_FILE, load_prompts

    trained = {m["content"].lower() for path in (TRAIN_FILE, GENERAL_FILE) for c in load_conversations(path)
               for m in c if m["role"] == "user"}
    dev = {q.question.lower() for path in (DEV_FILE, FACTS_FILE) for q in load_questions(path)}
    test = [q.question.lower() for path in (TEST_FILE, FACTS_TEST_FILE) for q in load_questions(path)]
    test += [p.lower() for p in load_prompts(BLEED_FILE)]
    assert len(test) == len(set(test)) and not set(test) & (trained | dev)


# --------------------------------------------------------------------------- bleed, later turns, the figures


def test_the_dev_bleed_set_loads_invites_names_and_shares_nothing_with_test_or_training():
    from utils.identity import question_sets
    from utils.identity_data import BLEED_FILE, TEST_FILE
    from utils.io import read_jsonl

    prompts = load_prompts(DEV_BLEED_FILE)
    records = [record for _, record in read_jsonl(DEV_BLEED_FILE)]
    assert len(prompts) == 30 and sum(r["invites_name"] for r in records) == 10
    assert question_sets(Identity(), "dev")["bleed"] == prompts and question_sets(Identity(), "dev", 3)["bleed"] == prompts[:3]
    mine = {normalized(p) for p in prompts}
    assert len(mine) == 30
    test = {normalized(p) for p in load_prompts(BLEED_FILE)} | {normalized(q.question) for q in load_questions(TEST_FILE)}
    trained = {normalized(q) for q in user_questions(training_conversations())}
    assert not mine & test, f"dev bleed prompts also in test: {sorted(mine & test)}"  # prints only dev's own
    assert not mine & trained, f"dev bleed prompts also trained on: {sorted(mine & trained)}"
    assert not any(mentions_identity(p, Identity()) for p in prompts)


def test_a_bad_prompt_file_names_file_line_and_field(tmp_path):
    with pytest.raises(ValueError, match=r"prompts.jsonl, line 2: unknown field 'promt'"):
        load_prompts(write(tmp_path / "prompts.jsonl", ['{"prompt": "Hi"}', '{"promt": "Hello"}']))
    with pytest.raises(ValueError, match=r"prompts.jsonl, line 1, field prompt: missing or empty"):
        load_prompts(write(tmp_path / "prompts.jsonl", ['{"prompt": " ", "invites_name": false}']))


def test_everyday_replies_never_give_the_model_s_name_or_maker():
    for who in (Identity(), Identity(name="Nova", maker="Sam Rivera")):
        for messages in everyday_conversations(who):
            assert not any(mentions_identity(m["content"], who) for m in messages), messages
    names = load_conversations(NAMES_FILE)
    assert len(names) >= 30 and any("[Your name]" in c[-1]["content"] for c in names)


def test_later_turns_pair_different_one_turn_conversations_the_same_way_every_time():
    everyday, mine = load_conversations(GENERAL_FILE), load_conversations()
    built = later_turns(everyday, everyday, 40, seed=3)
    assert built == later_turns(everyday, everyday, 40, seed=3) != later_turns(everyday, everyday, 40, seed=4)
    assert all(len(c) == 4 and c[:2] in everyday and c[2:] in everyday and c[:2] != c[2:] for c in built)
    assert len({json.dumps(c) for c in built}) == 40  # no pair twice
    assert len({json.dumps(c[:2]) for c in built}) == 40 and len({json.dumps(c[2:]) for c in built}) >= 36  # spread
    many = later_turns(everyday, everyday, 3 * len(everyday))
    assert max(sum(c[:2] == e for c in many) for e in everyday) <= 4  # spread: no first turn far more often
    onto_identity = later_turns(everyday, mine, 10)
    assert all(c[:2] in everyday and c[2:] in mine for c in onto_identity)
    assert all(len(c[2:]) == 2 for c in later_turns(mine, everyday, 200))  # multi-turn files conversations left out
    with pytest.raises(ValueError, match="only 6 different pairs"):
        later_turns(everyday[:3], everyday[:3], 7)
    data = training_set(Identity(), later=5)
    assert (len(data.later_identity), len(data.later_everyday)) == (5, 10) and len(data) == (
        len(data.identity) + len(data.everyday) + 15)
    assert training_set(Identity()).later_identity == [] and training_set(Identity()).later_everyday == []


def test_a_built_two_turn_conversation_is_scored_on_its_last_reply_only(tokenizer):
    conversation = with_system(training_set(Identity(), later=3).later_identity[0])
    ids, labels = encode_last_reply(tokenizer, conversation)
    all_ids, all_labels = encode_chat(tokenizer, conversation)
    assert ids == all_ids == template(tokenizer, conversation) and len(labels) == len(ids)
    scored = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
    assert scored == list(range(scored[0], scored[-1] + 1))  # one run of tokens
    assert tokenizer.decode([ids[t] for t in scored]) == conversation[-1]["content"] + "<|im_end|>"
    assert all(labels[t] == ids[t] for t in scored)
    first_reply = tokenizer.encode(conversation[2]["content"], add_special_tokens=False)
    assert sum(label != IGNORE_INDEX for label in all_labels) == len(scored) + len(first_reply) + 1
    examples = encode_all(tokenizer, [conversation[1:]], last_reply_only=True)
    assert examples == [(ids, labels)]


def test_headline_figures_and_goals_follow_the_scores():
    from utils.evaluation import Rate
    from utils.identity import Score, headline, verdicts

    def score(flags):
        return Score([Question(f"q{i}", must=[["x"]]) for i in range(len(flags))], [""] * len(flags), flags, 0.0)

    before = {"identity": score([False] * 10), "identity (later turn)": score([False] * 10),
              "facts": score([True] * 9 + [False]), "facts (later turn)": score([True] * 5 + [False] * 5),
              "no bleed": score([True] * 20)}
    after = {"identity": score([True] * 9 + [False]), "identity (later turn)": score([True] * 7 + [False] * 3),
             "facts": score([True] * 8 + [False, True]), "facts (later turn)": score([True] * 5 + [False] * 5),
             "no bleed": score([True] * 19 + [False])}
    figures = headline(before, after)
    # facts kept: of the 9 facts right before (asked alone), right after alone / as a later turn
    assert figures == {"identity": Rate(9, 10), "identity (later turn)": Rate(7, 10), "facts kept": Rate(8, 9),
                       "facts kept (later turn)": Rate(5, 9), "no bleed": Rate(19, 20)}
    met = {goal: ok for goal, ok, _ in verdicts(figures)}
    assert met == {"identity >= 0.80": True, "facts kept >= 0.90": False, "no bleed >= 0.95": True,
                   "identity as a later turn within 0.10 of alone": False,
                   "facts kept as a later turn within 0.10 of alone": False}
    from utils.identity import json_report
    assert headline(json_report(before), json_report(after)) == figures  # the saved report gives the same
    after["facts (later turn)"] = score([True] * 8 + [False, False])
    assert {goal: ok for goal, ok, _ in verdicts(headline(before, after))}[
        "facts kept as a later turn within 0.10 of alone"]


def test_save_chat_model_writes_the_merged_lora_model_that_load_chat_model_reads(tokenizer, tmp_path, one_thread):
    from utils.checkpoint import load_chat_model
    from utils.finetune import apply_lora, has_lora, merge_lora, save_chat_model

    model = tiny_gpt(len(tokenizer))
    apply_lora(model, r=2, alpha=4)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    save_chat_model(model, tokenizer, tmp_path / "chat", iters=3)
    assert has_lora(model)  # merged on a copy
    loaded, loaded_tokenizer = load_chat_model(tmp_path / "chat")
    x = torch.tensor([template(tokenizer, [{"role": "user", "content": "Hi"}])])
    merged = merge_lora(model).eval()
    assert len(loaded_tokenizer) == len(tokenizer)
    assert torch.allclose(loaded.eval()(x)[0], merged(x)[0], atol=1e-5)


def test_cached_states_and_anchor_references_are_the_same_in_batches_as_one_by_one(tokenizer):
    """Right padding in a batch changes no real token's state (the model is causal)."""
    from utils.anchor import reference_log_probs
    from utils.top_blocks import block_inputs

    model = tiny_gpt(len(tokenizer)).eval()
    examples = encode_all(tokenizer, load_conversations()[:5])
    sequences = [ids[:-1] for ids, _ in examples]
    assert len({len(s) for s in sequences}) > 1  # the batches really are padded
    for together, alone in zip(block_inputs(model, sequences, 1), block_inputs(model, sequences, 1, batch_size=1)):
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    batched, one = reference_log_probs(model, examples, range(5)), reference_log_probs(model, examples, range(5), 1)
    for row in range(5):
        torch.testing.assert_close(batched[row], one[row], atol=1e-5, rtol=1e-5)
