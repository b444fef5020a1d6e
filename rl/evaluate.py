"""`shepherd eval`: a policy's accuracy on a split, greedy and sampled, with majority vote (maj@k)."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from reward.config import GenerationConfig, StageConfig
from reward.generation import Generator, load_generator
from reward.io import write_jsonl_atomic
from reward.sample import sample_and_grade, summarize
from reward.stage import stage_main
from reward.tasks import HELD_OUT_SEED, Problem, Task, load_task


@dataclass
class EvalConfig(StageConfig):
    policy: str = ""
    split: str = "test"
    num_problems: int = 500
    samples_per_problem: int = 4  # samples at `temperature` per problem: accuracy_t1 and maj@k
    temperature: float = 1.0
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def majority_answer(answers: list[str | None]) -> str | None:
    """Self-consistency: the most frequent extracted answer (ties: the first seen)."""
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def accuracy_counts(task: Task, problems: list[Problem], greedy_correct: list[bool],
                    sampled_correct: list[list[bool]], sampled_answers: list[list[str | None]]) -> list[int]:
    """[greedy right, sampled right, majority right, problems]: counts, so that ranks can sum them."""
    majority = sum(task.is_equivalent(majority_answer(a), p.gold) for p, a in zip(problems, sampled_answers))
    return [sum(greedy_correct), sum(map(sum, sampled_correct)), majority, len(problems)]


def accuracies(counts: list[float], samples: int) -> dict[str, float]:
    """The one definition of a policy's accuracy, for `shepherd eval` and PPO's evaluations alike:
    greedy, sampled at the temperature (T=1 by default) and majority of `samples` (maj@k)."""
    greedy, sampled, majority, n = (float(c) for c in counts)
    n = max(1.0, n)
    return {"accuracy_greedy": round(greedy / n, 4), "accuracy_t1": round(sampled / (n * samples), 4),
            f"accuracy_maj{samples}": round(majority / n, 4)}


def evaluate_generator(generator: Generator, task: Task, problems: list[Problem], samples: int,
                       temperature: float, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The accuracies, format/oracle figures of the samples, plus every graded record."""
    greedy = sample_and_grade(generator, task, problems, 1, 0.0, seed)
    sampled = sample_and_grade(generator, task, problems, samples, temperature, seed + 1)
    flat = [r for g in sampled for r in g]
    counts = accuracy_counts(task, problems, [g[0]["correct"] for g in greedy],
                             [[r["correct"] for r in g] for g in sampled], [[r["answer"] for r in g] for g in sampled])
    metrics = {**{k: v for k, v in summarize(flat, samples).items() if k != "accuracy"}, **accuracies(counts, samples)}
    records = [{**g[0], "mode": "greedy"} for g in greedy] + [{**r, "mode": "sampled"} for r in flat]
    return metrics, records


def evaluate_policy(policy: str, task: Task, problems: list[Problem], gen_cfg: Any, samples: int,
                    temperature: float, seed: int, out_path: str | None = None) -> dict[str, Any]:
    metrics, records = evaluate_generator(load_generator(policy, gen_cfg), task, problems, samples, temperature, seed)
    if out_path:
        write_jsonl_atomic(out_path, records)
    return metrics


def run(cfg: DictConfig) -> dict:
    task = load_task(cfg.task)
    problems = task.problems(cfg.split, cfg.num_problems, seed=HELD_OUT_SEED)
    return evaluate_policy(cfg.policy, task, problems, cfg.generation, cfg.samples_per_problem, cfg.temperature,
                           cfg.seed, out_path=os.path.join(cfg.output_dir, "eval_samples.jsonl"))


def main(argv: list[str] | None = None) -> dict:
    return stage_main("eval", EvalConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
