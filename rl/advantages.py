"""Critic-free advantages from step rewards (`ppo.advantage=grpo|rloo`; `gae` with a critic is
`rl.losses.gae`). Written here: GRPO and RLOO in TRL and OpenRLHF take one scalar reward per response,
and the point of a PRM is a reward at every step.

Inputs are one update's rollouts on a [B, R] response grid, grouped by prompt (`group` consecutive rows
are the samples of one prompt), with the task rewards already placed (`rl.rewards`: each step's reward
at its last token, the outcome at the last token) and `positions` marking where rewards sit.

1. Baseline (RLOO with `baseline=token`, PURE's per-token baseline): from the reward at each position,
   subtract the other samples' mean reward per token times the tokens that reward covers (since the
   previous position), so that fewer, longer steps earn nothing by themselves.
2. Credit: each token's return is the reward from its own step on, `sum` (sum of the rewards at and
   after it) or `min` (PURE's min-form: the smallest of them, so one bad step bounds every step before it).
3. Group: `grpo` normalises returns by the mean and std of the group's returns at its reward positions
   (each step once); `rloo` with `baseline=mean` subtracts the mean total return of the other samples.
   With outcome rewards only (ORM, rule) both are the textbook estimators.
"""
from __future__ import annotations

import torch

ESTIMATORS = ("gae", "grpo", "rloo")
CREDITS = ("sum", "min")
BASELINES = ("mean", "token")


def returns_to_go(rewards: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, credit: str) -> torch.Tensor:
    """Per token, the return from its step on: the sum, or the min, of the rewards at positions >= t."""
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    seen = torch.zeros(rewards.shape[0], dtype=torch.bool)
    for t in reversed(range(rewards.shape[1])):
        here = positions[:, t].bool()
        if credit == "sum":
            running = running + rewards[:, t] * mask[:, t]
        else:
            running = torch.where(here & seen, torch.minimum(running, rewards[:, t]), torch.where(here, rewards[:, t], running))
            seen = seen | here
        out[:, t] = running
    return out * mask


def token_baseline(rewards: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, group: int) -> torch.Tensor:
    """PURE's RLOO baseline: each reward minus the other samples' reward per token times the tokens it covers."""
    per_sample, lengths = (rewards * mask).sum(1).view(-1, group), mask.sum(1).view(-1, group)
    others = (per_sample.sum(1, keepdim=True) - per_sample) / (lengths.sum(1, keepdim=True) - lengths).clamp(min=1)
    covered = torch.zeros_like(rewards)
    start = torch.zeros(rewards.shape[0])
    for t in range(rewards.shape[1]):
        here = positions[:, t].bool()
        covered[:, t] = torch.where(here, t + 1 - start, torch.zeros(()))
        start = torch.where(here, torch.full_like(start, t + 1), start)
    return (rewards - others.reshape(-1, 1) * covered) * mask


def group_advantages(rewards: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, group: int, estimator: str,
                     credit: str = "sum", baseline: str = "mean", eps: float = 1e-6) -> torch.Tensor:
    """[B, R] advantages of `grpo` or `rloo` (see the module docstring); rows come in groups of `group`."""
    if rewards.shape[0] % group or group < 2:
        raise ValueError(f"{rewards.shape[0]} rollouts do not split into groups of {group} (>= 2) samples")
    positions = positions * mask
    if estimator == "rloo" and baseline == "token":
        return returns_to_go(token_baseline(rewards, positions, mask, group), positions, mask, credit)
    returns = returns_to_go(rewards, positions, mask, credit)
    if estimator == "grpo":
        at = positions.view(-1, group, rewards.shape[1])
        values = returns.view(-1, group, rewards.shape[1])
        n = at.sum((1, 2)).clamp(min=1)
        mean = (values * at).sum((1, 2)) / n
        std = (((values - mean[:, None, None]) ** 2) * at).sum((1, 2)).div(n).sqrt()
        return ((values - mean[:, None, None]) / (std[:, None, None] + eps)).view_as(returns) * mask
    total = returns[:, 0].view(-1, group)  # each sample's whole return (the first token's)
    others = (total.sum(1, keepdim=True) - total) / (group - 1)
    return (returns - others.reshape(-1, 1)) * mask
