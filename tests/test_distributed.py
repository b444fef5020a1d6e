"""The multi-rank plumbing that a GPU node needs and a CPU can still check: collectives through one
helper, ZeRO-3 loading and the critic's head on 2 gloo ranks, the launch scripts' DeepSpeed config."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from reward import distributed

from .conftest import REPO

COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "reduce",
               "reduce_scatter", "gather", "scatter", "all_to_all"}


def test_every_collective_goes_through_the_device_helper():
    """NCCL rejects CPU tensors: a stage that calls torch.distributed's collectives itself (as PPO's
    evaluation counts, KL stop and log row once did) fails on GPUs before its first update."""
    offenders = []
    for path in sorted((REPO / "reward").rglob("*.py")) + sorted((REPO / "rl").rglob("*.py")):
        if path.name == "distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            owner = getattr(node, "value", None)
            owner = getattr(owner, "attr", None) or getattr(owner, "id", None)  # torch.distributed.X or dist.X
            if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES and owner in ("distributed", "dist"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed") and \
                    COLLECTIVES & {a.name for a in node.names}:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} import")
    assert not offenders, offenders


def test_helpers_outside_a_process_group_are_the_identity():
    assert distributed.world() == (0, 1)
    x = torch.tensor([1.5, 2.0])
    assert torch.equal(distributed.all_reduce_sum(x), x)
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.collective_device("gloo") == torch.device("cpu")


def test_zero3_on_two_ranks_partitions_loads_and_zeroes_the_critic_head(tiny_world, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", str(REPO / "tests/zero3_checks.py"),
           str(tiny_world / "policy"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for seen in ranks:
        assert seen["world"] == 2 and seen["sum"] == [3.0] and seen["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert seen["head_local_numel"] == 0  # partitioned: a placeholder outside the gather
        assert seen["head_shape"][0] == 1 and seen["head_abs_sum"] == 0.0  # zeroed where it lives
        assert seen["rm_partitioned"] and seen["rm_local_numel"] == 0  # never the whole model on a rank
        assert seen["rm_shard_numel"] <= seen["rm_full_numel"] // 2 + seen["rm_params"]  # half each (+ rounding)
    assert sum(s["rm_shard_numel"] for s in ranks) >= ranks[0]["rm_full_numel"]


def launched_args(script: str, tmp_path: Path, **env: str) -> list[str]:
    """The arguments a launch script hands the `deepspeed` launcher (a stand-in that prints them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "deepspeed"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(["bash", str(REPO / script), "EXP.yaml", "seed=1"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PATH": path, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_launch_scripts_keep_the_experiments_deepspeed_config_unless_told(tmp_path):
    for script in ("launch/train_prm.sh", "launch/train_orm.sh", "launch/ppo.sh"):
        plain = launched_args(script, tmp_path)
        assert "EXP.yaml" in plain and "seed=1" in plain
        assert not any("deepspeed=" in a for a in plain), (script, plain)  # the experiment's ZeRO stage stands
        forced = launched_args(script, tmp_path, DS_CONFIG="configs/deepspeed/zero3.json")
        key = "deepspeed" if script.endswith("ppo.sh") else "train.deepspeed"
        assert f"{key}=configs/deepspeed/zero3.json" in forced, (script, forced)
