"""Math-Shepherd step labels from Monte-Carlo completion counts, and the two training-data formats.

For the prefix ending at step i, a completer samples N continuations to a final answer a_j:
hard estimation HE_i = 1 if any a_j equals the gold answer, soft estimation SE_i = (1/N) sum_j 1[a_j = a*].
"""
from __future__ import annotations

from typing import Any

from reward.errors import ShepherdError
from reward.tasks import BAD_TOKEN, GOOD_TOKEN, STEP_TAG, tag_steps


def hard_estimate(n_correct: int) -> int:
    """HE: the step can still reach the right answer (at least one completion did)."""
    return int(n_correct > 0)


def soft_estimate(n_correct: int, n_total: int) -> float:
    """SE: the share of completions that reached the right answer."""
    if n_total <= 0:
        raise ValueError("soft estimate of a step with no completions")
    return n_correct / n_total


def step_labels(record: dict[str, Any], label_type: str = "he", threshold: float = 0.5) -> list[bool]:
    """Per-step booleans of a stepwise record: HE, or SE above `threshold`."""
    if label_type == "he":
        return [bool(x) for x in record["labels"]]
    if label_type == "se":
        return [s > threshold for s in record["soft_labels"]]
    raise ShepherdError(f"unknown label type '{label_type}' (key label_type); use he or se")


def to_math_shepherd(record: dict[str, Any], label_type: str = "he", threshold: float = 0.5) -> dict[str, Any]:
    """Math-Shepherd format: `input` with ' ки' after each step, `label` with '+'/'-' in its place."""
    steps = record["completions"]
    labels = step_labels(record, label_type, threshold)
    if len(labels) != len(steps):
        raise ShepherdError(f"record {record.get('id')}: {len(labels)} labels for {len(steps)} steps")
    text = tag_steps(record["prompt"], steps)
    label = record["prompt"] + "\n" + "".join(f"{s} {GOOD_TOKEN if ok else BAD_TOKEN}\n" for s, ok in zip(steps, labels))
    return {"input": text, "label": label, "task": record.get("task", "")}


def from_math_shepherd(record: dict[str, Any]) -> dict[str, Any]:
    """Read a Math-Shepherd row back: the label text is the input with each tag replaced by +/-."""
    tag = f" {STEP_TAG}"
    lines, marks = record["input"].split("\n"), record["label"].split("\n")
    tagged = [i for i, line in enumerate(lines) if line.endswith(tag)]
    if not tagged:
        raise ShepherdError(f"Math-Shepherd row without a step tag '{STEP_TAG}': {record['input'][:60]!r}")
    if len(marks) != len(lines) or any(marks[i][-1:] not in (GOOD_TOKEN, BAD_TOKEN) for i in tagged):
        raise ShepherdError(f"Math-Shepherd row: label does not match the tagged steps: {record['input'][:60]!r}")
    return {"prompt": "\n".join(lines[: tagged[0]]), "completions": [lines[i][: -len(tag)] for i in tagged],
            "labels": [marks[i][-1] == GOOD_TOKEN for i in tagged]}
