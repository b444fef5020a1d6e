"""`shepherd annotate`: Math-Shepherd's automatic step labels by Monte-Carlo completions.

Every step of every sampled solution gets `n_correct` / `n_total` completions that reached the gold
answer, HE and SE (the completions and strategies: `reward.completion`); the last step's label is the
solution's own answer. Solutions go in resumable chunks (`reward.shards`, data-parallel over ranks);
the output is TRL's stepwise-supervision jsonl plus Math-Shepherd's text format. With `audit` (arith),
the labels are compared with the oracle's over N and strategies (`reward.audit`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from reward.config import GenerationConfig, StageConfig
from reward.errors import ShepherdError
from reward.audit import run_audit
from reward.completion import (STRATEGIES, Completer, Solution, StepCounts, label_oracle, labels_of,
                               run_strategy)
from reward.generation import load_generator
from reward.io import read_jsonl, write_jsonl_atomic
from reward.labels import to_math_shepherd
from reward.shards import ChunkedJsonl
from reward.slips import skipped_slip
from reward.stage import stage_main
from reward.tasks import Problem, Task, load_task


@dataclass
class AnnotateConfig(StageConfig):
    input: str = ""  # samples.jsonl from `shepherd sample` (or records with question, gold, steps)
    completer: str = ""  # model folder; empty: the policy that wrote `input` (its config.yaml)
    n_completions: int = 8  # N per step, as in the paper
    strategy: str = "full"  # full | early_stop | binary_search | oracle
    temperature: float = 1.0
    share_prefixes: bool = True
    early_stop_round: int = 2  # early_stop: completions per round until the first success
    label_type: str = "he"  # math_shepherd.jsonl labels: he, or se above se_threshold
    se_threshold: float = 0.5
    chunk_solutions: int = 128  # solutions per resumable chunk
    audit: bool = False  # arith only: compare labels with the oracle over N and strategies
    audit_solutions: int = 400
    audit_ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def stepwise_record(sol: Solution, counts: StepCounts, task: Task, strategy: str) -> dict[str, Any]:
    """TRL stepwise-supervision row plus the counts, so any label can be recomputed."""
    he, se = labels_of(sol, counts)
    rec = {
        "id": sol.id, "problem_id": sol.problem.id, "prompt": sol.problem.question, "completions": sol.steps,
        "labels": [bool(x) for x in he], "soft_labels": se,
        "n_correct": [max(x, 0) for x in counts.n_correct] + [int(sol.correct)],
        "n_total": counts.n_total + [1], "answer": sol.record.get("answer"), "gold": sol.problem.gold,
        "correct": sol.correct, "task": task.name, "strategy": strategy,
    }
    if task.has_oracle:
        rec["first_error"] = task.first_error(sol.problem, task.join_steps(sol.steps))
        rec["meta"] = sol.problem.meta
    return rec


def read_solutions(path: str, task: Task) -> tuple[list[Solution], dict[str, int]]:
    """Solutions from samples.jsonl; ones without steps or gold answers, and slips that left the answer right,
    are skipped and counted."""
    skipped = {"skipped_no_steps": 0, "skipped_no_gold": 0, "skipped_slip_answer_right": 0}
    sols = []
    for i, r in enumerate(read_jsonl(path, required=("question",)), 1):
        if skipped_slip(r):
            skipped["skipped_slip_answer_right"] += 1
            continue
        steps = r.get("steps") or (task.split_steps(r["solution"]) if r.get("solution") else [])
        gold = r.get("gold")
        if not steps:
            skipped["skipped_no_steps"] += 1
            continue
        if gold in (None, ""):
            skipped["skipped_no_gold"] += 1
            continue
        problem = Problem(id=str(r.get("problem_id", i)), question=r["question"], gold=str(gold), meta=r.get("meta", {}))
        correct = r["correct"] if "correct" in r else task.is_correct(task.join_steps(steps), problem.gold)
        sols.append(Solution(str(r.get("id", f"line{i}")), problem, steps, bool(correct), r))
    if len({s.id for s in sols}) != len(sols):
        raise ShepherdError(f"{path}: solution ids are not unique")
    return sols, skipped


def completer_path(cfg: DictConfig) -> str:
    """The configured completer, else the policy recorded beside the input by `shepherd sample`."""
    if cfg.completer:
        return cfg.completer
    sample_cfg = os.path.join(os.path.dirname(cfg.input), "config.yaml")
    if os.path.isfile(sample_cfg):
        policy = OmegaConf.load(sample_cfg).get("policy")
        if policy:
            return str(policy)
    raise ShepherdError("no completer given (key completer) and none recorded beside the input")


def run(cfg: DictConfig) -> dict:
    if cfg.strategy not in STRATEGIES:
        raise ShepherdError(f"unknown strategy '{cfg.strategy}' (key strategy); use one of {', '.join(STRATEGIES)}")
    if not cfg.input:
        raise ShepherdError("no input given (key input): a samples.jsonl from `shepherd sample`")
    task = load_task(cfg.task)
    sols, skipped = read_solutions(cfg.input, task)
    os.makedirs(cfg.output_dir, exist_ok=True)
    path = os.path.join(cfg.output_dir, "stepwise.jsonl")
    chunks = [sols[i: i + cfg.chunk_solutions] for i in range(0, len(sols), cfg.chunk_solutions)]
    out = ChunkedJsonl(path, [[s.id for s in ch] for ch in chunks])
    oracle = cfg.strategy == "oracle"
    if oracle and not task.has_oracle:
        raise ShepherdError(f"strategy oracle needs a task with an oracle (arith), not '{task.name}' (key strategy)")

    start = time.time()
    todo = out.todo()
    audit = cfg.audit and out.rank == 0  # the audit runs once, on rank 0
    completer = None
    if (todo and not oracle) or audit:
        completer = Completer(load_generator(completer_path(cfg), cfg.generation, key="completer"), task,
                              cfg.temperature, cfg.share_prefixes)
    for ci in tqdm(todo, desc="annotate", disable=out.rank != 0):
        counts = label_oracle(task, chunks[ci]) if oracle else \
            run_strategy(cfg.strategy, completer, chunks[ci], cfg.n_completions, cfg.seed * 1000003 + ci, cfg)
        out.append([stepwise_record(s, c, task, cfg.strategy) for s, c in zip(chunks[ci], counts)])
    records = out.finish()
    generated = out.sum(completer.generated if completer else 0)
    seconds = time.time() - start

    if out.rank == 0:
        write_jsonl_atomic(os.path.join(cfg.output_dir, "math_shepherd.jsonl"),
                           [to_math_shepherd(r, cfg.label_type, cfg.se_threshold) for r in records])
    metrics = {
        "problems": len({r["problem_id"] for r in records}), "solutions": len(records),
        "steps": sum(len(r["labels"]) for r in records), "completions_generated": generated,
        "positive_step_share": round(sum(sum(r["labels"]) for r in records) / max(1, sum(len(r["labels"]) for r in records)), 4),
        "wall_seconds": round(seconds, 1), "completions_per_second": round(generated / seconds, 1) if seconds > 0 and generated else 0.0,
        **skipped,
    }
    if cfg.strategy == "early_stop":
        metrics["early_stop_assumption_wrong"] = early_stop_contradictions(records)
    if audit:
        metrics.update(run_audit(cfg, task, sols, completer))
    return metrics


def early_stop_contradictions(records: list[dict[str, Any]]) -> float:
    """Where early_stop's assumption is visibly wrong: a step labelled 0 unsampled in a solution whose
    own final answer is right (a later prefix did reach the gold answer)."""
    assumed = [r for r in records if any(t == 0 for t in r["n_total"][:-1])]
    return round(sum(r["correct"] for r in assumed) / len(assumed), 4) if assumed else 0.0


def main(argv: list[str] | None = None) -> dict:
    return stage_main("annotate", AnnotateConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
