"""Best-of-N by PRM-min beside "progress-min" for a PRM trained on soft (SE) labels (exploratory).

    python docs/results/arith_copy/progress_min.py outputs/exp/se_grow2/verify-val

A PRM trained on SE targets predicts the share of completions that still reach the answer after a step,
a value that falls along a right solution as well (each later hazard of the completer lowers it). Its
min then measures how hard the problem is as much as whether a step was wrong. The progress of a step
is the ratio of its score to the step before's (1 before step one): a right step keeps the value, a
wrong step drops it (the "progress" of Setlur et al. 2024, as a ratio). Reads verify's scored.jsonl and
prints best-of-N accuracy for both, with verify's groups, subsets (disjoint, N = powers of 2 up to n) and picks.
"""
from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np

from reward.io import read_jsonl
from reward.prm import aggregate
from reward.verify import Group, accuracy_at, pick_best


def progress_min(scores: list[float]) -> float:
    s = np.asarray(scores, dtype=float)
    before = np.concatenate([[1.0], s[:-1]])
    return float(np.min(s / np.maximum(before, 1e-6)))


def main(folder: str) -> None:
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in read_jsonl(f"{folder}/scored.jsonl"):
        by_problem[r["problem_id"]].append(r)
    groups = []
    for rows in by_problem.values():  # scored.jsonl keeps verify's order of each problem's solutions
        g = Group(np.array([r["correct"] for r in rows]), [r["answer"] for r in rows])
        g.scores["prm_min"] = np.array([aggregate(r["prm_steps"], "min") for r in rows])
        g.scores["progress_min"] = np.array([progress_min(r["prm_steps"]) for r in rows])
        groups.append(g)
    n = min(len(g.correct) for g in groups)
    ks = [k for k in (2 ** i for i in range(9)) if k <= n]  # verify's N
    print("| method | " + " | ".join(f"N={k}" for k in ks) + " |")
    print("|---" * (len(ks) + 1) + "|")
    for name in ("prm_min", "progress_min"):
        accs = [accuracy_at(groups, pick_best(name), k).mean() for k in ks]
        print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
