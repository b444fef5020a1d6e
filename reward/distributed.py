"""Joining the process group, and every collective of every stage, so that each tensor sits where its
backend wants it.

NCCL (every CUDA machine) reduces only CUDA tensors and raises on a CPU one; gloo (CPU ranks) the other
way round. A metric built on the CPU and all-reduced directly works in the CPU tests and fails before
the first update on GPUs: these helpers move it to the rank's device and back. Outside a process group
(a plain one-process stage) they are the identity.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port nobody listens on now (for a rendezvous on this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device of this process, DeepSpeed's process group joined (NCCL on GPUs,
    gloo on CPU); a plain `python -m rl.ppo` becomes a world of one."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():  # before the process group: NCCL's first collective uses the current GPU
        torch.cuda.set_device(local)
    elif os.environ["WORLD_SIZE"] == "1":
        # DeepSpeed's CPU backend compiles a shared-memory all-reduce op (deepspeed_shm_comm) when it joins,
        # 30-40 s of C++ at the first run of every environment, for collectives a world of one never makes.
        # Marked incompatible it is skipped (deepspeed.ops keeps this dict: an edit persists).
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")  # once; then a no-op
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank, world, torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def collective_device(backend: str) -> torch.device:
    """Where a tensor must be for `backend`: the rank's current GPU for NCCL, the CPU otherwise."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `values` (any device, any float dtype), returned on the CPU."""
    if not active():
        return values.detach().cpu()
    out = values.detach().to(collective_device(dist.get_backend()))
    dist.all_reduce(out)
    return out.cpu()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order: for results of different sizes per rank.
    torch moves the pickled bytes to the current CUDA device under NCCL (set_device must have run)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()
