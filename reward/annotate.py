"""`shepherd annotate`: Math-Shepherd's automatic step labels by Monte-Carlo completions.

For the prefix ending at every step of every solution, a completer samples N continuations to a final
answer; each step gets `n_correct` / `n_total`, HE and SE (`reward.labels`). The last step's label is
the solution's own answer. Identical prefixes (common among samples of one problem) are completed once
and shared, and all completions of a chunk of solutions go into large generation batches.

Strategies: `full` (every step gets N completions, the paper), `early_stop` (a step stops at its first
success; steps after the first step with none are labelled 0 unsampled), `binary_search` (the first
step with no success found by bisection over the prefixes, after OmegaPRM, Luo et al. 2024), and
`oracle` (no completions: 1 before the task oracle's first wrong step, 0 from it on; arith only, a
diagnostic that separates a PRM's Monte-Carlo label noise from what its model can learn).

Written here rather than taken from a library: no library does MC step labelling with shared prefixes.
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
from reward.generation import Generator, load_generator
from reward.io import read_jsonl, write_jsonl_atomic
from reward.labels import hard_estimate, soft_estimate, to_math_shepherd
from reward.shards import ChunkedJsonl
from reward.stage import stage_main
from reward.tasks import STEP_TAG, Problem, Task, load_task

STRATEGIES = ("full", "early_stop", "binary_search", "oracle")


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


def continue_after(prompt: str) -> str:
    """The prompt a prefix of steps follows: a template that ends mid-line (MetaMath's "... Let's think
    step by step.") gets a line break, so step 1 does not run into it."""
    return prompt if not prompt or prompt[-1].isspace() else prompt + "\n"


@dataclass
class Solution:
    id: str
    problem: Problem
    steps: list[str]
    correct: bool
    record: dict[str, Any]


@dataclass
class StepCounts:
    """Per sampled step (all but the last): completions that reached the gold answer, and spent."""

    n_correct: list[int]
    n_total: list[int]
    outcomes: list[list[bool]] = field(default_factory=list)  # full strategy: every completion's result


class Completer:
    """Samples completions of step prefixes and says which reach the gold answer; counts the cost."""

    def __init__(self, generator: Generator, task: Task, temperature: float, share_prefixes: bool) -> None:
        self.generator, self.task = generator, task
        self.temperature, self.share_prefixes = temperature, share_prefixes
        self.generated = 0
        check_step_tag(generator.tokenizer)

    def outcomes(self, prefixes: list[tuple[Solution, int]], n: int, seed: int) -> list[list[bool]]:
        """For each (solution, step index), n completions of the prefix ending at that step: right or not."""
        keys = [(s.problem.question, tuple(s.steps[: k + 1])) for s, k in prefixes]
        unique = list(dict.fromkeys(keys)) if self.share_prefixes else keys
        where = {key: i for i, key in enumerate(unique)}
        owner = {key: s for key, (s, _) in zip(keys, prefixes)}
        tok = self.generator.tokenizer
        prompts = [continue_after(self.task.format_prompt(q, tok)) + self.task.join_steps(list(steps)) + "\n"
                   for q, steps in unique]
        samples = self.generator.generate(prompts, n=n, temperature=self.temperature, seed=seed) if prompts else []
        self.generated += len(unique) * n
        results = []
        for (q, steps), group in zip(unique, samples):
            gold = owner[(q, steps)].problem.gold
            head = self.task.join_steps(list(steps)) + "\n"
            results.append([self.task.is_correct(head + s.text, gold) for s in group])
        if self.share_prefixes:
            return [results[where[key]] for key in keys]
        return results


def check_step_tag(tokenizer: Any) -> None:
    """The PRM data marks steps with ' ки': a completer tokenizer that cannot encode it is an error."""
    ids = tokenizer(f" {STEP_TAG}", add_special_tokens=False)["input_ids"]
    if not ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids) or \
            tokenizer.decode(ids).strip() != STEP_TAG:
        raise ShepherdError(f"the completer's tokenizer cannot encode the step tag '{STEP_TAG}' (key completer)")


# --- strategies: each returns StepCounts per solution for its sampled steps (all but the last) --------
def label_full(c: Completer, sols: list[Solution], n: int, seed: int) -> list[StepCounts]:
    prefixes = [(s, k) for s in sols for k in range(len(s.steps) - 1)]
    results = iter(c.outcomes(prefixes, n, seed))
    out = []
    for s in sols:
        outs = [next(results) for _ in range(len(s.steps) - 1)]
        out.append(StepCounts([sum(o) for o in outs], [len(o) for o in outs], outs))
    return out


