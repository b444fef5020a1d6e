"""Reward placement for PPO: which reward lands on which response token.

- `prm`: the PRM's score of step k at the last token of step k (dense step rewards), shaped:
  `delta` (p_k - p_{k-1}, p_0 = delta_base: sums to p_last - p_0, so piling up steps earns nothing;
  the default, because a raw or centred per-step reward taught a policy here to skip steps and break
  format), `clip` (min(p_k - threshold, 0): a step can only cost, after Gao et al. 2024) or `none`;
  `prefix_min` first replaces p_k by min(p_1..p_k) (a PRM that judges steps one at a time);
- `prm_min`: min-form credit assignment (PURE, Cheng et al. 2025): step k gets p_k * softmin weight,
  so the return is the soft minimum of the step scores;
- `orm`: the ORM's score (its last tag) at the last token;
- `rule`: 1/0 for the gold answer at the last token.
`model: oracle` (arith) scores steps with the task's oracle instead of a reward model: 1 before the
first wrong step, 0 from it on, the scores a perfect first-error PRM would give, so that a run
measures what step-by-step PPO gains with no verifier error (the ceiling a learned PRM aims at).
Every type adds `rule_weight` x the rule reward (a weighted sum of process and outcome reward), a
penalty for a rollout without a final answer or with broken format, `empty_step_penalty` for each
empty or whitespace-only step (a policy paid per step can pad with them: PURE's verl port collapsed to
empty outputs), and a per-token KL penalty.

The reward model may use another tokenizer and step tag than the policy: steps are split from the
rollout's text, written in the reward model's own format (`format`: ours, or the released
math-shepherd-mistral-7b-prm's), scored with its own tokenizer, and each step's reward lands on the
policy token where the step's text ends. Written here because TRL's PPO adds one scalar at the
last token and has no hook for step rewards.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from reward.errors import ShepherdError
from reward.adapters import AdapterSettings
from reward.formats import TAGGED, check_format
from reward.tasks import first_error_labels
from rl.losses import kl_estimate

TYPES = ("prm", "prm_min", "orm", "rule")
ORACLE = "oracle"  # reward.model: the task's oracle scores the steps
SHAPINGS = ("delta", "clip", "none")


@dataclass
class RewardConfig(AdapterSettings):  # step_tag, separator, label_tokens: the reward model's convention
    type: str = "prm"  # prm | prm_min | orm | rule
    model: str = ""  # reward-model folder (prm, prm_min, orm), or `oracle` (arith: the oracle's step labels)
    format: str = TAGGED  # the reward model's convention (reward.adapters): tagged | math-shepherd | qwen-prm | separator
    shaping: str = "delta"  # prm: delta | clip | none
    delta_base: float = 0.5  # delta: the score before the first step
    clip_threshold: float = 0.5  # clip: step reward min(p - threshold, 0)
    # Score of step k = min(p_1..p_k) before shaping: for a PRM trained with label_scope=first_error,
    # which judges each step as if the steps before it were right (a wrong step then stays wrong).
    prefix_min: bool = False
    min_temperature: float = 0.1  # prm_min: softmin temperature over a rollout's step scores
    process_weight: float = 1.0  # weight of the reward model's rewards
    rule_weight: float = 0.0  # weight of the 1/0 gold-answer reward added at the last token
    no_answer_penalty: float = -1.0  # at the last token of a rollout with no final answer
    format_penalty: float = -0.5  # at the last token of a rollout with an answer but broken steps
    empty_step_penalty: float = 0.0  # x the rollout's empty or whitespace-only steps, at its last token
    kl_coef: float = 0.02  # per-token KL penalty against the reference policy
    kl_estimator: str = "k1"  # k1 | k3
    normalize: bool = False  # divide task rewards by the batch std of their per-rollout sums
    clip: float = 0.0  # clip each placed task reward to [-clip, clip]; 0: off
    score_batch_size: int = 64
    max_length: int = 1024


def check_config(cfg: Any, has_oracle: bool) -> None:
    if cfg.type not in TYPES:
        raise ShepherdError(f"unknown reward type '{cfg.type}' (key reward.type); use one of {', '.join(TYPES)}")
    if cfg.shaping not in SHAPINGS:
        raise ShepherdError(f"unknown shaping '{cfg.shaping}' (key reward.shaping); use one of {', '.join(SHAPINGS)}")
    check_format(cfg.format, "reward.format")
    if cfg.kl_estimator not in ("k1", "k3"):
        raise ShepherdError(f"unknown KL estimator '{cfg.kl_estimator}' (key reward.kl_estimator); use k1 or k3")
    if cfg.type != "rule" and not cfg.model:
        raise ShepherdError(f"reward.type={cfg.type} needs a reward model folder (key reward.model)")
    if cfg.model == ORACLE and not has_oracle:
        raise ShepherdError("reward.model=oracle needs a task whose oracle knows the first wrong step (task.name=arith)")


def shape_step_scores(scores: Sequence[float], cfg: Any) -> list[float]:
    """Per-step rewards from a rollout's step scores, by `type` (prm, prm_min) and `shaping`."""
    if not scores:
        return []
    if cfg.type == "prm_min":
        weights = torch.softmax(-torch.tensor(scores, dtype=torch.float64) / cfg.min_temperature, 0)
        return [s * w for s, w in zip(scores, weights.tolist())]
    if cfg.shaping == "delta":
        return [s - p for s, p in zip(scores, [cfg.delta_base, *scores[:-1]])]
    if cfg.shaping == "clip":
        return [min(s - cfg.clip_threshold, 0.0) for s in scores]
    return list(scores)


