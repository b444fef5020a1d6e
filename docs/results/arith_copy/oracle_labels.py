"""The upper bound of Monte-Carlo labels: the same annotated solutions with the oracle's first-error labels.

    python docs/results/arith_copy/oracle_labels.py ANNOTATE_DIR/stepwise.jsonl OUT.jsonl

Each step is labelled right before the oracle's first wrong step (annotate's `first_error` field) and
wrong from it on, in place of the completions' hard and soft labels. A PRM trained on OUT.jsonl
(`shepherd train-prm ... data=OUT.jsonl`) separates what the labels cost from what the model cannot learn.
"""
from __future__ import annotations

import sys

from reward.io import read_jsonl, write_jsonl_atomic


def main(src: str, dst: str) -> None:
    rows, changed = [], 0
    for r in read_jsonl(src):
        first = r["first_error"]
        labels = [first is None or k < first for k in range(len(r["completions"]))]
        changed += labels != r["labels"]
        rows.append({**r, "labels": labels, "soft_labels": [float(x) for x in labels]})
    write_jsonl_atomic(dst, rows)
    print(f"{len(rows)} solutions, {changed} with labels other than the completions'")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