def label_early_stop(c: Completer, sols: list[Solution], n: int, seed: int, round_size: int) -> list[StepCounts]:
    counts = [StepCounts([0] * (len(s.steps) - 1), [0] * (len(s.steps) - 1)) for s in sols]
    alive = [True] * len(sols)  # no step with zero successes yet
    for k in range(max((len(s.steps) - 1 for s in sols), default=0)):
        todo = [i for i, s in enumerate(sols) if alive[i] and k < len(s.steps) - 1]
        r = 0
        while todo:
            m = min(round_size, n - counts[todo[0]].n_total[k])
            got = c.outcomes([(sols[i], k) for i in todo], m, seed + 7919 * k + r)
            r += 1
            for i, o in zip(todo, got):
                counts[i].n_correct[k] += sum(o)
                counts[i].n_total[k] += len(o)
            todo = [i for i in todo if counts[i].n_correct[k] == 0 and counts[i].n_total[k] < n]
        for i, s in enumerate(sols):
            if alive[i] and k < len(s.steps) - 1 and counts[i].n_correct[k] == 0:
                alive[i] = False  # later steps: labelled 0 without sampling (n_total stays 0)
    return counts


def label_binary_search(c: Completer, sols: list[Solution], n: int, seed: int) -> list[StepCounts]:
    counts = [StepCounts([0] * (len(s.steps) - 1), [0] * (len(s.steps) - 1)) for s in sols]
    lo = [0] * len(sols)
    hi = [len(s.steps) - 1 for s in sols]  # hi == len-1: no sampled step fails
    r = 0
    while True:
        todo = [i for i in range(len(sols)) if lo[i] < hi[i]]
        if not todo:
            break
        mids = [(lo[i] + hi[i]) // 2 for i in todo]
        got = c.outcomes([(sols[i], m) for i, m in zip(todo, mids)], n, seed + 104729 * r)
        r += 1
        for i, m, o in zip(todo, mids, got):
            counts[i].n_correct[m], counts[i].n_total[m] = sum(o), len(o)
            if sum(o) > 0:
                lo[i] = m + 1
            else:
                hi[i] = m
    for cnt, first_fail in zip(counts, lo):
        for k in range(first_fail):  # before the first failure: reachable by monotonicity, unsampled
            if cnt.n_total[k] == 0:
                cnt.n_correct[k] = -1
    return counts


def label_oracle(task: Task, sols: list[Solution]) -> list[StepCounts]:
    """Exact labels from the task's oracle, nothing sampled: steps before the first wrong one are marked
    reachable (n_correct -1, as binary search marks them), the rest 0."""
    out = []
    for s in sols:
        first = task.first_error(s.problem, task.join_steps(s.steps))
        first = len(s.steps) if first is None else first
        out.append(StepCounts([-1 if k < first else 0 for k in range(len(s.steps) - 1)], [0] * (len(s.steps) - 1)))
    return out


def run_strategy(strategy: str, c: Completer, sols: list[Solution], n: int, seed: int, cfg: Any) -> list[StepCounts]:
    if strategy == "full":
        return label_full(c, sols, n, seed)
    if strategy == "early_stop":
        return label_early_stop(c, sols, n, seed, cfg.early_stop_round)
    if strategy == "binary_search":
        return label_binary_search(c, sols, n, seed)
    raise ShepherdError(f"unknown strategy '{strategy}' (key strategy); use one of {', '.join(STRATEGIES)}")


def labels_of(sol: Solution, counts: StepCounts) -> tuple[list[int], list[float]]:
    """HE and SE per step. Unsampled steps (n_total 0) carry an inferred label: 1 where marked
    reachable (n_correct -1, binary search), else 0; their SE equals that label."""
    he, se = [], []
    for nc, nt in zip(counts.n_correct, counts.n_total):
        if nt > 0:
            he.append(hard_estimate(nc))
            se.append(round(soft_estimate(nc, nt), 4))
        else:
            he.append(int(nc < 0))
            se.append(float(nc < 0))
    return he + [int(sol.correct)], se + [float(sol.correct)]


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
    """Solutions from samples.jsonl; ones without steps or gold answers are skipped and counted."""
    skipped = {"skipped_no_steps": 0, "skipped_no_gold": 0}
    sols = []
    for i, r in enumerate(read_jsonl(path, required=("question",)), 1):
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
        from reward.audit import run_audit

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