def step_spans(text: str, steps: Sequence[str]) -> list[int]:
    """Character offset where each step (a stripped line of `text`) ends."""
    ends, cursor = [], 0
    for step in steps:
        start = text.find(step, cursor)
        if start < 0:
            raise ShepherdError(f"step {step!r} not found in the rollout text")
        cursor = start + len(step)
        ends.append(cursor)
    return ends


def token_ends(tokenizer: Any, token_ids: Sequence[int], char_ends: Sequence[int]) -> list[int]:
    """The index of the first policy token whose decoded prefix reaches each character offset.

    Binary search over prefix decodes: exact for any tokenizer whose prefix decodes are prefixes of
    the full text, without re-tokenizing (a re-tokenization need not reproduce sampled ids). A
    byte-level BPE (SmolLM2, Llama 3, Qwen) splits a character such as '₹' or '✓' over several tokens,
    and a prefix that ends inside it decodes as U+FFFD: that character is not reached until its last
    byte (counted as reached, a step ending in one got its reward a token early)."""
    full = tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def reach(i: int) -> int:
        text = tokenizer.decode(list(token_ids[: i + 1]), skip_special_tokens=True)
        while text.endswith("\ufffd") and not full.startswith(text):
            text = text[:-1]
        return len(text)

    out = []
    for end in char_ends:
        lo, hi = 0, len(token_ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if reach(mid) >= end:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out


def empty_steps(text: str, separator: str) -> int:
    """Empty or whitespace-only steps of a response whose steps are joined by `separator` ("\n" or
    "\n\n"): the whole separators of line breaks beyond the one between two steps, and those before
    the first step. Steps are split with empty lines dropped, so these earn no step reward, and are
    counted here so that they can cost one."""
    per = max(1, separator.count("\n"))
    text = text.rstrip()
    count = 0
    for run in re.finditer(r"\s+", text):
        breaks = run.group().count("\n")
        count += breaks // per if run.start() == 0 else max(0, breaks - per) // per
    return count


def place(n_tokens: int, step_ends: Sequence[int], step_rewards: Sequence[float], outcome: float) -> list[float]:
    """One rollout's task rewards: each step's at its last token, the outcome at the last token."""
    rewards = [0.0] * n_tokens
    for pos, r in zip(step_ends, step_rewards):
        rewards[pos] += r
    rewards[n_tokens - 1] += outcome
    return rewards


@dataclass
class Rollout:
    """What the reward needs to know about one sampled response."""

    question: str
    text: str
    token_ids: list[int]  # the response's policy tokens (EOS included when it stopped there)
    steps: list[str]
    correct: bool
    has_answer: bool
    well_formed: bool
    first_error: int | None = None  # the oracle's first wrong step (arith), None when all are right
    empty_steps: int = 0  # `empty_steps` of its text


def oracle_step_scores(rollout: Rollout) -> list[float]:
    """The oracle's step labels as scores: a perfect first-error PRM."""
    return [float(label) for label in first_error_labels(len(rollout.steps), rollout.first_error)]


def rollout_rewards(rollout: Rollout, cfg: Any, tokenizer: Any, step_scores: Sequence[float] | None
                    ) -> tuple[list[float], dict[str, float]]:
    """Task rewards (no KL) for every token of one rollout, and what went into them."""
    rule = float(rollout.correct)
    penalty = 0.0 if rollout.well_formed else cfg.format_penalty if rollout.has_answer else cfg.no_answer_penalty
    penalty += cfg.empty_step_penalty * rollout.empty_steps
    outcome = cfg.rule_weight * rule + penalty
    step_rewards: list[float] = []
    ends: list[int] = []
    score = rule if cfg.type == "rule" else 0.0  # the reward's own score (a PRM gives none to a rollout without steps)
    if cfg.type == "rule":
        outcome += rule
    elif cfg.type == "orm":
        score = step_scores[-1] if step_scores else 0.0
        outcome += cfg.process_weight * score
    elif step_scores:
        if cfg.prefix_min:
            step_scores = [min(step_scores[: k + 1]) for k in range(len(step_scores))]
        score = min(step_scores)
        step_rewards = [cfg.process_weight * r for r in shape_step_scores(step_scores, cfg)]
        ends = token_ends(tokenizer, rollout.token_ids, step_spans(rollout.text, rollout.steps[: len(step_scores)]))
    rewards = place(len(rollout.token_ids), ends, step_rewards, outcome)
    if cfg.clip > 0:
        rewards = [max(-cfg.clip, min(cfg.clip, r)) for r in rewards]
    return rewards, {"score": score, "penalty": penalty, "ends": ends}


def with_kl(task_rewards: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
            cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Total per-token reward = task reward - kl_coef x KL estimate; returns it and the KL."""
    kl = kl_estimate(logp, ref_logp, cfg.kl_estimator) * mask
    return (task_rewards - cfg.kl_coef * kl) * mask, kl


def normalize_task_rewards(task_rewards: torch.Tensor) -> torch.Tensor:
    """Scale by the std of per-rollout returns: keeps the sign and placement of every reward."""
    std = task_rewards.sum(1).std() if task_rewards.shape[0] > 1 else torch.tensor(1.0)
    return task_rewards / (std if math.isfinite(float(std)) and float(std) > 1e-6 else 1.0)
