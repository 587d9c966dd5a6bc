"""The course's interactive widgets, one call each: 06's chat box, 03's "what fits my GPU?", 05's sampling playground.

Put the call last in its cell (it returns the widget, which the notebook shows):

    from utils.widgets import chat_box, gpu_calculator, sampling_playground
    chat_box(reply_fn, temperature=0.8)                    # 06: reply_fn(messages, on_token, temperature) -> str
    gpu_calculator(fits, model_sizes.GPT_PRESETS, PRECISIONS, GPUS)  # 03: fits(...) prints its verdict
    sampling_playground(playground)                        # 05: playground(...) prints one sample

What they do that an inline ``interact`` did not:

- **Enter sends** in the chat box (the Send button still works): the message box syncs
  its value on Enter, and a change of value sends it.
- **Whole labels**: ``description_width: initial`` gives every control the width its
  label needs ("temperature", not "temperat…").
- **A readable copy for readers without a kernel**: each widget is shown with a static
  text (and HTML) version of what it shows at that moment, the panel's settings and
  printout or the chat so far. JupyterLab with a live kernel shows the widget; GitHub,
  and a notebook just opened, show that copy instead of ``VBox(children=(HTML(...``.
- **Testable without a browser**: the logic is plain methods (``ChatBox.submit``,
  ``PrintingPanel.refresh``) that tests call after setting widget values.
"""

from __future__ import annotations

import contextlib
import html
import io
from collections.abc import Callable, Iterable, Mapping

import ipywidgets as widgets

LABELS = {"description_width": "initial"}  # a control's label as wide as its text
WIDE = widgets.Layout(width="460px")


def _snapshot_bundle(widget: widgets.Widget, text: str, html_text: str) -> dict:
    """The widget's own display data plus a static copy: JupyterLab shows the widget, other viewers the copy."""
    data = dict(widget._repr_mimebundle_() or {})
    data["text/plain"] = text
    data["text/html"] = html_text
    return data


# --------------------------------------------------------------------------- panels of controls and a printout


class PrintingPanel:
    """Controls, and what ``fn(**values)`` prints, printed again whenever a control changes.

    ``fn`` is a plain notebook function that prints (``fits``, ``playground``); the panel
    calls it once at once, so its text is there before anyone touches a control.
    """

    def __init__(self, fn: Callable[..., object], controls: Mapping[str, widgets.ValueWidget], title: str):
        self.fn, self.controls, self.title = fn, dict(controls), title
        self.printout = widgets.HTML()
        for control in self.controls.values():
            control.style = LABELS
            control.observe(lambda _change: self.refresh(), names="value")
        self.widget = widgets.VBox([widgets.HTML(f"<b>{html.escape(title)}</b>"), *self.controls.values(),
                                    self.printout])
        self.text = ""
        self.refresh()

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def refresh(self) -> str:
        """Call ``fn`` with the controls' values; show and return what it printed (or its error)."""
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                self.fn(**self.values())
        except Exception as error:  # a bad setting must show in the panel, not vanish into a log
            printed.write(f"error: {type(error).__name__}: {error}\n")
        self.text = printed.getvalue()
        self.printout.value = f"<pre style='white-space: pre-wrap'>{html.escape(self.text)}</pre>"
        return self.text

    def settings(self) -> str:
        """``model = 'gpt2', GPU = Colab T4 (16 GB)``: a dropdown shows its label, other controls their value."""
        shown = {name: control.label if isinstance(control, widgets.Dropdown) else repr(control.value)
                 for name, control in self.controls.items()}
        return ", ".join(f"{self.controls[name].description or name} = {text}" for name, text in shown.items())

    def _repr_mimebundle_(self, **kwargs):
        text = f"{self.title} (interactive: run the cell in Jupyter to change {self.settings()})\n\n{self.text}"
        page = (f"<p><b>{html.escape(self.title)}</b> <i>(interactive: run the cell in Jupyter)</i><br>"
                f"{html.escape(self.settings())}</p><pre>{html.escape(self.text)}</pre>")
        return _snapshot_bundle(self.widget, text, page)


def _slider(kind, value, low, high, step, description):
    return kind(value=value, min=low, max=high, step=step, description=description, continuous_update=False,
                layout=WIDE)


def gpu_calculator(fits: Callable[..., object], presets: Iterable[str], precisions: Iterable[str],
                   gpus: Mapping[str, float], preset: str = "gpt2", batch_size: int = 8, seq_len: int = 1024,
                   precision: str | None = None, gpu_gb: float = 16) -> PrintingPanel:
    """03's "what fits my GPU?": ``fits(preset, batch_size, seq_len, precision, gpu_gb)`` prints the verdict.

    ``presets`` and ``precisions`` are names (a dict gives its keys), ``gpus`` maps a label
    to gigabytes. The precision starts on mixed precision when offered (what one trains with).
    """
    presets, precisions = list(presets), list(precisions)
    precision = precision or next((p for p in precisions if p.startswith("mixed")), precisions[0])
    controls = {
        "preset": widgets.Dropdown(options=presets, value=preset, description="model"),
        "batch_size": _slider(widgets.IntSlider, batch_size, 1, 64, 1, "batch size"),
        "seq_len": widgets.Dropdown(options=[128, 256, 512, 1024, 2048], value=seq_len, description="sequence length"),
        "precision": widgets.Dropdown(options=precisions, value=precision, description="precision"),
        "gpu_gb": widgets.Dropdown(options=dict(gpus), value=gpu_gb, description="GPU"),
    }
    return PrintingPanel(fits, controls, "What fits my GPU?")


