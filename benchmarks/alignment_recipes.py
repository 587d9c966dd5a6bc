"""Alignment recipes compared on the DEV split (never the test split): what 07's recipe was chosen from.

    python benchmarks/alignment_recipes.py                 # the made-yours model, then each recipe
    python benchmarks/alignment_recipes.py --recipes sft   # only the classic one

Each recipe starts from the profile's made-yours SmolLM2 (06; made first when missing) and is asked
the dev split's harmful and benign requests, greedy, alone and as the second turn of a conversation:

- ``before``: the model of 06 as it is;
- ``sft``: "fine-tune on refusals": LoRA on the last blocks, the harmful training requests answered by
  their declines, the benign and everyday ones by the model's own replies (KL-anchored), alone and as a
  later turn (``utils.preferences.sft_conversations``; ``utils.identity.fine_tune``, 06's loop);
- ``probe``: the refusal probe alone (``utils.refusal_probe.choose``) on the model of 06;
- ``probe+dpo``: 07's recipe: the probe decides, a decline adapter trained by DPO (with the RPO
  term) writes the words after "I can't help with".

It prints one row per recipe (refusal rates with counts and 95% intervals) and writes them to
``build/<profile>/alignment_recipes.json``. The results behind 07's choice are in alignment_recipes.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import alignment, config  # noqa: E402
from utils import preferences as prefs  # noqa: E402
from utils import refusal_probe as rp  # noqa: E402
from utils.chat_spans import encode_chat  # noqa: E402
from utils.finetune import merge_lora  # noqa: E402
from utils.identity import IdentityConfig, add_lora, ensure_yours, fine_tune  # noqa: E402
from utils.identity_data import ChatBatches  # noqa: E402

RECIPES = ("before", "sft", "probe", "probe+dpo")


def dev_rates(model, tokenizer, dev, exchanges, max_new_tokens, probe=None) -> dict:
    """Refusal rates on dev (alone and as a later turn) as strings with counts and intervals."""
    row = {}
    for turn, earlier in (("alone", None), ("later turn", exchanges)):
        counted = prefs.refusals(model, tokenizer, dev, max_new_tokens, earlier, probe=probe)
        row.update({f"{kind} refused ({turn})": str(counted.rate(kind)) for kind in ("harmful", "benign")})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--sft-steps", type=int, default=60)
    args = parser.parse_args()
    cfg = config.load()
    config.use_threads(cfg.profile)
    p = cfg.profile
    model, tokenizer = ensure_yours(cfg)
    model.eval()
    splits = {split: prefs.load_requests(split) for split in ("train", "dev")}
    train = prefs.take(splits["train"], p.align_per_area, p.align_everyday)
    dev = [r for r in splits["dev"] if r.kind != "everyday"]
    exchanges = {split: prefs.first_exchanges(model, tokenizer, [r for r in requests if r.kind == "everyday"][:6],
                                              p.align_max_new_tokens)
                 for split, requests in splits.items()}
    rows = {}
    if "before" in args.recipes:
        rows["before"] = dev_rates(model, tokenizer, dev, exchanges["dev"], p.align_max_new_tokens)
    if "sft" in args.recipes:
        start = time.perf_counter()
        tuned = copy.deepcopy(model)
        own = prefs.own_replies(model, tokenizer, [r for r in train if r.kind != "harmful"], rp.PREFIX,
                                p.align_max_new_tokens)
        conversations, anchored = prefs.sft_conversations(train, own, exchanges["train"])
        examples = [encode_chat(tokenizer, c) for c in conversations]
        recipe = IdentityConfig(max_iters=args.sft_steps, progress=False)
        add_lora(tuned, recipe)
        fine_tune(tuned, ChatBatches(examples, examples[:16], recipe.batch_size, tokenizer.pad_token_id,
                                     anchored=frozenset(i for i, a in enumerate(anchored) if a)), recipe)
        merge_lora(tuned)
        rows["sft"] = {**dev_rates(tuned.eval(), tokenizer, dev, exchanges["dev"], p.align_max_new_tokens),
                       "seconds": round(time.perf_counter() - start)}
        del tuned
    if "probe" in args.recipes or "probe+dpo" in args.recipes:
        layers = list(p.probe_layers)
        requests = train + splits["dev"]  # the probe's block and threshold: cross-validation over sub-topics
        states = [rp.last_token_states(model, prefs.prompts_of(tokenizer, requests, e), layers)
                  for e in (None, exchanges["train"])]
        probe, table = rp.choose(states, np.array([r.kind for r in requests]),
                                 [f"{r.kind}: {r.subtopic}" for r in requests], layers)
        for line in table:
            print(line)
        if "probe" in args.recipes:  # (dev was among the requests it learned from: optimistic)
            rows["probe"] = {**dev_rates(model, tokenizer, dev, exchanges["dev"], p.align_max_new_tokens, probe),
                             "block": probe.layer, "threshold": probe.threshold}
    if "probe+dpo" in args.recipes:
        start = time.perf_counter()
        harmful = [r for r in train if r.kind == "harmful"]
        continuation = prefs.own_replies(model, tokenizer, harmful, probe.prefix, p.align_max_new_tokens)
        encoded = prefs.encode_pairs(tokenizer, prefs.preference_pairs(harmful, continuation, probe.prefix))
        dpo_cfg = dataclasses.replace(alignment.dpo_config(p, cfg.seed, cfg.device), sft_weight=p.dpo_sft_weight,
                                      progress=False)
        aligned = copy.deepcopy(model)
        alignment.add_lora(aligned, dpo_cfg)
        alignment.train_dpo(aligned, ChatBatches(encoded, encoded[:2] + encoded[len(harmful):len(harmful) + 2],
                                                 dpo_cfg.batch_size, tokenizer.pad_token_id), dpo_cfg)
        rows["probe+dpo"] = {**dev_rates(aligned.eval(), tokenizer, dev, exchanges["dev"], p.align_max_new_tokens,
                                         probe), "seconds": round(time.perf_counter() - start)}
    for name, row in rows.items():
        print(f"{name}: {row}")
    out = cfg.paths.build / p.name / "alignment_recipes.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(f"written to {out.relative_to(config.REPO_ROOT)}")


if __name__ == "__main__":
    main()
