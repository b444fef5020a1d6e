"""PPO checkpoints: both engines (weights, optimisers, schedulers, ZeRO shards), per-rank RNG and the
run's state, so that `resume=true` finishes a killed run with the same updates; and the best update's
actor for `best_metric`."""
from __future__ import annotations

import json
import os
import random
import shutil
from typing import Any

import numpy as np
import torch

from reward.io import write_json


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])


def save_checkpoint(root: str, update: int, actor: Any, critic: Any, state: dict[str, Any], rank: int) -> None:
    """Engines (weights, optimiser, ZeRO shards) and per-rank RNG, then `latest.json` last: a kill
    mid-save leaves the previous checkpoint in charge. Older checkpoints go only after that, and the
    best update's actor (`state["best"]`) stays."""
    path = os.path.join(root, f"update_{update:05d}")
    actor.save_checkpoint(path, tag="actor", client_state=state, save_latest=False)
    if critic is not None:  # grpo / rloo train no critic
        critic.save_checkpoint(path, tag="critic", save_latest=False)
    torch.save(rng_state(), os.path.join(path, f"rng_rank{rank}.pt"))
    torch.distributed.barrier()
    if rank == 0:
        write_json(os.path.join(root, "latest.json"), {"update": update, "path": path})
        keep = {path, state.get("best", {}).get("path")}
        for old in os.listdir(root):
            if old.startswith(("update_", "best_")) and os.path.join(root, old) not in keep:
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    torch.distributed.barrier()


def save_best(root: str, update: int, value: float, actor: Any) -> dict[str, Any]:
    """The actor of a new best update (engine checkpoint: the same ZeRO-2/3 and LoRA handling as resume);
    it becomes `state["best"]` and so survives a resume once the next checkpoint records it."""
    path = os.path.join(root, f"best_{update:05d}")
    actor.save_checkpoint(path, tag="actor", save_latest=False)
    torch.distributed.barrier()
    return {"update": update, "value": value, "path": path}


def load_checkpoint(root: str, actor: Any, critic: Any, rank: int) -> dict[str, Any] | None:
    latest = os.path.join(root, "latest.json")
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        path = json.load(f)["path"]
    _, state = actor.load_checkpoint(path, tag="actor")
    if critic is not None:
        critic.load_checkpoint(path, tag="critic")
    set_rng_state(torch.load(os.path.join(path, f"rng_rank{rank}.pt"), weights_only=False))
    return state
