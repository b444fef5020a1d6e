"""`shepherd score`: P(correct) for every step of every solution in a jsonl, all steps of a solution in
one forward pass, solutions batched. Reads either `annotate` format or `{"problem"|"question", "steps"}`
records and writes `scores.jsonl`: each input record, in input order, with `step_scores` added."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from reward.config import StageConfig
from reward.errors import ShepherdError
from reward.generation import load_causal_lm, load_tokenizer
from reward.io import read_jsonl, write_jsonl_atomic
from reward.labels import from_math_shepherd
from reward.prm import aggregate, score_steps
from reward.stage import stage_main


@dataclass
class ScoreConfig(StageConfig):
    model: str = ""  # a reward-model folder (train-prm / train-orm output `model/`)
    input: str = ""
    batch_size: int = 64
    max_length: int = 1024
    dtype: str = "auto"
    device: str = "auto"


def question_and_steps(record: dict[str, Any], where: str) -> tuple[str, list[str]]:
    """The (question, steps) of a record in any of the formats we read."""
    if "input" in record and "label" in record:
        r = from_math_shepherd(record)
        return r["prompt"], r["completions"]
    if "prompt" in record and "completions" in record:
        question, steps = record["prompt"], record["completions"]
    elif "steps" in record and ("problem" in record or "question" in record):
        question, steps = record.get("problem", record.get("question")), record["steps"]
    else:
        raise ShepherdError(f"{where}: need 'prompt'+'completions', 'problem'/'question'+'steps', or 'input'+'label'")
    if not steps:
        raise ShepherdError(f"{where}: a record with no steps")
    return question, list(steps)


def run(cfg: DictConfig) -> dict:
    if not cfg.input:
        raise ShepherdError("no input given (key input)")
    records = read_jsonl(cfg.input)
    items = [question_and_steps(r, f"{cfg.input}:{i + 1}") for i, r in enumerate(records)]
    tokenizer = load_tokenizer(cfg.model, "model")
    model = load_causal_lm(cfg.model, "model", cfg.dtype, cfg.device)
    scores = score_steps(model, tokenizer, items, cfg.batch_size, cfg.max_length)
    write_jsonl_atomic(os.path.join(cfg.output_dir, "scores.jsonl"),
                       [{**r, "step_scores": [round(x, 6) for x in s]} for r, s in zip(records, scores)])
    mins = [aggregate(s, "min") for s in scores]
    return {"solutions": len(records), "steps_scored": sum(len(s) for s in scores),
            "mean_min_score": round(sum(mins) / max(1, len(mins)), 4)}


def main(argv: list[str] | None = None) -> dict:
    return stage_main("score", ScoreConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
