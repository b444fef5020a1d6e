"""Label quality against the oracle (arith only): how good are HE and SE labels, at what cost?

Runs `full` once at the largest N and reads the smaller N off the first completions of each prefix
(the same draws a run at that N would use first), then `early_stop` and `binary_search` at the
configured N. Per row: per-step accuracy, precision and recall of "this step is wrong", agreement on
the first wrong step, and the share of right-answer-wrong-step solutions the labels catch.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Any

from reward.completion import Completer, Solution, StepCounts, labels_of, label_full, run_strategy
from reward.errors import ShepherdError
from reward.io import write_atomic
from reward.tasks import Task

COLUMNS = ["step_accuracy", "precision_wrong", "recall_wrong", "first_error_agreement", "rawa_caught"]


def oracle_truth(task: Task, sol: Solution) -> list[bool]:
    """Per step: right (before the oracle's first wrong step) or not."""
    first = task.first_error(sol.problem, task.join_steps(sol.steps))
    return [first is None or k < first for k in range(len(sol.steps))]


def label_quality(truths: list[list[bool]], labels: list[list[bool]], correct: list[bool]) -> dict[str, float]:
    """Step accuracy, precision/recall of 'wrong', first-wrong-step agreement, right-answer-wrong-step caught."""
    pairs = [(t, lab) for ts, ls in zip(truths, labels) for t, lab in zip(ts, ls)]
    flagged = [t for t, lab in pairs if not lab]
    wrong = [lab for t, lab in pairs if not t]
    first = [(ts.index(False) if False in ts else None) == (ls.index(False) if False in ls else None)
             for ts, ls in zip(truths, labels)]
    rawa = [False in ls[:-1] for ts, ls, ok in zip(truths, labels, correct) if ok and False in ts]
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else float("nan")  # noqa: E731
    return {
        "step_accuracy": mean([t == lab for t, lab in pairs]),
        "precision_wrong": mean([not t for t in flagged]),
        "recall_wrong": mean([not lab for lab in wrong]),
        "first_error_agreement": mean(first),
        "rawa_caught": mean(rawa),
    }


def _row(name: str, n: int, spent: int, truths, sols, counts: list[StepCounts], threshold: float) -> dict[str, Any]:
    he, se = zip(*(labels_of(s, c) for s, c in zip(sols, counts)))
    correct = [s.correct for s in sols]
    row = {"strategy": name, "N": n, "completions": spent}
    row.update({f"he_{k}": v for k, v in label_quality(truths, [[bool(x) for x in h] for h in he], correct).items()})
    row.update({f"se_{k}": v for k, v in label_quality(truths, [[x > threshold for x in s] for s in se], correct).items()})
    return row


def run_audit(cfg: Any, task: Task, sols: list[Solution], completer: Completer) -> dict[str, Any]:
    if not task.has_oracle:
        raise ShepherdError(f"audit=true needs a task with an oracle (arith), not '{task.name}'")
    subset = sols[: cfg.audit_solutions]
    truths = [oracle_truth(task, s) for s in subset]
    seed = cfg.seed * 1000003 + 999331
    n_max = max(cfg.audit_ns)
    before = completer.generated
    full = label_full(completer, subset, n_max, seed)
    spent_max = completer.generated - before
    rows = []
    for n in sorted(cfg.audit_ns):
        cut = [StepCounts([sum(o[:n]) for o in c.outcomes], [n] * len(c.outcomes)) for c in full]
        rows.append(_row("full", n, spent_max * n // n_max, truths, subset, cut, cfg.se_threshold))
    for strategy in ("early_stop", "binary_search"):
        before = completer.generated
        counts = run_strategy(strategy, completer, subset, cfg.n_completions, seed + 1, cfg)
        rows.append(_row(strategy, cfg.n_completions, completer.generated - before, truths, subset, counts, cfg.se_threshold))
    write_tables(cfg.output_dir, rows, len(subset))
    main = next((r for r in rows if r["strategy"] == "full" and r["N"] == cfg.n_completions), rows[-3])
    return {f"audit_{k}": v for k, v in main.items() if k not in ("strategy", "N")} | {"audit_solutions": len(subset)}


def write_tables(folder: str, rows: list[dict[str, Any]], n_solutions: int) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(os.path.join(folder, "audit.csv"), buf.getvalue())
    head = ["strategy", "N", "completions"] + [f"HE {c}" for c in COLUMNS] + [f"SE {c}" for c in COLUMNS]
    lines = [f"Label quality against the oracle, {n_solutions} solutions "
             "(rawa_caught: share of right-answer-wrong-step solutions with a wrong-labelled step).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in r.values()) + " |")
    write_atomic(os.path.join(folder, "audit.md"), "\n".join(lines) + "\n")
