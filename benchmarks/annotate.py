"""Monte-Carlo annotation against the naive loop a first implementation writes (one `generate` call
per step prefix with its N samples: no batching across prefixes, no sharing), on the same policy and
the same sampled solutions, in one run. Each of our strategies labels the same solutions; printed per
strategy: seconds, completions generated, and the speed-up (naive seconds / ours). `full` does the
naive loop's work (N completions for every prefix), so its ratio is the like-for-like one.

    python benchmarks/annotate.py --config configs/experiments/arith_copy.yaml \
        --policy outputs/arith_copy/world/policy [--n 8 --solutions 64]

What ours does (reward/completion.py, reward/generation/hf.py): identical prefixes completed once,
all prefixes of a chunk in batches of `generation.batch_size` rows ordered by expected completion
length, each prompt's KV cache computed once and copied to its N samples, finished rows dropped from
the batch and its cache, each new token written into the cache in place.
Target: `full` >= 10x.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from reward.annotate import AnnotateConfig, read_solutions
from reward.completion import Completer, run_strategy
from reward.config import load_config
from reward.generation import load_generator
from reward.sample import main as sample_main
from reward.tasks import load_task


def naive(gen, task, sols, n: int) -> int:
    """One plain `model.generate` per prefix with its N samples (`num_return_sequences`): the prefix is
    encoded N times, finished rows stay in the batch, nothing is shared between prefixes."""
    done = 0
    for s in sols:
        for k in range(len(s.steps) - 1):
            prompt = task.format_prompt(s.problem.question) + task.join_steps(s.steps[: k + 1]) + "\n"
            enc = gen.encode([prompt])
            torch.manual_seed(k)
            out = gen.model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, num_return_sequences=n,
                                     max_new_tokens=gen.max_new_tokens, pad_token_id=gen.tokenizer.pad_token_id,
                                     eos_token_id=gen.tokenizer.eos_token_id)
            done += out.shape[0]
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/experiments/arith_copy.yaml", help="experiment: task, generation")
    parser.add_argument("--policy", default="outputs/arith_copy/world/policy")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--solutions", type=int, default=64)
    parser.add_argument("--strategies", default="full,binary_search,early_stop")
    parser.add_argument("overrides", nargs="*", help="key=value over the annotate section, e.g. generation.batch_size=512")
    args = parser.parse_args()
    cfg = load_config(AnnotateConfig, "annotate", args.config, args.overrides)
    task = load_task(cfg.task)
    with tempfile.TemporaryDirectory() as tmp:
        sample_main(["--config", args.config, f"policy={args.policy}", f"output_dir={tmp}",
                     f"num_problems={args.solutions // 2}", "samples_per_problem=2", "split=train", "seed=11"])
        sols, _ = read_solutions(os.path.join(tmp, "samples.jsonl"), task)
    sols = sols[: args.solutions]
    gen = load_generator(args.policy, cfg.generation)
    prefixes = sum(len(s.steps) - 1 for s in sols)

    rows = {}
    for strategy in args.strategies.split(","):
        completer = Completer(gen, task, temperature=1.0, share_prefixes=True)
        start = time.perf_counter()
        run_strategy(strategy, completer, sols, args.n, 0, cfg)
        rows[strategy] = {"seconds": round(time.perf_counter() - start, 2), "generated": completer.generated}

    start = time.perf_counter()
    done = naive(gen, task, sols, args.n)
    naive_s = time.perf_counter() - start
    for row in rows.values():
        row["speedup"] = round(naive_s / row["seconds"], 2)
    print(json.dumps({"solutions": len(sols), "prefixes": prefixes, "n": args.n, "batch_size": gen.batch_size,
                      "naive": {"seconds": round(naive_s, 2), "generated": done}, **rows}, indent=1))
    for name, row in rows.items():
        print(f"{name}: {row['seconds']:.1f} s, {row['generated']} completions; naive loop {naive_s:.1f} s, "
              f"{done} completions: {row['speedup']:.1f}x")


if __name__ == "__main__":
    main()
