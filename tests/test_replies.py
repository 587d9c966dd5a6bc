"""utils/replies.py: the one reply path. Batched replies equal one-at-a-time replies, the stop rule,
streaming in whole characters, cropping long chats, the chat box's function. Tiny random GPTs: seconds."""

import pytest
import torch

from utils import replies
from utils.chat import ChatFormatError, add_chat_tokens, crop_prompt, end_of_turn_id, format_prompt
from utils.model import GPT, GPTConfig
from utils.tokenization import train_course_tokenizer

TEXTS = ["hello there, how are you today?", "i am fine, thanks for asking!", "what do you like to do?",
         "How do I boil an egg? Tell me a joke about cats, please."] * 5
CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what do you like to do today?"}],
    [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "i am fine"},
     {"role": "user", "content": "how are you today, and what do you like?"}],
    [{"role": "user", "content": "How do I boil an egg?"}],
    [{"role": "user", "content": "Tell me a joke about cats, please."}],
]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return add_chat_tokens(train_course_tokenizer(TEXTS, 300, tmp_path_factory.mktemp("tok")))



def tiny(tokenizer, seed=0, block_size=64, **overrides):
    """A random tiny GPT whose special tokens' logits are 0, so replies have words before they stop."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=len(tokenizer), block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                          **overrides)).eval()
    with torch.no_grad():
        model.lm_head.weight[tokenizer.all_special_ids] = 0.0
    return model


class Scripted(torch.nn.Module):
    """Stands in for a GPT whose next tokens we choose: generate() appends ``script`` as GPT.generate would."""

    def __init__(self, script, block_size=64):
        super().__init__()
        self.script = script
        self.config = GPTConfig(vocab_size=60000, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, idx, max_new_tokens, stop_ids=None, on_token=None, **sampling):
        for token in self.script[:max_new_tokens]:
            idx = torch.cat([idx, torch.full((idx.size(0), 1), token)], dim=1)
            if token in stop_ids:
                break
            if on_token is not None:
                on_token(token)
        return idx


@pytest.mark.parametrize("layout", [{}, dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False)])
def test_batched_replies_equal_one_at_a_time_replies(course, layout):
    """Conversations of different lengths share batches; each reply is the one it gets alone."""
    model = tiny(course, **layout)
    together = replies.generate_replies(model, course, CHATS, max_new_tokens=12)
    alone = [replies.generate_replies(model, course, [chat], max_new_tokens=12)[0] for chat in CHATS]
    streamed = [replies.reply_to(model, course, chat, max_new_tokens=12) for chat in CHATS]
    assert together == alone == streamed
    assert all(r.n_tokens > 0 for r in together)  # every row wrote something: the equality says something
    small_batches = replies.generate_replies(model, course, CHATS, max_new_tokens=12, batch_size=2)
    assert small_batches == together


def test_a_reply_stops_at_the_first_special_token_and_says_whether_it_ended_its_turn(course):
    user = [{"role": "user", "content": "hi"}]
    ok = course.encode("ok", add_special_tokens=False)
    end, user_marker = course.convert_tokens_to_ids(["<|end|>", "<|user|>"])
    closed = replies.reply_to(Scripted(ok + [end] + ok), course, user)
    assert closed == replies.Reply("ok", ok, True)
    wandering = replies.reply_to(Scripted(ok + [user_marker] + ok), course, user)  # writes the user's turn
    assert wandering.text == "ok" and not wandering.ended
    rambling = replies.generate_replies(Scripted(ok * 20), course, [user], max_new_tokens=6)[0]
    assert not rambling.ended and rambling.n_tokens == 6


def test_streams_whole_characters_and_the_stripped_text(course):
    user = [{"role": "user", "content": "hi"}]
    e_acute = course.convert_tokens_to_ids(["Ã", "©"])  # the two UTF-8 bytes of "é", one token each
    ok = course.encode(" ok", add_special_tokens=False)
    end = end_of_turn_id(course)
    pieces = []
    reply = replies.reply_to(Scripted(ok + e_acute + course.encode(" ", add_special_tokens=False) + [end]), course,
                             user, stream=pieces.append)
    assert reply.text == "oké" and "".join(pieces) == "oké" and "\ufffd" not in "".join(pieces)


def test_a_tokenizer_with_its_own_template_replies_in_its_own_format(own_template):
    messages = [{"role": "user", "content": "Hi"}]
    assert own_template.decode(format_prompt(own_template, messages)) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ok = own_template.encode("ok", add_special_tokens=False)
    reply = replies.reply_to(Scripted(ok + [end_of_turn_id(own_template)]), own_template, messages)
    assert reply.ended and reply.text == "ok"  # <|im_end|> closes the turn, as <|end|> does in the course format
    start = own_template.convert_tokens_to_ids("<|im_start|>")
    assert not replies.reply_to(Scripted(ok + [start]), own_template, messages).ended


def test_long_chats_lose_their_oldest_turns_and_a_long_message_keeps_its_end(course):
    model = tiny(course, block_size=40)
    long_chat = (CHATS[2][:2] * 3) + CHATS[2][2:]  # three exchanges, then the question
    ids = crop_prompt(course, long_chat, block_size=40, max_new_tokens=16)
    assert len(ids) <= 24 and ids[-3:] == format_prompt(course, long_chat[-1:])[-3:]
    pieces = []
    reply = replies.reply_to(model, course, long_chat, max_new_tokens=16, stream=pieces.append)
    assert reply.text == "".join(pieces)
    long_message = [{"role": "user", "content": "hello there " * 40 + "How do I boil an egg?"}]
    with pytest.raises(ChatFormatError, match="last user message"):  # a chat box: the person can shorten it
        replies.reply_to(model, course, long_message, max_new_tokens=8)
    kept_end = replies.generate_replies(model, course, [long_message, [{"role": "user", "content": "hi " * 50 +
                                                                        "How do I boil an egg?"}]], max_new_tokens=8)
    assert kept_end[0] == kept_end[1]  # only the end of each message was kept, and the ends are the same
    with pytest.raises(ChatFormatError, match="last user message"):  # the format alone does not fit
        replies.generate_replies(tiny(course, block_size=6), course, [[{"role": "user", "content": "hi"}]], 4)


def test_chat_fn_streams_and_repeats_with_a_seed(course):
    model = tiny(course)
    pieces = []
    first = replies.chat_fn(model, course, max_new_tokens=8, seed=3)(CHATS[0], pieces.append, temperature=1.0)
    assert first == "".join(pieces)
    again = replies.chat_fn(model, course, max_new_tokens=8, seed=3)(CHATS[0], temperature=1.0)
    assert again == first  # same seed, same sampled reply: the generator is the function's own


def test_sampled_replies_repeat_with_the_same_generator_seed(course):
    model = tiny(course)

    def sample(seed):
        generator = torch.Generator().manual_seed(seed)
        return replies.generate_replies(model, course, CHATS, 8, temperature=1.0, top_k=50, generator=generator)

    assert sample(1) == sample(1) != sample(2)
