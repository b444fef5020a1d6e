"""Monte-Carlo completions of step prefixes, and the strategies that spend them to label steps.

For the prefix ending at every step of a solution, a completer samples N continuations to a final
answer; each step gets `n_correct` / `n_total`, and from them HE and SE (`reward.labels`). Identical
prefixes (common among samples of one problem) are completed once and shared, and all completions of
a batch of solutions go into large generation calls.

Strategies: `full` (every step gets N completions, the paper), `early_stop` (a step stops at its first
success; steps after the first step with none are labelled 0 unsampled), `binary_search` (the first
step with no success found by bisection over the prefixes, after OmegaPRM, Luo et al. 2024), and
`oracle` (no completions: 1 before the task oracle's first wrong step, 0 from it on; arith only, a
diagnostic that separates a PRM's Monte-Carlo label noise from what its model can learn).

Written here rather than taken from a library: no library does MC step labelling with shared prefixes.
Used by `shepherd annotate` and by its audit (`reward.audit`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reward.errors import ShepherdError
from reward.formats import tag_ids
from reward.generation import Generator
from reward.labels import hard_estimate, soft_estimate
from reward.tasks import STEP_TAG, Problem, Task, first_error_labels

STRATEGIES = ("full", "early_stop", "binary_search", "oracle")


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
        if not tag_ids(generator.tokenizer):  # the PRM data marks steps with ' ки'
            raise ShepherdError(f"the completer's tokenizer cannot encode the step tag '{STEP_TAG}' (key completer)")

    def outcomes(self, prefixes: list[tuple[Solution, int]], n: int, seed: int) -> list[list[bool]]:
        """For each (solution, step index), n completions of the prefix ending at that step: right or not."""
        keys = [(s.problem.question, tuple(s.steps[: k + 1])) for s, k in prefixes]
        if self.share_prefixes:
            first = {key: i for i, key in reversed(list(enumerate(keys)))}  # each key's first prefix
            owners = list(dict.fromkeys(first[key] for key in keys))
            slot = {i: j for j, i in enumerate(owners)}
            slots = [slot[first[key]] for key in keys]
        else:
            owners, slots = list(range(len(keys))), list(range(len(keys)))
        # Longest expected completion first (the rest of the sampled solution the prefix came from), so
        # that one generate call holds completions of about one length: a call runs until its longest
        # row ends, and short rows beside long ones would idle.
        rest = [len(self.task.join_steps(prefixes[i][0].steps[prefixes[i][1] + 1:])) for i in owners]
        order = sorted(range(len(owners)), key=lambda j: -rest[j])
        tok = self.generator.tokenizer
        heads = [self.task.join_steps(list(keys[i][1])) + "\n" for i in owners]
        prompts = [continue_after(self.task.format_prompt(keys[owners[j]][0], tok)) + heads[j] for j in order]
        samples = self.generator.generate(prompts, n=n, temperature=self.temperature, seed=seed) if prompts else []
        self.generated += len(owners) * n
        results: list[list[bool]] = [[] for _ in owners]
        for j, group in zip(order, samples):
            gold = prefixes[owners[j]][0].problem.gold
            results[j] = [self.task.is_correct(heads[j] + s.text, gold) for s in group]
        return [results[j] for j in slots]


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
        labels = first_error_labels(len(s.steps), task.first_error(s.problem, task.join_steps(s.steps)))
        out.append(StepCounts([-label for label in labels[:-1]], [0] * (len(s.steps) - 1)))
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
