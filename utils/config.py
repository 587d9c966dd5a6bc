"""One switch for the whole course: the profile, the device, the seed and the paths.

Every notebook starts with ``cfg = utils.config.load()``. The profile chooses
*sizes* only (how much data, how big a tokenizer or model); the code path is
the same in all three:

- ``ci``:  seconds per notebook on 2 CPU cores; what nbval runs in CI.
- ``cpu``: a laptop; minutes; the full embedded dataset.
- ``gpu``: Colab T4 and up; hub data when online, a GPT of GPT-2 124M's shape (12 layers,
  width 768) in the Llama layout with the course's 8,192-token vocabulary: ~91 M parameters.

Set ``COURSE_PROFILE`` to choose; the default is ``gpu`` when CUDA is there,
else ``cpu``.
"""

from __future__ import annotations

import os
import random
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_NAMES = ("ci", "cpu", "gpu")


@dataclass(frozen=True)
class Profile:
    """The sizes a profile hands to the notebooks. Add fields here, never in a notebook."""

    name: str
    # 01 data collection
    max_conversations: int | None  # None = every embedded conversation
    hub_dataset: str | None  # a hub conversation dataset to add when online
    # 02 preprocessing and tokenization
    spelling_sample: int  # messages to run the (slow) spelling corrector on
    bpe_train_chars: int  # characters our from-scratch BPE trains on
    bpe_vocab_size: int  # vocabulary of our from-scratch BPE
    tokenizer_vocab_size: int  # vocabulary of the course tokenizer (HF tokenizers)
    # 04 pretraining: the GPT's shape and the training budget
    n_layer: int  # transformer blocks
    n_head: int  # attention heads per block
    n_embd: int  # width of the residual stream
    block_size: int  # tokens of context
    batch_size: int  # sequences per micro-batch
    grad_accum_steps: int  # micro-batches per optimizer step
    max_iters: int  # optimizer steps
    learning_rate: float  # peak learning rate (warm-up, then cosine to a tenth of it)
    warmup_iters: int  # steps of linear warm-up
    eval_interval: int  # steps between validation losses, samples and checkpoints
    eval_iters: int  # batches averaged per validation-loss estimate (pretraining)
    layout: str  # the block: "gpt2" (LayerNorm, learned positions, GELU) or "llama" (RMSNorm, RoPE, SwiGLU)
    # 04's size study: candidate shapes trained on the same compute, a fraction of the pretraining run's
    study_iters: int  # each candidate gets the FLOPs that the profile's model spends in this many steps
    study_shapes: tuple[tuple[int, int, int], ...]  # candidate (n_layer, n_head, n_embd), the profile's own among them
    study_learning_rates: tuple[float, ...]  # each shape's peak learning rate (a short sweep; see each profile)
    study_eval_tokens: int  # validation tokens that score every candidate
    # 06 fine-tuning budget (the model and context are the pretrained one's)
    sft_max_iters: int  # optimizer steps of supervised fine-tuning
    sft_batch_size: int  # conversations per micro-batch
    sft_eval_iters: int  # batches averaged per validation-loss estimate (fine-tuning)
    sft_eval_conversations: int  # held-out chats whose first, middle and last turns test format adherence
    # 06 "Make it yours": LoRA on SmolLM2-135M-Instruct (utils.identity)
    identity_max_iters: int  # LoRA optimizer steps
    identity_batch_size: int  # conversations per step
    identity_lora_rank: int  # r of each adapter (alpha = 2r)
    identity_lora_layers: int  # adapt only the last N of SmolLM2's 30 blocks: backpropagation stops there
    identity_eval_questions: int | None  # held-out and factual questions asked (each set); None = all
    identity_max_new_tokens: int  # reply budget per evaluation question (greedy)
    identity_later_turns: int  # two-turn training conversations built of each kind (identity_data.later_turns)
    identity_long_reply_tokens: int  # 06's repetition-penalty demo: the length of one long greedy reply
    # 07 alignment: a refusal probe decides, DPO teaches the words (utils.preferences, refusal_probe, alignment)
    align_per_area: int | None  # training requests per harm area, harmful and benign each; None = all (20)
    align_everyday: int | None  # everyday training requests; None = all (60)
    align_test_per_area: int | None  # test requests per area and kind asked before and after; None = all (8)
    align_max_new_tokens: int  # reply budget of the model's own answers and of the test replies
    probe_layers: tuple[int, ...]  # blocks whose output the probe may read (chosen on dev)
    dpo_max_iters: int  # DPO optimizer steps
    dpo_batch_size: int  # pairs per step
    dpo_beta: float  # DPO's beta: how far the policy may move from the reference
    dpo_sft_weight: float  # RPO: weight of the chosen replies' cross-entropy added to the DPO loss
    dpo_lora_rank: int  # r of each adapter (alpha = 2r)
    dpo_lora_layers: int  # adapt only the last N of SmolLM2's 30 blocks
    dpo_mc_items: int | None  # multiple-choice items scored before and after DPO (utils.multiple_choice); None = all
    # the machine
    progress: bool  # progress bars and running loss prints while training (off in ci: short logs)
    torch_threads: int | None  # torch.set_num_threads for the training notebooks; None = torch's default


