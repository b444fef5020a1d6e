"""Right padding of token lists into one batch, shared by the collators and the scoring passes."""
from __future__ import annotations

from typing import Sequence

import torch


def right_pad(rows: Sequence[Sequence[float]], value: float, dtype: torch.dtype = torch.long
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A [len(rows), longest] tensor filled with `value` past each row's end, and the attention mask."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
        mask[i, : len(r)] = 1
    return out, mask
