"""Batched generation vs one prompt at a time, on the bundled model.

Baseline: plain `model.generate` on one prompt at a time. Candidate: the transformers backend's
length-bucketed, left-padded batches. Same 32 prompts, same sampling settings, same loaded model,
same process. Prints tokens/s for both and, last, the ratio candidate/baseline.

    python bench/generation.py [--model smollm2-135m-instruct] [--max-tokens 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from agent.backends import SamplingParams, user
from agent.backends.hf import TransformersGenerator

TOPICS = [
    "the water cycle",
    "compound interest",
    "photosynthesis",
    "a healthy breakfast",
    "how vaccines work",
    "the French revolution",
    "binary numbers",
    "recycling plastic",
    "black holes",
    "writing a cover letter",
    "the rules of chess",
    "how a bill becomes law",
    "saving for retirement",
    "why the sky is blue",
    "learning a new language",
    "sleep hygiene",
    "how rainbows form",
    "the stock market",
    "first aid for burns",
    "renting an apartment",
    "the moon's phases",
    "time management",
    "climate and weather",
    "how bread rises",
    "the immune system",
    "budgeting for students",
    "volcanoes",
    "email etiquette",
    "the speed of light",
    "tenant rights",
    "composting at home",
    "how batteries work",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=32)
    args = ap.parse_args()

    prompts = [user(f"Explain {t} in a few sentences.") for t in TOPICS[: args.prompts]]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.7, top_p=0.9, seed=0)
    gen = TransformersGenerator(args.model, batch_size=args.batch_size)
    model, tok = gen.model, gen.tokenizer
    print(
        f"model {args.model}, {len(prompts)} prompts, max_tokens {args.max_tokens}, "
        f"temperature 0.7, top_p 0.9, torch threads {torch.get_num_threads()}"
    )

    gen.generate(prompts[:2], params.model_copy(update={"max_tokens": 4}))  # warm-up

    torch.manual_seed(0)
    base_tokens, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for msgs in prompts:
            ids = torch.tensor([gen.encode_prompt(msgs)])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.max_tokens,
                do_sample=True,
                temperature=0.7,
                top_p=0.9,
                top_k=None,
                pad_token_id=tok.pad_token_id,
                eos_token_id=gen.eos_ids,
            )
            new = out[0, ids.shape[1] :].tolist()
            base_tokens += next((k for k, t in enumerate(new) if t in gen.eos_ids), len(new))
    base_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    results = gen.generate(prompts, params)
    cand_s = time.perf_counter() - t0
    cand_tokens = sum(c.completion_tokens for r in results for c in r.completions)

    base_tps, cand_tps = base_tokens / base_s, cand_tokens / cand_s
    print(
        f"baseline  one-at-a-time model.generate: {base_tokens} tokens in {base_s:.1f}s = "
        f"{base_tps:.1f} tok/s"
    )
    print(
        f"candidate transformers backend, batch {args.batch_size}: {cand_tokens} tokens in "
        f"{cand_s:.1f}s = {cand_tps:.1f} tok/s"
    )
    print(f"ratio (candidate/baseline tokens per second): {cand_tps / base_tps:.2f}")


if __name__ == "__main__":
    from agent.procs import bench_main

    bench_main(main, "bench/generation.py")
