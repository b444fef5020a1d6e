"""`shepherd eval-prm`: how well a PRM finds the first wrong step, measured the ProcessBench way.

The predicted first error of a solution is the first step whose PRM score is below a threshold (none:
"all steps right", label -1). Accuracy is taken separately on erroneous solutions (predicted index ==
true index) and on correct ones (predicted -1); F1 is their harmonic mean, so a PRM cannot score well by
flagging everything or nothing. The threshold is chosen on a validation split (grid 0.05..0.95,
maximising F1) and applied unchanged to the test split.

Sources of truth (key `source`): `arith`, a stepwise.jsonl of `shepherd annotate` whose oracle
`first_error` is exact (split by problem); `processbench`, one of ProcessBench's json files with human
labels (Zheng et al. 2024, arXiv 2412.06559; split by record).
"""
from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Sequence

from omegaconf import DictConfig

from reward.config import StageConfig
from reward.errors import ShepherdError
from reward.adapters import AdapterSettings, load_reward_model, score_items
from reward.formats import TAGGED, check_format
from reward.io import read_jsonl, write_atomic
from reward.score import question_and_steps
from reward.stage import stage_main

SOURCES = ("arith", "processbench")
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


@dataclass
class EvalPrmConfig(AdapterSettings, StageConfig):
    model: str = ""  # a PRM folder (train-prm output `model/`)
    format: str = TAGGED  # the PRM's convention (reward.adapters): tagged | math-shepherd | qwen-prm | separator
    source: str = "arith"  # arith | processbench
    input: str = ""  # arith: stepwise.jsonl from `shepherd annotate` (oracle first_error)
    path: str = ""  # processbench: one of its json files (gsm8k.json, math.json, ...)
    val_share: float = 0.5  # share of problems (arith) or records (processbench) that picks the threshold
    limit: int = 0  # use only K records, drawn at random (seeded): files may be sorted by label (0: all)
    batch_size: int = 64
    dtype: str = "auto"
    device: str = "auto"


@dataclass
class Case:
    """One solution to judge: its steps and the index of its first wrong step (-1: all right)."""

    group: str  # what the validation/test split keeps together (a problem, or a record)
    question: str
    steps: list[str]
    label: int


def predict_first_error(scores: Sequence[float], threshold: float) -> int:
    """Index of the first step scored below the threshold; -1 when none is (ProcessBench's label)."""
    return next((i for i, s in enumerate(scores) if s < threshold), -1)


def first_error_metrics(pred_indices: Sequence[int], true_indices: Sequence[int]) -> dict[str, float]:
    """ProcessBench's figures; an accuracy over no solutions (and the F1 built on it) is NaN."""
    pairs = list(zip(pred_indices, true_indices, strict=True))
    erroneous = [p == t for p, t in pairs if t != -1]
    correct = [p == -1 for p, t in pairs if t == -1]
    acc_err = sum(erroneous) / len(erroneous) if erroneous else math.nan
    acc_ok = sum(correct) / len(correct) if correct else math.nan
    if math.isnan(acc_err) or math.isnan(acc_ok):
        f1 = math.nan
    else:
        f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok > 0 else 0.0
    return {"acc_erroneous": acc_err, "acc_correct": acc_ok, "f1": f1,
            "solutions": len(pairs), "erroneous": len(erroneous), "correct": len(correct)}


def choose_threshold(scores: Sequence[Sequence[float]], labels: Sequence[int]) -> tuple[float, dict[str, float]]:
    """The grid threshold with the highest F1 (the lowest such threshold on ties) and its metrics."""
    tried = [(t, first_error_metrics([predict_first_error(s, t) for s in scores], labels)) for t in THRESHOLDS]
    return max(tried, key=lambda tm: tm[1]["f1"])  # max keeps the first of equals


def load_arith(path: str) -> list[Case]:
    """Graded arith solutions with the oracle's first_error: `annotate`'s stepwise.jsonl, or `sample` /
    `verify` records (test-split solutions the PRM never trained on). A solution that stopped early
    (first_error == its step count) is wrong at its last step, the one that should have gone on. A
    sampled solution with no steps at all (the policy wrote nothing) has no step to find: left out."""
    cases = []
    records = read_jsonl(path, required=("first_error", "problem_id"))
    for lineno, r in enumerate(records, 1):
        if "solution" in r and not r.get("steps"):
            continue
        question, steps = question_and_steps(r, f"{path}:{lineno}")
        fe = r["first_error"]
        if fe is not None and (not isinstance(fe, int) or not 0 <= fe <= len(steps)):
            raise ShepherdError(f"{path}:{lineno}: first_error must be null or 0..{len(steps)}, got {fe!r}")
        label = -1 if fe is None else min(fe, len(steps) - 1)
        cases.append(Case(str(r["problem_id"]), question, steps, label))
    return cases


