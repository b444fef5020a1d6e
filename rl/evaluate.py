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
from reward.tasks import Problem, Task, load_task


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


def evaluate_generator(generator: Generator, task: Task, problems: list[Problem], samples: int,
                       temperature: float, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy accuracy, sampled accuracy, maj@k and format/oracle figures, plus every graded record."""
    greedy = sample_and_grade(generator, task, problems, 1, 0.0, seed)
    sampled = sample_and_grade(generator, task, problems, samples, temperature, seed + 1)
    flat = [r for g in sampled for r in g]
    metrics = {f"{k}_t1" if k in ("accuracy",) else k: v for k, v in summarize(flat, samples).items()}
    metrics["accuracy_greedy"] = sum(g[0]["correct"] for g in greedy) / len(problems)
    metrics[f"accuracy_maj{samples}"] = sum(
        task.is_equivalent(majority_answer([r["answer"] for r in g]), p.gold) for p, g in zip(problems, sampled)
    ) / len(problems)
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
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
    problems = task.problems(cfg.split, cfg.num_problems, seed=cfg.seed)
    return evaluate_policy(cfg.policy, task, problems, cfg.generation, cfg.samples_per_problem, cfg.temperature,
                           cfg.seed, out_path=os.path.join(cfg.output_dir, "eval_samples.jsonl"))


def main(argv: list[str] | None = None) -> dict:
    return stage_main("eval", EvalConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
