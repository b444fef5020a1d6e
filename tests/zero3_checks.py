"""Run by tests/test_distributed.py on 2 gloo ranks (the `deepspeed` launcher): ZeRO-3 facts one process
cannot show. Each rank writes what it saw to OUT/rank<N>.json.

    deepspeed --num_gpus 2 tests/zero3_checks.py POLICY_FOLDER OUT_FOLDER
"""
import json
import os
import sys

import deepspeed
import torch

from reward import distributed
from reward.generation import load_causal_lm
from reward.training import TrainConfig, training_arguments
from rl import engines
from rl.ppo import load_critic

ZERO3 = os.path.join(os.path.dirname(__file__), "..", "configs", "deepspeed", "zero3.json")


def main(policy: str, out: str) -> None:
    rank, world, device = engines.init_distributed()
    seen = {"world": world,
            "sum": distributed.all_reduce_sum(torch.tensor([rank + 1.0], dtype=torch.float64)).tolist(),
            "gathered": distributed.all_gather_objects({"rank": rank})}
    # The critic: partitioned at load, and its value head zero on every rank once gathered
    cfg = engines.ds_config(ZERO3, 4, 1.0, world, train=True)
    critic = engines.build(lambda: load_critic(policy), cfg, 1e-3, device)
    head = critic.module.score
    seen["head_local_numel"] = head.weight.numel()
    with deepspeed.zero.GatheredParameters(list(head.parameters())):
        seen["head_shape"] = list(head.weight.shape)
        seen["head_abs_sum"] = float(head.weight.abs().sum())
    # Reward-model training: the arguments come first, so from_pretrained loads this rank's shards only
    args = training_arguments(TrainConfig(deepspeed=ZERO3, steps=1), out, 0)  # noqa: F841 (keeps the config alive)
    model = load_causal_lm(policy, "init", device="cpu")
    params = list(model.parameters())
    seen["rm_partitioned"] = all(hasattr(p, "ds_id") for p in params)
    seen["rm_local_numel"] = sum(p.numel() for p in params)
    seen["rm_shard_numel"] = sum(p.ds_tensor.numel() for p in params)
    seen["rm_full_numel"] = sum(p.ds_numel for p in params)
    seen["rm_params"] = len(params)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    distributed.barrier()


if __name__ == "__main__":
    main(*[a for a in sys.argv[1:] if not a.startswith("--local_rank")])
