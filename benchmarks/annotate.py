"""Completions per second of our annotator (`full`: all prefixes of many solutions in large batches,
identical prefixes shared) against a naive loop (one `generate` call per prefix with N samples, no
sharing), on the same policy and the same 64 arith solutions, in one run.

    python benchmarks/annotate.py --policy outputs/arith_tiny/world/policy [--n 8]

Target: ratio >= 5.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from omegaconf import OmegaConf

from reward.annotate import read_solutions
from reward.completion import Completer, label_full
from reward.config import GenerationConfig
from reward.generation import load_generator
from reward.sample import main as sample_main
from reward.tasks import load_task


def naive(gen, task, sols, n: int) -> int:
    """The loop a first implementation writes: one generate per prefix, N samples, nothing shared."""
    done = 0
    for s in sols:
        for k in range(len(s.steps) - 1):
            prompt = task.format_prompt(s.problem.question) + task.join_steps(s.steps[: k + 1]) + "\n"
            out = gen.generate([prompt], n=n, temperature=1.0, seed=k)
            done += sum(1 for _ in out[0])
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="outputs/arith_tiny/world/policy")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--solutions", type=int, default=64)
    args = parser.parse_args()
    task = load_task("arith")
    with tempfile.TemporaryDirectory() as tmp:
        sample_main([f"policy={args.policy}", f"output_dir={tmp}", f"num_problems={args.solutions // 8}",
                     "samples_per_problem=8", "split=train", "seed=11"])
        sols, _ = read_solutions(os.path.join(tmp, "samples.jsonl"), task)
    sols = sols[: args.solutions]
    gen = load_generator(args.policy, OmegaConf.structured(GenerationConfig()))

    completer = Completer(gen, task, temperature=1.0, share_prefixes=True)
    start = time.perf_counter()
    label_full(completer, sols, args.n, seed=0)
    ours_s = time.perf_counter() - start
    prefixes = sum(len(s.steps) - 1 for s in sols)
    ours_rate = prefixes * args.n / ours_s  # completions delivered (shared ones count once per prefix)

    gen.batch_size = args.n
    start = time.perf_counter()
    done = naive(gen, task, sols, args.n)
    naive_s = time.perf_counter() - start
    naive_rate = done / naive_s
    result = {"solutions": len(sols), "prefixes": prefixes, "n": args.n, "ours_generated": completer.generated,
              "ours_seconds": round(ours_s, 2), "naive_seconds": round(naive_s, 2),
              "ours_completions_per_s": round(ours_rate, 1), "naive_completions_per_s": round(naive_rate, 1),
              "ratio": round(ours_rate / naive_rate, 2)}
    print(json.dumps(result, indent=1))
    print(f"ours: {ours_rate:.0f} completions/s, naive: {naive_rate:.0f} completions/s, ratio {ours_rate / naive_rate:.1f}x")


if __name__ == "__main__":
    main()
