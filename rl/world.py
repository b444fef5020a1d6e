"""`shepherd world`: build the embedded world (tokenizer, a tiny Llama trained from scratch by SFT on
arith solutions, its accuracy), so the whole method runs with no GPU and no model hub."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from transformers import LlamaConfig, PreTrainedTokenizerFast

from reward.config import GenerationConfig, StageConfig
from reward.errors import ShepherdError
from reward.io import write_jsonl_atomic
from reward.stage import stage_main
from reward.tasks import HELD_OUT_SEED, load_task
from reward.training import TrainConfig
from rl.evaluate import evaluate_policy
from rl.sft import ModelConfig, train_sft
from rl.tokenizer import build_tokenizer

def tiny_llama_config(tokenizer: PreTrainedTokenizerFast, m: ModelConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, num_key_value_heads=m.num_heads, intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_positions, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def save_random_policy(folder: str, model: ModelConfig | None = None, seed: int = 0) -> str:
    """An untrained model of the world's shape with its tokenizer: for tests and speed benchmarks,
    whose figures do not depend on the weights."""
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(tiny_llama_config(tok, model or ModelConfig())).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@dataclass
class WorldConfig(StageConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval_split: str = "test"
    eval_problems: int = 500
    eval_samples: int = 4  # samples per problem at T=1 (accuracy_t1 and maj@k)


def run(cfg: DictConfig) -> dict:
    task = load_task(cfg.task)
    if task.name != "arith":
        raise ShepherdError("the embedded world is built on the arith task (key task.name)")
    policy_dir = os.path.join(cfg.output_dir, "policy")
    tokenizer = build_tokenizer()
    start = time.time()
    train_stats = train_sft(cfg, task, tokenizer, model_cfg=tiny_llama_config(tokenizer, cfg.model),
                            init="", out_dir=policy_dir)
    train_seconds = time.time() - start
    problems = task.problems(cfg.eval_split, cfg.eval_problems, seed=HELD_OUT_SEED)
    write_jsonl_atomic(os.path.join(cfg.output_dir, f"{cfg.eval_split}.jsonl"),
                       [{"id": p.id, "question": p.question, "gold": p.gold, **p.meta} for p in problems])
    metrics = evaluate_policy(policy_dir, task, problems, cfg.generation, cfg.eval_samples, 1.0, cfg.seed,
                              out_path=os.path.join(cfg.output_dir, "eval_samples.jsonl"))
    return {**metrics, **train_stats, "train_seconds": round(train_seconds, 1)}


def main(argv: list[str] | None = None) -> dict:
    return stage_main("world", WorldConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
