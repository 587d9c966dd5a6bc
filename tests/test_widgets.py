"""utils.widgets driven as a browser would: set a control's value, press a button, read what shows."""

import pytest

from utils.widgets import chat_box, gpu_calculator, sampling_playground


def echo_reply(messages, on_token, temperature=None):
    """A stand-in model: streams back the last message word by word, and the temperature it got."""
    words = f"you said {messages[-1]['content']} at {temperature}".split()
    for word in words:
        on_token(word + " ")
    return " ".join(words)


def test_enter_sends_a_message_and_the_reply_streams_in():
    box = chat_box(echo_reply, temperature=0.8)
    box.message.value = "hello there"  # what the browser syncs when Enter is pressed
    assert box.history == [{"role": "user", "content": "hello there"},
                           {"role": "assistant", "content": "you said hello there at 0.8"}]
    assert "you said hello there" in box.transcript.value and box.message.value == ""
    box.temperature.value = 0.3
    box.message.value = "again"
    assert box.history[-1]["content"] == "you said again at 0.3"  # the slider reaches the model


def test_send_button_and_reset():
    box = chat_box(lambda messages, on_token: "hi")
    assert box.temperature is None  # no slider unless asked: reply_fn(messages, on_token)
    box.send.click()
    assert box.history == []  # an empty message sends nothing
    box.message.value = "  "
    box.send.click()
    assert box.history == []
    box.submit("hello")
    assert [m["role"] for m in box.history] == ["user", "assistant"]
    box.reset.click()
    assert box.history == [] and "New conversation" in box.transcript.value


def test_a_model_error_shows_in_the_box_and_drops_the_message():
    def too_long(messages, on_token):
        raise ValueError("the message is longer than the model's context (32 tokens)")

    box = chat_box(too_long)
    assert box.submit("x" * 500) is None
    assert box.history == [] and "longer than the model&#x27;s context" in box.transcript.value


def test_playground_reprints_when_a_slider_moves():
    calls = []

    def playground(prompt, temperature, top_k, top_p, new_tokens, seed):
        calls.append(temperature)
        print(f"{prompt} -> sampled at temperature {temperature}")

    panel = sampling_playground(playground)
    assert "at temperature 0.8" in panel.text and len(calls) == 1  # printed once, before any move
    panel.controls["temperature"].value = 1.5
    assert "at temperature 1.5" in panel.text and "at temperature 1.5" in panel.printout.value
    assert panel.controls["temperature"].style.description_width == "initial"  # "temperature", not "temperat…"


def test_calculator_shows_an_error_instead_of_losing_it():
    def fits(preset, batch_size, seq_len, precision, gpu_gb):
        if batch_size > 32:
            raise ValueError("batch too large for this demo")
        print(f"{preset} batch {batch_size} {precision} on {gpu_gb} GB: fits")

    panel = gpu_calculator(fits, {"gpt2": None, "gpt2-xl": None}, {"fp32": (4, 4), "mixed (bf16)": (4, 2)},
                           {"Colab T4 (16 GB)": 16, "A100 (80 GB)": 80})
    assert "gpt2 batch 8 mixed (bf16) on 16 GB: fits" in panel.text  # mixed precision by default
    panel.controls["gpu_gb"].value = 80
    assert "on 80 GB" in panel.text
    assert "GPU = A100 (80 GB)" in panel._repr_mimebundle_()["text/plain"]  # the stored copy names the choice
    panel.controls["batch_size"].value = 40
    assert panel.text.startswith("error: ValueError: batch too large")


@pytest.mark.parametrize("make", [
    lambda: chat_box(echo_reply, temperature=0.8),
    lambda: sampling_playground(lambda **settings: print("a sample")),
])
def test_stored_output_is_readable_without_a_kernel(make):
    bundle = make()._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # a live kernel shows the widget
    assert "interactive: run the cell in Jupyter" in bundle["text/plain"]  # GitHub shows words, not VBox(...)
    assert "VBox(" not in bundle["text/plain"] and "<" in bundle["text/html"]
