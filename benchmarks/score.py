"""Steps scored per second by `reward.prm.score_steps` with one forward pass per solution (all its step
tags read at once) against the naive way, one forward pass per prefix (steps[:k+1] scored alone, its
last score kept), and the ratio, measured in one run on the same model, solutions and batch size. It also
checks that both ways give the same scores: the causal mask makes a step's score independent of what
follows it.

    python benchmarks/score.py [--model outputs/arith_tiny/train-prm/model]

Without --model it builds the embedded world's model shape with random weights (speed does not depend
on the weights).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch

from reward.generation import load_causal_lm, load_tokenizer
from reward.prm import score_steps
from reward.tasks.arith import ArithTask
from rl.world import save_random_policy


def per_prefix(model: Any, tok: Any, items: list[tuple[str, list[str]]], batch: int) -> list[list[float]]:
    """The naive way: every prefix is its own sequence, and only its last tag's score is kept."""
    prefixes = [(q, steps[: k + 1]) for q, steps in items for k in range(len(steps))]
    last = iter(s[-1] for s in score_steps(model, tok, prefixes, batch))
    return [[next(last) for _ in steps] for _, steps in items]


def timed(fn: Any, *args: Any) -> tuple[list[list[float]], float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="")
    parser.add_argument("--solutions", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    task = ArithTask()
    items = [(p.question, task.solve(p)) for p in task.problems("test", args.solutions)]
    steps = sum(len(s) for _, s in items)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or save_random_policy(tmp)
        tok, model = load_tokenizer(folder, "model"), load_causal_lm(folder, "model")
        score_steps(model, tok, items[:8], args.batch_size)  # warm-up
        fast, fast_s = timed(score_steps, model, tok, items, args.batch_size)
        slow, slow_s = timed(per_prefix, model, tok, items, args.batch_size)
    diff = max(abs(a - b) for f, s in zip(fast, slow) for a, b in zip(f, s))
    # Padding changes the order of bf16 sums (a GPU's default dtype), so there the scores agree to its rounding.
    tol = max(1e-4, 2 * torch.finfo(model.dtype).eps)
    print(f"model: {args.model or 'random tiny Llama (world shape)'}; torch threads: {torch.get_num_threads()}; "
          f"{len(items)} solutions, {steps} steps, batch {args.batch_size}")
    print(f"one forward per solution: {steps / fast_s:8.0f} steps/s")
    print(f"one forward per prefix:   {steps / slow_s:8.0f} steps/s")
    print(f"ratio per-solution / per-prefix: {slow_s / fast_s:.1f}x")
    print(f"max |score difference|: {diff:.2e} ({'same' if diff < tol else 'DIFFERENT'} scores at {model.dtype}, "
          f"tolerance {tol:.0e})")
    if diff >= tol:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
