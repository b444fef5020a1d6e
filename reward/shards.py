"""Chunked, resumable jsonl output shared by data-parallel ranks (`shepherd sample`, `shepherd annotate`).

A stage splits its work into fixed chunks; chunk c is done whole, with a seed that depends on c only, and
appended whole to a jsonl file. One process appends to the output file itself. Under the `deepspeed`
launcher (WORLD_SIZE > 1) rank r takes every W-th chunk still to do and appends to its own file
`<output>.rank<r>`; at the end rank 0 merges every file into the output in chunk order, so the output is
the same record for record as a one-process run's. A killed run (any number of ranks) leaves whole
chunks, a partial chunk and perhaps a torn line in some files: the next run, with any number of ranks,
keeps each chunk that is whole in one file, drops the rest and does it again.
"""
from __future__ import annotations

import datetime
import glob
import os
from typing import Any

from reward.io import append_jsonl, read_jsonl_resumable, write_jsonl_atomic

# A rank with no chunks left waits at a barrier while the others label, possibly for hours (gloo's
# default is 30 minutes). The deepspeed launcher stops every rank when one fails, so nothing hangs.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


def data_parallel_rank() -> tuple[int, int]:
    """(rank, world size). Under a launcher: joins a gloo group (barriers and sums only) and makes this
    rank's GPU (LOCAL_RANK) the current one, where `generation.device=auto` then loads the model."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


class ChunkedJsonl:
    """The output file of a chunked stage; `chunks` lists each chunk's ids (record field `key`, each
    present `per_id` times in a whole chunk)."""

    def __init__(self, path: str, chunks: list[list[str]], per_id: int = 1, key: str = "id") -> None:
        self.path, self.chunks, self.per_id, self.key = path, chunks, per_id, key
        self.chunk_of = {i: c for c, ids in enumerate(chunks) for i in ids}
        self.rank, self.world = data_parallel_rank()
        self.own_file = path if self.world == 1 else f"{path}.rank{self.rank}"

    def todo(self) -> list[int]:
        """This rank's share of the chunks not yet done (rank 0 first merges what earlier runs left)."""
        if self.rank == 0:
            self._merge()
        self._barrier()
        done = self._whole_chunks(read_jsonl_resumable(self.path))
        return [c for c in range(len(self.chunks)) if c not in done][self.rank::self.world]

    def append(self, records: list[dict[str, Any]]) -> None:
        """One whole chunk's records, flushed to this rank's file."""
        append_jsonl(self.own_file, records)

    def finish(self) -> list[dict[str, Any]]:
        """Wait for every rank, merge into the output in chunk order; every record, on every rank."""
        self._barrier()
        if self.rank == 0:
            self._merge()
        self._barrier()
        return read_jsonl_resumable(self.path)

    def sum(self, value: int) -> int:
        """`value` summed over the ranks (counts that each rank keeps for its own chunks)."""
        import torch

        from reward.distributed import all_reduce_sum

        return int(all_reduce_sum(torch.tensor([value], dtype=torch.long)).item())

    def _whole_chunks(self, records: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
        """The chunks whose every id appears exactly `per_id` times in `records` (in their order)."""
        by_chunk: dict[int, list[dict[str, Any]]] = {}
        for r in records:
            c = self.chunk_of.get(r[self.key])
            if c is not None:
                by_chunk.setdefault(c, []).append(r)
        whole = {}
        for c, recs in by_chunk.items():
            counts: dict[str, int] = {}
            for r in recs:
                counts[r[self.key]] = counts.get(r[self.key], 0) + 1
            if all(counts.get(i, 0) == self.per_id for i in self.chunks[c]):
                whole[c] = recs
        return whole

    def _merge(self) -> None:
        """The output rewritten with every chunk whole in one of the files, in chunk order; rank files removed."""
        rank_files = sorted(glob.glob(glob.escape(self.path) + ".rank*"))
        current = read_jsonl_resumable(self.path)
        whole = self._whole_chunks(current)
        for f in rank_files:
            for c, recs in self._whole_chunks(read_jsonl_resumable(f)).items():
                whole.setdefault(c, recs)
        merged = [r for c in sorted(whole) for r in whole[c]]
        if merged != current:
            write_jsonl_atomic(self.path, merged)
        for f in rank_files:
            os.remove(f)

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
