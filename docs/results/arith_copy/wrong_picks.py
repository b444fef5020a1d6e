"""Where best-of-N with PRM-min goes wrong at large N: the kind of the first wrong step of each wrong pick.

    python docs/results/arith_copy/wrong_picks.py outputs/arith_copy/verify [N]

Reads the verify stage's scored.jsonl (every sample with its PRM step scores) and config.yaml (the task),
takes the PRM-min pick among the first N solutions of each problem (N=64 by default, verify's rule), and
counts the wrong picks by `reward.error_kinds` kind, beside how many problems hold a wrong sample of
each kind and how many distinct right and wrong solution texts a problem has.
"""
from __future__ import annotations

import sys
from collections import Counter, defaultdict

import numpy as np
from omegaconf import OmegaConf

from reward.error_kinds import first_error_kind
from reward.io import read_jsonl
from reward.prm import aggregate
from reward.tasks import Problem, load_task


def main(folder: str, n: int = 64) -> None:
    task = load_task(OmegaConf.load(f"{folder}/config.yaml").task)
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in read_jsonl(f"{folder}/scored.jsonl"):
        groups[r["problem_id"]].append(r)

    def kind(r: dict) -> str:
        found = first_error_kind(task, Problem(r["problem_id"], r["question"], r["gold"], r["meta"]), r["solution"])
        return found[1] if found else "none"

    picks, present, right_texts, wrong_texts, slip_scores, right_mins = Counter(), Counter(), [], [], [], []
    for g in groups.values():
        g = g[:n]
        mins = [aggregate(r["prm_steps"], "min") for r in g]
        pick = g[int(np.argmax(mins))]  # verify's prm_min
        if not pick["correct"]:
            picks[kind(pick)] += 1
            if pick["first_error"] is not None:  # the PRM's score of the pick's first wrong step
                slip_scores.append(pick["prm_steps"][pick["first_error"]])
            right_mins += [max((m for m, r in zip(mins, g) if r["correct"]), default=None)]
        present.update({kind(r) for r in g if not r["correct"]})
        right_texts.append(len({r["solution"] for r in g if r["correct"]}))
        wrong_texts.append(len({r["solution"] for r in g if not r["correct"]}))
    print(f"{len(groups)} problems, N={n}: {sum(picks.values())} wrong PRM-min picks")
    print("| first wrong step | wrong picks | problems with such a sample |\n|---|---|---|")
    for k, c in present.most_common():
        print(f"| {k} | {picks[k]} | {c} |")
    print(f"distinct texts per problem: right {np.mean(right_texts):.2f} (one in {sum(x == 1 for x in right_texts)}), "
          f"wrong {np.mean(wrong_texts):.2f}")
    if slip_scores:
        print(f"wrong picks: their first wrong step scored median {np.median(slip_scores):.3f}; the best right "
              f"solution's PRM-min in those problems median {np.median([m for m in right_mins if m is not None]):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 64)
