"""Math-Shepherd step labels from Monte-Carlo completion counts, and the two training-data formats.

For the prefix ending at step i, a completer samples N continuations to a final answer a_j:
hard estimation HE_i = 1 if any a_j equals the gold answer, soft estimation SE_i = (1/N) sum_j 1[a_j = a*].
"""
from __future__ import annotations

from typing import Any

from reward.errors import ShepherdError
from reward.formats import STEP_PREFIX, TAG_TEXT, segments
from reward.tasks import BAD_TOKEN, GOOD_TOKEN


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
    segs = segments(record["prompt"], steps)
    label = segs[0] + "".join(f" {GOOD_TOKEN if ok else BAD_TOKEN}{seg}" for ok, seg in zip(labels, segs[1:]))
    return {"input": TAG_TEXT.join(segs), "label": label, "task": record.get("task", "")}


def row_name(record: dict[str, Any], where: str) -> str:
    """How an error names a Math-Shepherd row: `where` (file:line) when the caller knows it, else the
    start of its input."""
    return where or f"Math-Shepherd row {str(record.get('input'))[:50]!r}"


def split_math_shepherd(record: dict[str, Any], where: str = "") -> tuple[list[str], list[bool]]:
    """A Math-Shepherd row as its text stands: `input` cut at its step tags ' ки', wherever they are (the
    released data puts the question and step 1 on one line), and the label at each tag's place in
    `label`, which must be `input` with every ' ки' replaced by ' +' or ' -'."""
    text, label = record.get("input"), record.get("label")
    where = row_name(record, where)
    if not isinstance(text, str) or not isinstance(label, str):
        raise ShepherdError(f"{where}: a Math-Shepherd row needs 'input' and 'label' texts")
    segs = text.split(TAG_TEXT)
    if len(segs) < 2:
        raise ShepherdError(f"{where}: no step tag '{TAG_TEXT}' in 'input'")
    marks, at = [], 0
    for k, seg in enumerate(segs[:-1], 1):
        end = at + len(seg)
        mark = label[end: end + 2]
        if label[at: end] != seg or mark not in (f" {GOOD_TOKEN}", f" {BAD_TOKEN}"):
            raise ShepherdError(f"{where}: 'label' does not match 'input' up to step tag {k} (character {end} of "
                                f"'label'): it must be the input with each '{TAG_TEXT}' replaced by ' +' or ' -'")
        marks.append(mark == f" {GOOD_TOKEN}")
        at = end + len(mark)
    if label[at:].rstrip() != segs[-1].rstrip():
        raise ShepherdError(f"{where}: 'label' does not match 'input' after the last step tag")
    return segs, marks


def from_math_shepherd(record: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A Math-Shepherd row as a stepwise record: one step per tag (`split_math_shepherd`), steps as they
    stand. The question ends where step 1 begins: at its 'Step 1:' (the released layout), else at the
    last line break before the first tag (ours)."""
    segs, labels = split_math_shepherd(record, where)
    where = row_name(record, where)
    at = segs[0].rfind(STEP_PREFIX.format(k=1).rstrip())
    if at < 0:
        at = segs[0].rfind("\n") + 1
        if at == 0:
            raise ShepherdError(f"{where}: cannot tell the question from step 1 in {segs[0][:60]!r}: put the "
                                "question on lines of its own or start step 1 with 'Step 1:'")
    steps = [segs[0][at:].strip()] + [seg.strip() for seg in segs[1:-1]]
    if "" in steps:
        raise ShepherdError(f"{where}: step {steps.index('') + 1} is empty")
    return {"prompt": segs[0][:at].rstrip(), "completions": steps, "labels": labels}
