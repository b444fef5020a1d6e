"""`shepherd sample`: draw solutions from a policy for a split and grade them (samples.jsonl).

Resumable: problems are sampled in fixed chunks, each appended whole with its own seed, so a killed run
continues with the unfinished chunks and ends with the same records as an uninterrupted one. Under the
`deepspeed` launcher the ranks share the chunks (`reward.shards`), with the same records again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from reward.config import GenerationConfig, StageConfig
from reward.errors import ShepherdError
from reward.generation import Generator, load_generator
from reward.shards import ChunkedJsonl
from reward.slips import slip_solutions
from reward.stage import stage_main
from reward.tasks import Problem, Task, load_task


@dataclass
class SampleConfig(StageConfig):
    policy: str = ""  # model folder (or .gguf file)
    split: str = "train"
    num_problems: int = 256
    samples_per_problem: int = 16
    temperature: float = 1.0
    # Also write each problem's reference solution (the data set's worked solution; arith: the solver's)
    # as one more graded record (`reference: true`, not counted in the accuracy): a policy too weak to
    # solve the problems (SmolLM2-135M on GSM8K) then still gives annotation right steps to label.
    include_reference: bool = False
    # Per problem, this many slip samples (reward/slips.py): one of its samples with one step forced
    # wrong (a number changed, a token dropped or repeated), the rest written by the policy. They give
    # the reward models the rare slips that best-of-N at large N picks. `slip: true`, not counted in
    # the accuracy; annotate labels those whose answer the slip made wrong.
    slips_per_problem: int = 0
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def problem_record(problem: Problem) -> dict[str, Any]:
    return {"problem_id": problem.id, "question": problem.question, "gold": problem.gold, "meta": problem.meta}


def graded_record(task: Task, problem: Problem, key: str, index: int, text: str, finished: bool,
                  **kind: Any) -> dict[str, Any]:
    """One solution of `problem` with its grade; `kind` marks a record that is not a policy sample."""
    return {"id": f"{problem.id}-{key}", **problem_record(problem), "sample_index": index, "solution": text,
            "finished": finished, **kind, **task.grade(problem, text)}


def policy_sample(record: dict[str, Any]) -> bool:
    """The policy's own sample: neither a data set's reference solution nor a forced slip."""
    return not record.get("reference") and not record.get("slip")


def sample_and_grade(generator: Generator, task: Task, problems: list[Problem], n: int, temperature: float,
                     seed: int, progress: bool = False, reference: bool = False) -> list[list[dict[str, Any]]]:
    """Per problem, n graded samples (one record each), in one batched generation call; with `reference`,
    the problem's reference solution graded as one more record."""
    prompts = [task.format_prompt(p.question, generator.tokenizer) for p in problems]
    samples = generator.generate(prompts, n=n, temperature=temperature, seed=seed, progress=progress)
    out = []
    for p, group in zip(problems, samples):
        out.append([graded_record(task, p, str(j), j, s.text, s.finished) for j, s in enumerate(group)])
        if reference:
            out[-1].append(graded_record(task, p, "ref", -1, task.reference_solution(p) or "", True, reference=True))
    return out


def run(cfg: DictConfig) -> dict:
    task = load_task(cfg.task)
    problems = task.problems(cfg.split, cfg.num_problems, seed=cfg.seed)
    missing = [p.id for p in problems if cfg.include_reference and not task.reference_solution(p)]
    if missing:
        raise ShepherdError(f"problem {missing[0]} has no reference solution (key include_reference)")
    path = os.path.join(cfg.output_dir, "samples.jsonl")
    n = cfg.samples_per_problem
    per_chunk = max(1, cfg.generation.batch_size // n)
    chunks = [problems[i: i + per_chunk] for i in range(0, len(problems), per_chunk)]

    per_id = n + cfg.include_reference + cfg.slips_per_problem
    out = ChunkedJsonl(path, [[p.id for p in chunk] for chunk in chunks], per_id=per_id, key="problem_id")
    todo = out.todo()
    generator = load_generator(cfg.policy, cfg.generation) if todo else None
    for c in tqdm(todo, desc="sample", disable=out.rank != 0):
        seed = cfg.seed * 1000003 + c
        groups = sample_and_grade(generator, task, chunks[c], n, cfg.temperature, seed, reference=cfg.include_reference)
        if cfg.slips_per_problem:
            slips = slip_solutions(generator, task, chunks[c], groups, cfg.slips_per_problem, cfg.temperature, seed)
            for p, group, made in zip(chunks[c], groups, slips):
                group += [graded_record(task, p, f"slip{j}", -1, text, finished, slip=True, **origin)
                          for j, (text, finished, origin) in enumerate(made)]
        out.append([r for g in groups for r in g])
    return summarize(out.finish(), n)


def summarize(records: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Accuracy, format errors and (with an oracle) right answers reached through a wrong step, of the
    policy's samples (reference solutions only counted)."""
    references = sum(bool(r.get("reference")) for r in records)
    slips = [r for r in records if r.get("slip")]
    records = [r for r in records if policy_sample(r)]
    right = [r for r in records if r["correct"]]
    metrics = {
        "samples": len(records), "problems": len({r["problem_id"] for r in records}), "samples_per_problem": n,
        "accuracy": _mean([r["correct"] for r in records]),
        "format_error_rate": _mean([not r["well_formed"] for r in records]),
        "mean_steps": _mean([len(r["steps"]) for r in records]),
        **({"references": references} if references else {}),
        **({"slips": len(slips), "slip_answer_wrong": _mean([not r["correct"] for r in slips])} if slips else {}),
    }
    if records and "first_error" in records[0]:
        metrics["right_answer_wrong_step"] = _mean([r["first_error"] is not None for r in right])
        metrics["solutions_with_wrong_step"] = _mean([r["first_error"] is not None for r in records])
    return metrics


def _mean(xs: list[Any]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


def main(argv: list[str] | None = None) -> dict:
    return stage_main("sample", SampleConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