PROFILES = {
    "ci": Profile(
        name="ci",
        max_conversations=400,
        hub_dataset=None,
        spelling_sample=100,
        bpe_train_chars=60_000,
        bpe_vocab_size=320,
        tokenizer_vocab_size=512,  # below cpu's: enough for ci's 400 conversations
        n_layer=2,
        n_head=2,
        n_embd=64,
        block_size=32,
        batch_size=8,
        grad_accum_steps=1,
        max_iters=60,
        learning_rate=3e-3,
        warmup_iters=10,
        eval_interval=30,
        eval_iters=10,
        layout="llama",  # the course default (see cpu), so CI runs the same blocks
        study_iters=59,  # as much as ci affords (below max_iters): the valley needs a width-4 model on its left
        study_shapes=((1, 1, 4), (1, 1, 8), (1, 1, 16), (2, 2, 64)),
        # The best of a short sweep per shape (validation loss at this budget): 1x4 4.710 at 1.2e-2, 4.700 at 2.4e-2;
        # 1x8 4.626 at 3e-3, 4.504 at 6e-3, 4.447 at 1.2e-2; 1x16 4.516 at 1.2e-2, 4.833 at 2.4e-2; 2x64 5.327 at 3e-3
        study_learning_rates=(2.4e-2, 1.2e-2, 1.2e-2, 3e-3),
        study_eval_tokens=2048,
        sft_max_iters=150,
        sft_batch_size=8,
        sft_eval_iters=5,
        sft_eval_conversations=10,
        identity_max_iters=3,  # a few steps: checks the path, teaches nothing
        identity_batch_size=4,
        identity_lora_rank=4,
        identity_lora_layers=2,
        identity_eval_questions=3,
        identity_max_new_tokens=8,
        identity_later_turns=4,
        identity_long_reply_tokens=48,
        align_per_area=1,
        align_everyday=2,
        align_test_per_area=1,
        align_max_new_tokens=8,
        probe_layers=(20, 22),
        dpo_max_iters=2,  # a few steps: checks the path, teaches nothing
        dpo_batch_size=2,
        dpo_beta=0.1,
        dpo_sft_weight=1.0,
        dpo_lora_rank=4,
        dpo_lora_layers=2,
        dpo_mc_items=8,
        progress=False,
        torch_threads=1,  # models this small spend more time syncing 2 threads than computing
    ),
    "cpu": Profile(
        name="cpu",
        max_conversations=None,
        hub_dataset=None,
        spelling_sample=300,  # 13 messages a CPU second at distance 2: 1,000 took 80 s of the course
        bpe_train_chars=1_000_000,
        bpe_vocab_size=512,
        tokenizer_vocab_size=1024,  # 04's study and benchmarks/pretraining_budget.py
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=128,
        batch_size=16,  # 16 x 128 = 2,048 tokens per step
        grad_accum_steps=1,
        max_iters=2000,  # 4.1M tokens, 1.2 passes over the training split
        learning_rate=3e-3,
        warmup_iters=100,
        eval_interval=400,
        eval_iters=20,
        layout="llama",  # measured: 0.2-0.5 nats below GPT-2's block at equal steps and FLOPs
        study_iters=100,  # 1/20 of the run (04 prints where the valley's bottom lies)
        study_shapes=((1, 1, 24), (1, 1, 32), (2, 2, 48), (4, 4, 128)),
        # The best of a short sweep per shape at this budget (validation loss, one thread): 1x24 4.134 at 1.2e-2,
        # 4.176 at 2.4e-2; 1x32 4.169 at 3e-3, 4.089 at 6e-3, 4.024 at 1.2e-2, 4.003 at 2.4e-2; 2x48 4.226 at
        # 1.5e-3, 4.030 at 3e-3, 3.984 at 5e-3, 4.374 at 8e-3; 4x128: the run's 3e-3 (5.229). Also measured: 1x16
        # 4.336 at 1.2e-2 (twice 1x24's time: left out), 2x64 4.501 at 3e-3, 4.566 at 6e-3. One rate for all (3e-3,
        # shapes 2x64 to 4x192) put the lowest loss at the smallest shape tried.
        study_learning_rates=(1.2e-2, 2.4e-2, 5e-3, 3e-3),
        study_eval_tokens=65536,
        sft_max_iters=600,
        sft_batch_size=16,
        sft_eval_iters=20,
        sft_eval_conversations=50,  # first, middle, last turn of each: up to 150 greedy replies per model 06 compares
        identity_max_iters=90,
        identity_batch_size=8,
        identity_lora_rank=8,
        identity_lora_layers=15,  # half the blocks: forgot no more than all 30 (3 seeds), trained in 2/3 the time
        identity_eval_questions=None,
        identity_max_new_tokens=32,
        identity_later_turns=30,
        identity_long_reply_tokens=160,
        align_per_area=10,
        align_everyday=30,
        align_test_per_area=None,
        align_max_new_tokens=24,
        probe_layers=(16, 18, 20, 22, 24),
        dpo_max_iters=40,
        dpo_batch_size=8,
        dpo_beta=0.1,
        dpo_sft_weight=1.0,
        dpo_lora_rank=8,
        dpo_lora_layers=8,
        dpo_mc_items=None,
        progress=True,
        torch_threads=None,
    ),
    "gpu": Profile(
        name="gpu",
        max_conversations=None,
        hub_dataset="OpenAssistant/oasst1",
        spelling_sample=1_000,
        bpe_train_chars=1_000_000,
        bpe_vocab_size=1024,
        tokenizer_vocab_size=8192,
        n_layer=12,  # GPT-2 124M's shape (utils.model_sizes.GPT_PRESETS["gpt2"]) in the Llama layout, our 8,192-token
        # vocabulary: ~91 M parameters, not 124 M (GPT-2's 50,257-token embedding alone is 38.6 M)
        n_head=12,
        n_embd=768,
        block_size=1024,
        batch_size=8,  # fits a 16 GB T4 in fp16
        grad_accum_steps=4,  # 8 x 4 x 1024 = 32k tokens per step
        max_iters=1000,
        learning_rate=6e-4,
        warmup_iters=100,
        eval_interval=200,
        eval_iters=50,
        layout="llama",  # the course default, measured in the cpu profile
        study_iters=40,
        study_shapes=((4, 4, 256), (6, 6, 384), (8, 8, 512), (12, 12, 768)),
        study_learning_rates=(6e-4, 6e-4, 6e-4, 6e-4),  # not swept: the profile's rate for every shape
        study_eval_tokens=262144,
        sft_max_iters=600,
        sft_batch_size=8,
        sft_eval_iters=20,
        sft_eval_conversations=300,
        identity_max_iters=90,
        identity_batch_size=8,
        identity_lora_rank=8,
        identity_lora_layers=15,  # half the blocks: forgot no more than all 30 (3 seeds), trained in 2/3 the time
        identity_eval_questions=None,
        identity_max_new_tokens=32,
        identity_later_turns=30,
        identity_long_reply_tokens=160,
        align_per_area=None,
        align_everyday=None,
        align_test_per_area=None,
        align_max_new_tokens=48,
        probe_layers=(14, 16, 18, 20, 22, 24, 26),
        dpo_max_iters=150,
        dpo_batch_size=8,
        dpo_beta=0.1,
        dpo_sft_weight=1.0,
        dpo_lora_rank=16,
        dpo_lora_layers=15,
        dpo_mc_items=None,
        progress=True,
        torch_threads=None,
    ),
}


