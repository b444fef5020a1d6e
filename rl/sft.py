"""`shepherd sft`: supervised fine-tuning on step-by-step solutions, loss on the solution tokens only.

Runs on the HF Trainer (DeepSpeed through `train.deepspeed=configs/deepspeed/zero2.json`). Builds the
embedded world's policy from scratch and is stage 0 for a real model on GSM8K reference solutions.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, PretrainedConfig, Trainer

from reward.batching import right_pad
from reward.config import StageConfig
from reward.errors import ShepherdError
from reward.generation import load_causal_lm, load_tokenizer
from reward.io import read_jsonl
from reward.stage import stage_main
from reward.training import TrainConfig, save_trained, tensorboard_callback, training_arguments
from reward.tasks import Task, load_task


@dataclass
class ModelConfig:
    """Shape of a model trained from scratch (the embedded world's tiny Llama)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 256


@dataclass
class SFTConfig(StageConfig):
    init: str = ""  # model folder to fine-tune
    data: str = ""  # jsonl of {"question", "solution"}; empty: the task's own training solutions
    train: TrainConfig = field(default_factory=TrainConfig)


def training_pairs(task: Task, n: int, seed: int, data: str = "") -> list[tuple[str, str]]:
    """(question, solution) pairs: from a jsonl file, arith's generator, or a dataset's references."""
    if data:
        return [(r["question"], r["solution"]) for r in read_jsonl(data, required=("question", "solution"))]
    if task.name == "arith":
        rng = random.Random(seed)
        return [(p.question, task.sft_solution(p, rng)) for p in task.problems("train", n, seed=seed)]
    problems = task.problems("train")
    if not problems or "solution" not in problems[0].meta:
        raise ShepherdError(f"task '{task.name}' has no reference solutions: give sft.data")
    return [(p.question, p.meta["solution"]) for p in problems]


class SolutionOnlyCollator:
    """Right-pads a batch; labels are -100 on the prompt and the padding, so loss is on the solution."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids, mask = right_pad([r["input_ids"] for r in rows], self.pad_id)
        labels = torch.where(mask.bool(), ids, -100)
        for i, r in enumerate(rows):
            labels[i, : r["prompt_len"]] = -100  # loss on the solution only
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_pairs(task: Task, tokenizer: Any, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    prompts = tokenizer([task.format_prompt(q, tokenizer) for q, _ in pairs])["input_ids"]
    sols = tokenizer([s for _, s in pairs], add_special_tokens=False)["input_ids"]
    return [{"input_ids": p + s + [tokenizer.eos_token_id], "prompt_len": len(p)} for p, s in zip(prompts, sols)]


def train_sft(cfg: DictConfig, task: Task, tokenizer: Any, model_cfg: PretrainedConfig | None, init: str,
              out_dir: str, data: str = "") -> dict[str, float]:
    """Train (from `init`, or from scratch with `model_cfg`) and save a safetensors folder at out_dir."""
    t = cfg.train
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(model_cfg) if model_cfg is not None else load_causal_lm(init, "init")
    rows = encode_pairs(task, tokenizer, training_pairs(task, t.steps * t.batch_size, cfg.seed, data))
    trainer = Trainer(model=model, args=training_arguments(t, cfg.output_dir, cfg.seed), train_dataset=rows,
                      callbacks=[tensorboard_callback(cfg.output_dir)],
                      data_collator=SolutionOnlyCollator(tokenizer.pad_token_id))
    result = trainer.train()
    save_trained(trainer, tokenizer, out_dir)
    return {"train_loss": round(float(result.training_loss), 4), "train_steps": int(result.global_step)}


def run(cfg: DictConfig) -> dict:
    if not cfg.init:
        raise ShepherdError("sft needs a model folder to start from (key init); `shepherd world` trains from scratch")
    task = load_task(cfg.task)
    out_dir = os.path.join(cfg.output_dir, "policy")
    return train_sft(cfg, task, load_tokenizer(cfg.init, "init"), None, cfg.init, out_dir, cfg.data)


def main(argv: list[str] | None = None) -> dict:
    return stage_main("sft", SFTConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