def sampling_playground(playground: Callable[..., object], prompt: str = "hi! where are you from?",
                        temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, new_tokens: int = 40,
                        seed: int = 0) -> PrintingPanel:
    """05's playground: ``playground(prompt, temperature, top_k, top_p, new_tokens, seed)`` prints one sample.

    Top-k 0 and top-p 1.0 mean no limit. Sliders act when released, so each move samples once.
    """
    controls = {
        "prompt": widgets.Text(value=prompt, description="prompt", continuous_update=False, layout=WIDE),
        "temperature": _slider(widgets.FloatSlider, temperature, 0.0, 2.0, 0.1, "temperature"),
        "top_k": _slider(widgets.IntSlider, top_k, 0, 100, 1, "top-k (0: all)"),
        "top_p": _slider(widgets.FloatSlider, top_p, 0.05, 1.0, 0.05, "top-p (1: all)"),
        "new_tokens": _slider(widgets.IntSlider, new_tokens, 5, 200, 1, "new tokens"),
        "seed": _slider(widgets.IntSlider, seed, 0, 20, 1, "seed"),
    }
    return PrintingPanel(playground, controls, "Sampling playground")


# --------------------------------------------------------------------------- the chat box

ReplyFn = Callable[..., str]  # reply_fn(messages, on_token[, temperature=...]) -> the reply's text


class ChatBox:
    """A conversation with any model: ``reply_fn(messages, on_token) -> str`` writes each reply.

    ``messages`` is the conversation so far (``[{"role": "user", "content": ...}, ...]``, ending
    with the new user message); ``reply_fn`` calls ``on_token(piece)`` with each piece of text
    as it comes (the box shows it at once) and returns the whole reply. With ``temperature``
    set, the box has a temperature slider and passes ``temperature=`` to ``reply_fn`` too.
    A ``ValueError`` from ``reply_fn`` (say, a message longer than the model's context) is
    shown in the box and the message is dropped from the conversation.
    """

    def __init__(self, reply_fn: ReplyFn, temperature: float | None = None, title: str = "Chat with your model"):
        self.reply_fn, self.title = reply_fn, title
        self.history: list[dict] = []
        self.transcript = widgets.HTML(value="<i>Say something.</i>")
        self.message = widgets.Text(placeholder="your message, then Enter", continuous_update=False,
                                    layout=widgets.Layout(width="60%"))
        self.send = widgets.Button(description="Send", button_style="primary")
        self.reset = widgets.Button(description="Reset")
        self.temperature = None
        if temperature is not None:
            self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.1,
                                                   description="temperature", style=LABELS,
                                                   continuous_update=False)
        # Enter (or leaving the box) syncs the value: a new value is a message to send.
        self.message.observe(lambda change: self.submit(change["new"]), names="value")
        self.send.on_click(lambda _button: self.submit(self.message.value))
        self.reset.on_click(lambda _button: self.clear())
        rows = [self.transcript, widgets.HBox([self.message, self.send, self.reset])]
        self.widget = widgets.VBox(rows + ([self.temperature] if self.temperature is not None else []))

    def submit(self, text: str) -> str | None:
        """Send ``text`` as the user's message; return the reply (None for an empty message or an error)."""
        text = (text or "").strip()
        if not text:
            return None
        self.message.value = ""  # observed: an empty value sends nothing
        self.history.append({"role": "user", "content": text})
        streamed: list[str] = []

        def on_token(piece: str) -> None:
            streamed.append(piece)
            self._render(partial="".join(streamed))

        options = {} if self.temperature is None else {"temperature": self.temperature.value}
        try:
            reply = self.reply_fn(list(self.history), on_token, **options)
        except Exception as error:  # shown in the box: a widget callback's traceback would go unseen
            self.history.pop()
            self._render(note=f"{type(error).__name__}: {error}")
            return None
        self.history.append({"role": "assistant", "content": reply or "..."})
        self._render()
        return reply

    def clear(self) -> None:
        self.history.clear()
        self.transcript.value = "<i>New conversation.</i>"

    def _render(self, partial: str = "", note: str = "") -> None:
        lines = [f"<b>{m['role']}:</b> {html.escape(m['content'])}" for m in self.history]
        if partial:
            lines.append(f"<b>assistant:</b> {html.escape(partial)}▌")
        if note:
            lines.append(f"<i>{html.escape(note)}</i>")
        self.transcript.value = "<br>".join(lines)

    def _repr_mimebundle_(self, **kwargs):
        said = "\n".join(f"{m['role']}: {m['content']}" for m in self.history)
        text = (f"{self.title} (interactive: run the cell in Jupyter, type a message and press Enter)"
                + (f"\n\n{said}" if said else ""))
        page = (f"<p><b>{html.escape(self.title)}</b> <i>(interactive: run the cell in Jupyter, type a message "
                f"and press Enter)</i></p>" + (f"<pre>{html.escape(said)}</pre>" if said else ""))
        return _snapshot_bundle(self.widget, text, page)


def chat_box(reply_fn: ReplyFn, temperature: float | None = None, title: str = "Chat with your model") -> ChatBox:
    """06's chat box around any model; see ``ChatBox``."""
    return ChatBox(reply_fn, temperature=temperature, title=title)
