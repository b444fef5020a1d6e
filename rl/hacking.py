"""The hacking guard (`hacking_patience`): stop PPO once the learned reward keeps rising while held-out
accuracy keeps falling, the signature of a policy that found what its reward model misses (PURE,
Cheng et al. 2025, saw summed PRM rewards hacked within a few hundred steps; here a policy learned to
miscopy a line its PRM never checked). Logging the two side by side shows it; this acts on it.

At every periodic evaluation the run records the mean learned reward (`reward/score`) of the updates
since the last evaluation and the validation accuracy; the alarm fires when, at each of the last K
evaluations, the accuracy fell and the learned reward held or rose. The run then stops, and the final
policy is the last update's, or with `best_metric` the best update's on validation.
"""
from __future__ import annotations

from typing import Sequence


def hacking(evals: Sequence[Sequence[float]], patience: int) -> bool:
    """True when each of the last `patience` (reward, accuracy) evaluations has a lower accuracy than
    the one before it and a learned reward at least as high; 0 turns the guard off."""
    if patience <= 0 or len(evals) <= patience:
        return False
    recent = evals[-patience - 1:]
    return all(r1 >= r0 and a1 < a0 for (r0, a0), (r1, a1) in zip(recent, recent[1:]))


def evaluations(log: Sequence[dict], metric: str = "accuracy_t1") -> list[tuple[int, float, float]]:
    """(update, mean learned reward since the previous evaluation, validation accuracy) at each
    evaluation of a PPO log: what the guard saw during the run, recomputed for a report."""
    out, scores = [], []
    for row in log:
        scores.append(row["reward/score"])
        if f"eval/{metric}" in row:
            out.append((row["update"], sum(scores) / len(scores), row[f"eval/{metric}"]))
            scores = []
    return out


def first_alarm(log: Sequence[dict], patience: int, metric: str = "accuracy_t1") -> int | None:
    """The update at which a guard of this patience would have stopped the run, or None."""
    evals = evaluations(log, metric)
    for i, (update, _, _) in enumerate(evals):
        if hacking([e[1:] for e in evals[: i + 1]], patience):
            return update
    return None