def use_threads(profile: Profile) -> None:
    """Set the CPU threads of the training notebooks (04-07) once, from the profile.

    - ``TOKENIZERS_PARALLELISM=false``: the tokenizers library keeps a pool of threads
      that compete with training for the few cores of a laptop or CI machine, and it
      warns (and turns itself off) when a notebook starts a subprocess after using it.
      An explicit setting of the variable wins.
    - ``torch.set_num_threads(profile.torch_threads)`` when the profile names a count.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if profile.torch_threads is not None:
        import torch

        torch.set_num_threads(profile.torch_threads)


@dataclass(frozen=True)
class Paths:
    """Where things live. Everything generated goes to git-ignored folders."""

    root: Path
    profile: str
    data: Path = field(init=False)
    raw: Path = field(init=False)  # downloads and copies of source data
    processed: Path = field(init=False)  # this profile's splits, token ids, tokenizer
    nltk_data: Path = field(init=False)  # Punkt tables written out for NLTK
    build: Path = field(init=False)  # executed notebooks, figures, report card
    checkpoints: Path = field(init=False)  # model weights

    def __post_init__(self):
        set_ = object.__setattr__  # frozen dataclass: derived fields are set once here
        set_(self, "data", self.root / "data")
        set_(self, "raw", self.root / "data" / "raw")
        set_(self, "processed", self.root / "data" / "processed" / self.profile)
        set_(self, "nltk_data", self.root / "data" / "nltk_data")
        set_(self, "build", self.root / "build")
        set_(self, "checkpoints", self.root / "checkpoints" / self.profile)

    def make(self) -> "Paths":
        for folder in (self.raw, self.processed, self.nltk_data, self.build, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class CourseConfig:
    profile: Profile
    device: str
    online: bool
    seed: int
    paths: Paths

    def __repr__(self) -> str:
        return (
            f"CourseConfig(profile={self.profile.name!r}, device={self.device!r}, "
            f"online={self.online}, seed={self.seed}, root={str(self.paths.root)!r})"
        )


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


ALLOW_GPU_PROFILE_ON_CPU = "COURSE_ALLOW_GPU_PROFILE_ON_CPU"  # set to 1 to run the gpu profile without CUDA


class ProfileError(RuntimeError):
    """A profile this machine cannot run (the message names the one to use)."""


def profile_name() -> str:
    """COURSE_PROFILE if set, else ``gpu`` with CUDA, else ``cpu``.

    An explicit ``gpu`` without CUDA stops here, in seconds, rather than training
    a ~91 M-parameter GPT on a CPU for days; ``COURSE_ALLOW_GPU_PROFILE_ON_CPU=1`` allows it.
    """
    name = os.environ.get("COURSE_PROFILE", "").strip().lower()
    if not name:
        return "gpu" if cuda_available() else "cpu"
    if name not in PROFILES:
        raise ValueError(
            f"COURSE_PROFILE={name!r} is not a profile; use one of {', '.join(PROFILE_NAMES)} "
            "(or unset it to choose automatically)."
        )
    if name == "gpu" and not cuda_available() and os.environ.get(ALLOW_GPU_PROFILE_ON_CPU, "") != "1":
        raise ProfileError(
            "COURSE_PROFILE=gpu needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False): "
            "it would train a ~91 M-parameter GPT on the CPU for days. Use COURSE_PROFILE=cpu (a laptop: minutes) or "
            f"COURSE_PROFILE=ci (seconds); to run the gpu profile here anyway, set {ALLOW_GPU_PROFILE_ON_CPU}=1."
        )
    return name


def pick_device() -> str:
    """CUDA first, then Apple's MPS (with its caveat), then the CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        warnings.warn(
            "Using Apple MPS. Some operations fall back to the CPU and results can differ "
            "slightly from CUDA/CPU runs; set PYTORCH_ENABLE_MPS_FALLBACK=1 if an op is missing.",
            stacklevel=2,
        )
        return "mps"
    return "cpu"


def is_online(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """True when the Hugging Face hub can be reached and offline mode is not forced.

    ``HF_HUB_OFFLINE=1`` (set in CI) wins without touching the network, so an
    offline machine never waits on a hub call that retries for ~45 s.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def in_colab() -> bool:
    import sys

    return "google.colab" in sys.modules


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a notebook gives the same numbers twice."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def load(seed: int = 1337, verbose: bool = True) -> CourseConfig:
    """Read the profile switch, pick the device, seed everything, create the folders."""
    name = profile_name()
    config = CourseConfig(
        profile=PROFILES[name],
        device=pick_device(),
        online=is_online(),
        seed=seed,
        paths=Paths(REPO_ROOT, name).make(),
    )
    seed_everything(seed)
    if verbose:
        mode = "online" if config.online else "offline (embedded data)"
        print(f"profile={name}  device={config.device}  {mode}  seed={seed}")
    return config