def load_processbench(path: str) -> list[Case]:
    """Records of a ProcessBench json file (one array of {problem, steps, label, ...})."""
    if not os.path.isfile(path):
        raise ShepherdError(f"ProcessBench file not found: {path} (key path)")
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except json.JSONDecodeError as e:
        raise ShepherdError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(records, list):
        raise ShepherdError(f"{path}: expected a JSON array of records")
    cases = []
    for i, r in enumerate(records):
        for key in ("problem", "steps", "label"):
            if not isinstance(r, dict) or key not in r:
                raise ShepherdError(f"{path}: record {i} has no '{key}'")
        steps, label = r["steps"], r["label"]
        if not steps:
            raise ShepherdError(f"{path}: record {i} has no steps")
        if not isinstance(label, int) or not -1 <= label < len(steps):
            raise ShepherdError(f"{path}: record {i}: label must be -1..{len(steps) - 1}, got {label!r}")
        cases.append(Case(str(i), r["problem"], list(steps), label))
    return cases


def take(cases: list[Case], limit: int, seed: int) -> list[Case]:
    """`limit` cases drawn at random (seeded; all when 0), kept in file order. Not the file's head:
    ProcessBench files hold all their wrong final answers first, so a head has no correct solution."""
    if not limit or limit >= len(cases):
        return cases
    keep = sorted(random.Random(f"take-{seed}").sample(range(len(cases)), limit))
    return [cases[i] for i in keep]


def split_cases(cases: list[Case], val_share: float, seed: int) -> tuple[list[Case], list[Case]]:
    """(validation, test), whole groups on one side, drawn by a seeded shuffle."""
    groups = sorted({c.group for c in cases})
    random.Random(seed).shuffle(groups)
    val = set(groups[: int(round(len(groups) * val_share))])
    return [c for c in cases if c.group in val], [c for c in cases if c.group not in val]


def _figure(x: float) -> float | None:
    """Rounded for metrics.json; NaN (no solutions of a kind) as null, which strict JSON can read."""
    return None if math.isnan(x) else round(x, 4)


def write_report(folder: str, cfg: DictConfig, threshold: float, rows: dict[str, dict[str, float]]) -> None:
    where = cfg.input if cfg.source == "arith" else cfg.path
    lines = [f"First wrong step found by the PRM `{cfg.model}` on {cfg.source} (`{where}`); threshold "
             f"{threshold:.2f}, chosen on validation (max F1).", "",
             "| split | solutions | erroneous | correct | acc. erroneous | acc. correct | F1 |",
             "|---|---|---|---|---|---|---|"]
    for name, m in rows.items():
        cells = [f"{m[k]:.3f}" if not math.isnan(m[k]) else "n/a" for k in ("acc_erroneous", "acc_correct", "f1")]
        lines.append(f"| {name} | {m['solutions']} | {m['erroneous']} | {m['correct']} | " + " | ".join(cells) + " |")
    write_atomic(os.path.join(folder, "eval_prm.md"), "\n".join(lines) + "\n")


def run(cfg: DictConfig) -> dict[str, Any]:
    if cfg.source not in SOURCES:
        raise ShepherdError(f"unknown source '{cfg.source}' (key source); use one of {', '.join(SOURCES)}")
    if not 0 < cfg.val_share < 1:
        raise ShepherdError(f"val_share must be in (0, 1), got {cfg.val_share} (key val_share)")
    check_format(cfg.format, "format")
    if cfg.source == "arith":
        if not cfg.input:
            raise ShepherdError("no input given (key input): a stepwise.jsonl from `shepherd annotate`")
        cases = load_arith(cfg.input)
    else:
        if not cfg.path:
            raise ShepherdError("no ProcessBench file given (key path)")
        cases = load_processbench(cfg.path)
    val, test = split_cases(take(cases, cfg.limit, cfg.seed), cfg.val_share, cfg.seed)
    kinds = {c.label == -1 for c in val}
    missing = [name for name, kind in (("erroneous", False), ("correct", True)) if kind not in kinds]
    if missing:  # F1 needs both kinds, or no threshold can be chosen
        raise ShepherdError(f"the validation split ({len(val)} solutions) has no {' and no '.join(missing)} "
                            "solutions: give more records or raise val_share")
    if not test:
        raise ShepherdError("the test split is empty: give more records or lower val_share")

    model, tokenizer = load_reward_model(cfg.model, "model", cfg.format, cfg.dtype, cfg.device)
    scores = score_items(model, tokenizer, [(c.question, c.steps) for c in val + test], cfg.format, cfg, cfg.batch_size)
    threshold, val_m = choose_threshold(scores[: len(val)], [c.label for c in val])
    test_m = first_error_metrics([predict_first_error(s, threshold) for s in scores[len(val):]], [c.label for c in test])
    write_report(cfg.output_dir, cfg, threshold, {"validation": val_m, "test": test_m})
    metrics: dict[str, Any] = {"threshold": threshold}
    for name, m in (("val", val_m), ("test", test_m)):
        metrics.update({f"{name}_{k}": _figure(m[k]) for k in ("acc_erroneous", "acc_correct", "f1")})
        metrics[f"{name}_solutions"] = m["solutions"]
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return stage_main("eval-prm", EvalPrmConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
