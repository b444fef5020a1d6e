"""The GPU path on one CUDA GPU: NCCL, bf16, ZeRO-3 (`make test-gpu`; skipped where there is no GPU).

What a CPU run cannot show: collectives under NCCL (a CPU tensor there raises), bf16 engines, the
four PPO models as ZeRO-3 engines with a PRM scoring rollouts, reward-model training under ZeRO-3
with LoRA and gradient checkpointing, and vLLM rollouts when vLLM is installed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import REPO

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make test-gpu)")]

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ZERO3 = str(REPO / "configs/deepspeed/zero3.json")


def deepspeed_one_gpu(module: str, *args: str, timeout: int = 900) -> str:
    """`deepspeed --num_gpus 1 --module MODULE ...`: a NCCL world of one, as a user launches it."""
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "1", "--module", module, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def ppo_args(world: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / "configs/experiments/arith_tiny.yaml"), "arm=prm", f"policy={world / 'policy'}",
            f"reward.model={world / 'policy'}", f"output_dir={out}", f"deepspeed={ZERO3}", "ppo.updates=2",
            "ppo.prompts_per_update=8", "ppo.samples_per_prompt=4", "ppo.minibatch_size=16", "ppo.max_new_tokens=32",
            "train_problems=16", "eval_every=1", "eval_problems=8", "eval_samples=2", "final_eval_problems=8",
            "final_eval_samples=2", "checkpoint_every=2", *extra]


def test_nccl_collectives_take_cpu_tensors():
    """The helper every stage's collectives go through, under NCCL (a world of one on this GPU)."""
    import torch.distributed as dist

    from reward import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("SHEPHERD_TEST_PORT", "29533"))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        assert distributed.all_reduce_sum(torch.tensor([1.0, 2.0], dtype=torch.float64)).tolist() == [1.0, 2.0]
        assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    finally:
        dist.destroy_process_group()


def test_ppo_zero3_bf16_with_a_prm_engine(tiny_world, tmp_path):
    """Actor, critic, reference and PRM as bf16 ZeRO-3 engines on NCCL; evaluation and log rows reduced
    every update; the best update kept and restored; gradient checkpointing on."""
    out = tmp_path / "ppo"
    deepspeed_one_gpu("rl.ppo", *ppo_args(tiny_world, out, "ppo.gradient_checkpointing=true",
                                          "best_metric=accuracy_t1"))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2] and all("eval/accuracy_t1" in r for r in rows)
    assert 0 < rows[0]["reward/score"] < 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 1 and "accuracy_t1" in metrics
    env = json.loads((out / "environment.json").read_text())
    assert env["gpu"], env


def test_train_prm_zero3_lora_gradient_checkpointing(tiny_samples, tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM

    from reward.annotate import main as annotate_main

    labels = tmp_path / "ann"
    annotate_main([f"input={tiny_samples}", f"output_dir={labels}", "n_completions=2", "task.min_ops=3",
                   "task.max_ops=5"])
    out = tmp_path / "prm"
    deepspeed_one_gpu("reward.train", "--config", str(REPO / "configs/experiments/arith_tiny.yaml"), "kind=prm",
                      f"data={labels / 'stepwise.jsonl'}", f"init={tiny_world / 'policy'}", f"output_dir={out}",
                      f"train.deepspeed={ZERO3}", "train.gradient_checkpointing=true", "lora.enabled=true",
                      "lora.r=4", "train.steps=4", "train.batch_size=4", "train.warmup_steps=1", "val_share=0.25")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 4 and "val_tag_accuracy" in metrics
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert not any("lora" in name for name in model.state_dict())


def test_ppo_vllm_rollouts_on_the_gpu(tiny_world, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "ppo"
    deepspeed_one_gpu("rl.ppo", *ppo_args(tiny_world, out, "generation.backend=vllm",
                                          "generation.vllm_gpu_memory_utilization=0.2",
                                          f"deepspeed={REPO / 'configs/deepspeed/zero2.json'}"))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["response/length"] > 0
