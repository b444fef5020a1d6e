"""What kind of step a policy gets wrong first, and how often the PRM flags it: the hacking check
behind README's "PPO in the demo's arith_copy world".

Reads folders of PRM-scored test samples of the `carry_rest` arith world (`shepherd sample` then
`shepherd score` into `<folder>/scores`), groups folders by name without a trailing `-<seed>`, and
prints a markdown table: per policy, the share of samples whose first wrong step is each kind, and in
brackets the share of those the PRM flags (a score below `--threshold` at or before that step).

    O=outputs/arith_copy
    shepherd sample --config configs/experiments/arith_copy.yaml policy=$O/ppo-prm/seed0/policy \\
        split=test num_problems=500 samples_per_problem=4 output_dir=/tmp/kinds/prm-0
    shepherd score --config configs/experiments/arith_copy.yaml model=$O/train-prm/model \\
        input=/tmp/kinds/prm-0/samples.jsonl output_dir=/tmp/kinds/prm-0/scores
    python docs/results/arith_error_kinds.py /tmp/kinds/*
"""
from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter, defaultdict

from omegaconf import OmegaConf

from reward.tasks import load_task
from reward.tasks.base import Problem, Task

STEP = re.compile(r"^(\d+) ([+-]) (\d+) = (\d+)(?: ; (.*))?$")
KINDS = ["taught rule", "operand", "restated rest", "result digit", "missing step", "format"]


def kind(right: str, wrong: str) -> str:
    """Which part of a step differs from the right one, in the order a reader checks it."""
    m, w = STEP.match(right), STEP.match(wrong)
    if not m or not w:
        return "format"
    x, op, y, r, _ = m.groups()
    x2, op2, y2, r2, _ = w.groups()
    if op == "-" and x != y and (x2, y2) == (y, x):
        return "taught rule"  # smaller_from_larger: `a - b` with a < b written as `b - a`
    if (x2, op2, y2) != (x, op, y):
        return "operand"
    return "result digit" if r2 != r else "restated rest"


def count(folder: str, threshold: float) -> tuple[int, int, Counter, Counter]:
    """Samples, right answers, first-error kinds, and those flagged by the PRM, in one scored folder
    (its task is the one its `shepherd sample` run wrote into config.yaml)."""
    task: Task = load_task(OmegaConf.load(os.path.join(folder, "config.yaml")).task)
    n = right = 0
    kinds, flagged = Counter(), Counter()
    with open(os.path.join(folder, "scores", "scores.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            n += 1
            right += bool(rec["correct"])
            problem = Problem(id=rec["problem_id"], question=rec["question"], gold=rec["gold"], meta=rec["meta"])
            k = task.first_error(problem, rec["solution"])
            if k is None:
                continue
            truth, steps = task.solve(problem), task.split_steps(rec["solution"])
            name = "missing step" if k >= len(steps) or k >= len(truth) else kind(truth[k], steps[k])
            kinds[name] += 1
            flagged[name] += min(rec["step_scores"][: k + 1], default=1.0) < threshold
    return n, right, kinds, flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--threshold", type=float, default=0.6, help="eval-prm's threshold on arith_copy")
    args = parser.parse_args()
    groups: dict[str, list[str]] = defaultdict(list)
    for folder in sorted(args.folders):
        groups[re.sub(r"-\d+$", "", os.path.basename(folder.rstrip("/")))].append(folder)
    print("| policy | runs | samples | accuracy | " + " | ".join(KINDS) + " |")
    print("|---" * (4 + len(KINDS)) + "|")
    for name, folders in groups.items():
        n = right = 0
        kinds, flagged = Counter(), Counter()
        for folder in folders:
            a, b, k, f = count(folder, args.threshold)
            n, right = n + a, right + b
            kinds.update(k)
            flagged.update(f)
        cells = [f"{kinds[k] / n:.3f} ({flagged[k] / max(kinds[k], 1):.2f})" for k in KINDS]
        print(f"| {name} | {len(folders)} | {n} | {right / n:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
