"""`shepherd score`: P(correct) for every step of every solution in a jsonl, all steps of a solution in
one forward pass, solutions batched. Reads either `annotate` format or `{"problem"|"question", "steps"}`
records and writes `scores.jsonl`: each input record, in input order, with `step_scores` added.
A Math-Shepherd row (`input`/`label`) is scored as its text stands, one score per step tag; other
records are written in the reward model's convention (key `format`: `tagged`, ours; `math-shepherd`,
the released math-shepherd-mistral-7b-prm's; `qwen-prm`; `separator`: `reward.adapters`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from reward.config import StageConfig
from reward.errors import ShepherdError
from reward.adapters import AdapterSettings, load_reward_model, score_items
from reward.formats import TAG_FORMATS, TAGGED, check_format, segments
from reward.io import read_jsonl, write_jsonl_atomic
from reward.labels import from_math_shepherd, split_math_shepherd
from reward.prm import aggregate, score_segments
from reward.stage import stage_main


@dataclass
class ScoreConfig(AdapterSettings, StageConfig):
    model: str = ""  # a reward-model folder (train-prm / train-orm output `model/`)
    input: str = ""
    format: str = TAGGED  # the reward model's convention (reward.adapters): tagged | math-shepherd | qwen-prm | separator
    batch_size: int = 64
    max_length: int = 1024
    dtype: str = "auto"
    device: str = "auto"


def question_and_steps(record: dict[str, Any], where: str) -> tuple[str, list[str]]:
    """The (question, steps) of a record in any of the formats we read."""
    if "input" in record and "label" in record:
        r = from_math_shepherd(record, where)
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


def record_segments(record: dict[str, Any], where: str, fmt: str) -> list[str]:
    """The reward model's text of a record, cut at its step tags: a Math-Shepherd row as it stands (one
    step per tag, wherever the tags are), any other record's (question, steps) in format `fmt`."""
    if "input" in record and "label" in record:
        return split_math_shepherd(record, where)[0]
    return segments(*question_and_steps(record, where), fmt)


def run(cfg: DictConfig) -> dict:
    if not cfg.input:
        raise ShepherdError("no input given (key input)")
    check_format(cfg.format, "format")
    records = read_jsonl(cfg.input)
    where = [f"{cfg.input}:{i + 1}" for i in range(len(records))]
    tagged = cfg.format in TAG_FORMATS  # then a Math-Shepherd row is scored as its text stands
    parsed = [record_segments(r, w, cfg.format) if tagged else question_and_steps(r, w) for r, w in zip(records, where)]
    model, tokenizer = load_reward_model(cfg.model, "model", cfg.format, cfg.dtype, cfg.device)
    scores = (score_segments(model, tokenizer, parsed, cfg.batch_size, cfg.max_length, cfg.step_tag) if tagged
              else score_items(model, tokenizer, parsed, cfg.format, cfg, cfg.batch_size, cfg.max_length))
    write_jsonl_atomic(os.path.join(cfg.output_dir, "scores.jsonl"),
                       [{**r, "step_scores": [round(x, 6) for x in s]} for r, s in zip(records, scores)])
    mins = [aggregate(s, "min") for s in scores]
    return {"solutions": len(records), "steps_scored": sum(len(s) for s in scores),
            "mean_min_score": round(sum(mins) / max(1, len(mins)), 4)}


def main(argv: list[str] | None = None) -> dict:
    return stage_main("score", ScoreConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
