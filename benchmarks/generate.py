"""New tokens per second of the HF generation backend at batch 1, 32 and 128, and the ratio
batch-128 / batch-1, measured in one run on the same tiny policy.

    python benchmarks/generate.py [--policy outputs/arith_tiny/world/policy]

Without --policy it builds the embedded world's model shape with random weights (speed does not
depend on the weights; every sequence then runs to max_new_tokens, which the count reflects).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from omegaconf import OmegaConf

from reward.config import GenerationConfig
from reward.generation import load_generator
from reward.tasks.arith import ArithTask
from rl.world import save_random_policy


def tokens_per_second(gen, prompts: list[str], batch: int) -> float:
    gen.batch_size = batch
    gen.generate(prompts[:batch], n=1, temperature=1.0, seed=0)  # warm-up
    start = time.perf_counter()
    out = gen.generate(prompts, n=1, temperature=1.0, seed=1)
    seconds = time.perf_counter() - start
    return sum(len(g[0].token_ids) for g in out) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        policy = args.policy or save_random_policy(tmp)
        gen = load_generator(policy, OmegaConf.structured(GenerationConfig(max_new_tokens=args.max_new_tokens)))
        task = ArithTask()
        prompts = [task.format_prompt(p.question) for p in task.problems("test", 256)]
        rates = {b: tokens_per_second(gen, prompts[: max(8, 2 * b)], b) for b in (1, 32, 128)}
    print(f"policy: {args.policy or 'random tiny Llama (world shape)'}; torch threads: {torch.get_num_threads()}")
    for b, r in rates.items():
        print(f"batch {b:>3}: {r:8.0f} new tokens/s")
    print(f"ratio batch-128 / batch-1: {rates[128] / rates[1]:.1f}x")


if __name__ == "__main__":
    main()
