"""Reward-model training under DeepSpeed ZeRO with the real launcher: 2 gloo ranks on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from reward.config import load_config
from reward.train import RewardTrainConfig, read_examples, split_by_problem, validation_metrics

from .conftest import REPO


@pytest.fixture(scope="module")
def stepwise(tiny_samples, tmp_path_factory) -> Path:
    from reward.annotate import main as annotate_main

    out = tmp_path_factory.mktemp("ann")
    annotate_main([f"input={tiny_samples}", f"output_dir={out}", "n_completions=2", "task.min_ops=3", "task.max_ops=5"])
    return out / "stepwise.jsonl"


@pytest.mark.parametrize("ds_config,extra", [
    ("zero2.json", []), ("zero3.json", []),
    # the offload config with the torch AdamW the Trainer builds, LoRA folded from ZeRO-3 shards, checkpointing
    ("zero3_offload.json", ["lora.enabled=true", "lora.r=4", "train.gradient_checkpointing=true", "train.lr=1e-2"]),
])
def test_two_rank_zero_training_finishes_and_loads(ds_config, extra, stepwise, tiny_world, tmp_path):
    """Through the user's launch script (no GPU here: it starts 2 gloo ranks). Validation runs sharded on
    the ranks' own engines: its figures equal one process scoring the saved model on the same problems."""
    out = tmp_path / "rm"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NUM_GPUS": "2",
           "DS_CONFIG": str(REPO / "configs/deepspeed" / ds_config),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = ["bash", str(REPO / "launch/train_prm.sh"), str(REPO / "configs/experiments/arith_tiny.yaml"),
           f"data={stepwise}", f"init={tiny_world / 'policy'}", f"output_dir={out}",
           "train.steps=4", "train.batch_size=4", "train.warmup_steps=1", "train.logging_steps=1", "val_share=0.25", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 4 and metrics["world_size"] == 2 and "val_tag_accuracy" in metrics
    model = AutoModelForCausalLM.from_pretrained(out / "model")  # gathered, plain safetensors
    policy = AutoModelForCausalLM.from_pretrained(tiny_world / "policy")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in policy.parameters())
    assert not all((a == b).all() for a, b in zip(model.parameters(), policy.parameters()))  # it trained
    assert not any("lora" in name for name in model.state_dict())  # adapters folded into plain weights
    config = load_config(RewardTrainConfig, "train-prm", cmd[2], cmd[3:])
    examples = read_examples(str(stepwise), "prm", config.label_type, config.label_scope)
    _, val = split_by_problem(examples, config.val_share, config.seed)
    alone = validation_metrics(model, AutoTokenizer.from_pretrained(out / "model"), val, config.max_length)
    assert metrics["val_tags"] == alone["val_tags"] > 0  # every problem counted once, padding rows not
    assert metrics["val_tag_auc"] == pytest.approx(alone["val_tag_auc"], abs=0.02, nan_ok=True)
