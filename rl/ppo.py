"""`shepherd ppo`: step-by-step PPO under DeepSpeed ZeRO, the PRM rewarding every step of a rollout.

    shepherd ppo --config configs/experiments/arith_tiny.yaml arm=prm
    deepspeed --num_gpus 8 --module rl.ppo --config configs/experiments/gsm8k_mistral7b.yaml arm=prm

One update, top to bottom (CleanRL's order): sample rollouts from the actor; score them (reward
placement in `rl.rewards`); log-probs of actor and reference, values of the critic; per-token rewards
with the KL penalty; GAE (or, with `ppo.advantage=grpo|rloo`, no critic: step returns compared within
each prompt's samples, `rl.advantages`); several epochs of clipped policy and value losses. Every
`eval_every` updates: greedy and sampled accuracy on a held-out split (with `best_metric`, the best
update's actor is kept and becomes the final policy; with `hacking_patience`, the run stops when the
learned reward rises while that accuracy falls, `rl.hacking`); every `checkpoint_every`: actor, critic,
optimisers, schedulers and RNG, so `resume=true` finishes a killed run with the same number of
updates. The PPO math is in `rl.losses`, the engines in `rl.engines`.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from reward.config import GenerationConfig, StageConfig
from reward.distributed import all_reduce_sum
from reward.errors import ShepherdError
from reward.generation import Generator, HFGenerator, load_causal_lm, load_tokenizer
from reward.generation.base import NO_HUB_KERNELS
from reward.io import append_jsonl, read_jsonl_resumable, write_jsonl_atomic
from reward.adapters import load_reward_model, score_items
from reward.stage import stage_main
from reward.training import enable_checkpointing
from reward.tasks import HELD_OUT_SEED, Problem, Task, load_task
from reward.lora import LoraSettings, apply_lora, folded_weights
from rl import engines
from rl.advantages import BASELINES, CREDITS, ESTIMATORS, group_advantages, returns_to_go
from rl.checkpoint import load_checkpoint, save_best, save_checkpoint
from rl.evaluate import accuracies, accuracy_counts
from rl.hacking import hacking
from rl.losses import entropy_from_logits, gae, masked_mean, policy_loss, value_loss, whiten
from rl.rewards import (ORACLE, RewardConfig, Rollout, check_config, empty_steps, normalize_task_rewards,
                        oracle_step_scores, rollout_rewards, with_kl)


@dataclass
class PPOHyper:
    updates: int = 40
    prompts_per_update: int = 64  # over all ranks
    samples_per_prompt: int = 8
    epochs: int = 2
    minibatch_size: int = 128  # rollouts per optimiser step, per rank
    # rollouts per forward pass, taken in length order so that each is cut to its own longest rollout: the
    # no-grad forwards (old log-probs, reference, values) and, within a minibatch, the forward/backward
    # passes whose gradients one optimiser step sums (accumulation); 0: minibatch_size (one pass)
    micro_batch_size: int = 0
    lr: float = 5e-4
    critic_lr: float = 1e-3
    warmup_steps: int = 0  # optimiser steps of linear warm-up (Adam's first steps are as large as lr in every weight)
    schedule: str = "linear"  # linear | cosine decay of both learning rates to min_lr_ratio over the run
    min_lr_ratio: float = 1.0  # 1.0: constant
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    value_clip: float = 0.2
    entropy_coef: float = 0.0
    max_grad_norm: float = 1.0
    target_kl: float = 0.0  # stop an update's epochs once approx KL passes 1.5x this; 0: off
    whiten_advantages: bool = True
    temperature: float = 1.0
    max_new_tokens: int = 96
    gradient_checkpointing: bool = False  # actor and critic recompute activations in backward (7B: see README)
    # gae: a critic and GAE (rl.losses); grpo | rloo: no critic, step returns compared within the samples
    # of one prompt (rl.advantages; samples_per_prompt >= 2)
    advantage: str = "gae"
    credit: str = "sum"  # grpo / rloo: a step's return is the sum, or the min (PURE), of the rewards from it on
    baseline: str = "mean"  # rloo: mean (the other samples' return) | token (PURE's per-token baseline)
    # No policy gradient on the tokens between steps (line breaks): the policy is pushed neither to nor
    # away from starting a new step (PURE's OpenRLHF port masked the separator; a port that did not
    # collapsed to empty outputs). Rewards, KL and values still count those tokens.
    mask_separator: bool = False


@dataclass
class PPOConfig(StageConfig):
    arm: str = ""  # a name under the experiment file's `arms:`: its overrides go over this section
    policy: str = ""  # the SFT policy folder: actor and reference start here
    critic_init: str = "policy"  # policy | reward | a model folder
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOHyper = field(default_factory=PPOHyper)
    deepspeed: str = "configs/deepspeed/zero2.json"
    lora: LoraSettings = field(default_factory=LoraSettings)  # on the actor; the reference = adapters off
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train_split: str = "train"
    train_problems: int = 20000
    eval_split: str = "val"  # periodic evaluation (never the test split: runs are compared on it)
    eval_every: int = 10
    eval_problems: int = 200
    eval_samples: int = 4
    final_split: str = "test"
    final_eval_problems: int = 500
    final_eval_samples: int = 4
    checkpoint_every: int = 10
    # "": the final policy is the last update's. accuracy_t1 | accuracy_greedy | accuracy_maj<eval_samples>:
    # the update with the highest value of that eval_split metric (HF Trainer's load_best_model_at_end):
    # its actor is checkpointed when it leads and restored before the final evaluation and the saved policy.
    best_metric: str = ""
    # The hacking guard (rl.hacking): stop once, at this many evaluations in a row, validation accuracy
    # (best_metric, else accuracy_t1) fell while the learned reward held or rose; 0: off.
    hacking_patience: int = 0
    resume: bool = False


# ----------------------------------------------------------------------------------- rollouts
@dataclass
class Batch:
    """Rollouts on a [B, R] response grid (R = longest response), plus the full sequences."""

    ids: torch.Tensor  # [B, T] prompt + response, right-padded
    attention: torch.Tensor  # [B, T]
    index: torch.Tensor  # [B, R] position in `ids` whose logits predict response token j
    tokens: torch.Tensor  # [B, R] response tokens
    mask: torch.Tensor  # [B, R] 1 on real response tokens


def make_batch(prompts: list[list[int]], responses: list[list[int]], pad: int, device: torch.device) -> Batch:
    seqs = [p + r for p, r in zip(prompts, responses)]
    width, resp = max(map(len, seqs)), max(1, max(map(len, responses)))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    tokens = torch.full((len(seqs), resp), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), resp))
    for i, (s, r) in enumerate(zip(seqs, responses)):
        ids[i, : len(s)], attention[i, : len(s)] = torch.tensor(s), 1
        if r:
            tokens[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    starts = torch.tensor([len(p) - 1 for p in prompts])[:, None]
    index = (starts + torch.arange(resp)[None]).clamp(max=width - 1)
    return Batch(*(t.to(device) for t in (ids, attention, index, tokens, mask)))


def rows(batch: Batch, idx: torch.Tensor) -> Batch:
    """The rows `idx`, cut to the longest sequence among them: the padding that only other rows needed
    costs no forward or backward (the response grid keeps its width; its padded slots stay masked)."""
    width = int(batch.attention[idx].sum(1).max())
    return Batch(batch.ids[idx, :width], batch.attention[idx, :width], batch.index[idx].clamp(max=width - 1),
                 batch.tokens[idx], batch.mask[idx])


def by_length(batch: Batch, idx: torch.Tensor) -> torch.Tensor:
    """`idx` ordered by sequence length (shortest first), so that consecutive rows pad little."""
    return idx[batch.attention[idx].sum(1).argsort(stable=True)]


def at_response(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] -> [B, R, ...]: the entries at each response token's predicting position."""
    idx = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, idx)


def actor_forward(model: Any, b: Batch, temperature: float, entropy: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens under the sampling temperature (and the entropy)."""
    logits = at_response(model(input_ids=b.ids, attention_mask=b.attention).logits, b.index).float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, b.tokens[..., None])[..., 0]
    return logp, entropy_from_logits(logits) if entropy else None


def critic_forward(model: Any, b: Batch) -> torch.Tensor:
    return at_response(model(input_ids=b.ids, attention_mask=b.attention).logits[..., 0].float(), b.index)


@torch.no_grad()
def in_chunks(fn: Any, b: Batch, size: int) -> torch.Tensor:
    """fn over chunks of `size` rows taken in length order (each chunk cut to its own longest row), put
    back in the batch's order."""
    order = by_length(b, torch.arange(len(b.ids), device=b.ids.device))
    out = torch.cat([fn(rows(b, order[i: i + size])) for i in range(0, len(order), size)])
    return out[order.argsort()]


def prompt_ids(generator: Generator, prompt: str) -> list[int]:
    enc = generator.encode([prompt])  # HF: a left-padded batch; vLLM: lists of ids
    return [int(t) for t in (enc["input_ids"][0] if isinstance(enc, Mapping) else enc[0])]


def build_generator(cfg: DictConfig, actor: Any, tokenizer: Any, zero3: bool, world: int, rank: int) -> Generator:
    """Rollouts from the actor itself (HF generate; under ZeRO-3 every rank joins every forward) or from
    a vLLM engine per rank that holds its own copy of the weights (`sync_rollout_weights` after updates)."""
    p = cfg.ppo
    if cfg.generation.backend == "vllm":
        from reward.generation.vllm import VLLMGenerator

        generator = VLLMGenerator(cfg.policy, cfg.generation, seed=cfg.seed * 1009 + rank)
        generator.max_new_tokens = p.max_new_tokens
        return generator
    generator = HFGenerator(actor.module, tokenizer, cfg.generation.batch_size, p.max_new_tokens, cfg.generation.top_p)
    generator.synced_gpus = zero3 and world > 1
    return generator


def sync_rollout_weights(generator: Generator, actor: Any, zero3: bool) -> None:
    """Push the actor's weights into a vLLM engine (HF rollouts read the actor directly: nothing to do).
    LoRA: the copy gets the weights with the adapters folded in; ZeRO-3: the shards are gathered."""
    if not hasattr(generator, "load_weights"):
        return
    module = actor.module
    if hasattr(module, "peft_config"):
        generator.load_weights(folded_weights(module).items())
    elif zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            generator.sync_weights(module)
    else:
        generator.sync_weights(module)


# ----------------------------------------------------------------------------------- evaluation
def evaluate(generator: Generator, task: Task, problems: list[Problem], samples: int, temperature: float,
             seed: int, rank: int, world: int) -> dict[str, float]:
    """`rl.evaluate.accuracies`, each rank on its shard (equal shard sizes keep ZeRO-3's synchronised
    generation in step), the counts summed over ranks."""
    per = math.ceil(len(problems) / world)
    mine = problems[rank * per: (rank + 1) * per]
    real = len(mine)
    mine = mine + [problems[0]] * (per - real)  # padding rows are generated but not counted
    prompts = [task.format_prompt(p.question, generator.tokenizer) for p in mine]
    greedy = generator.generate(prompts, 1, 0.0, seed)[:real]
    sampled = generator.generate(prompts, samples, temperature, seed + 1)[:real]
    mine = mine[:real]
    local = accuracy_counts(task, mine, [task.is_correct(g[0].text, p.gold) for p, g in zip(mine, greedy)],
                            [[task.is_correct(x.text, p.gold) for x in s] for p, s in zip(mine, sampled)],
                            [[task.extract_answer(x.text) for x in s] for s in sampled])
    counts = all_reduce_sum(torch.tensor(local, dtype=torch.float64))
    return {**accuracies(counts.tolist(), samples), "problems": int(counts[3])}


# ----------------------------------------------------------------------------------- set-up
def check(cfg: DictConfig, world: int, task: Task) -> None:
    check_config(cfg.reward, task.has_oracle)
    if cfg.critic_init == "reward" and cfg.reward.model == ORACLE:
        raise ShepherdError("critic_init=reward needs a reward model folder, not reward.model=oracle")
    if not cfg.policy:
        raise ShepherdError("no policy given (key policy): the SFT policy folder")
    p = cfg.ppo
    if p.prompts_per_update % world:
        raise ShepherdError(f"ppo.prompts_per_update={p.prompts_per_update} must divide among {world} ranks")
    if p.schedule not in ("linear", "cosine"):
        raise ShepherdError(f"unknown schedule '{p.schedule}' (key ppo.schedule); use linear or cosine")
    if cfg.generation.backend not in ("hf", "vllm"):
        raise ShepherdError(f"unknown generation backend '{cfg.generation.backend}' (key generation.backend); use hf or vllm")
    metrics = ("accuracy_t1", "accuracy_greedy", f"accuracy_maj{cfg.eval_samples}")
    if cfg.best_metric and cfg.best_metric not in metrics:
        raise ShepherdError(f"unknown best_metric '{cfg.best_metric}' (key best_metric); use one of {', '.join(metrics)} "
                            "or leave it empty for the last update's policy")
    for key, value, allowed in (("advantage", p.advantage, ESTIMATORS), ("credit", p.credit, CREDITS),
                                ("baseline", p.baseline, BASELINES)):
        if value not in allowed:
            raise ShepherdError(f"unknown {key} '{value}' (key ppo.{key}); use one of {', '.join(allowed)}")
    if cfg.hacking_patience < 0:
        raise ShepherdError(f"hacking_patience={cfg.hacking_patience} must be >= 0 (key hacking_patience; 0: off)")
    if p.micro_batch_size < 0:
        raise ShepherdError(f"ppo.micro_batch_size={p.micro_batch_size} must be >= 0 (key ppo.micro_batch_size; "
                            "0: the whole minibatch in one pass)")
    rollouts = p.prompts_per_update // world * p.samples_per_prompt
    if accumulation(p) > 1 and rollouts % p.minibatch_size:
        raise ShepherdError(f"ppo.micro_batch_size: accumulating gradients needs whole minibatches, but the {rollouts} "
                            f"rollouts per rank do not divide into ppo.minibatch_size={p.minibatch_size}")
    if p.advantage != "gae" and p.samples_per_prompt < 2:
        raise ShepherdError(f"ppo.advantage={p.advantage} compares the samples of one prompt: ppo.samples_per_prompt >= 2")
    if cfg.lora.enabled and "zero3" in os.path.basename(cfg.deepspeed):
        raise ShepherdError("LoRA on the actor needs ZeRO-2 (key deepspeed): merging adapters under ZeRO-3 is not supported")


def load_critic(path: str) -> Any:
    """A value head on a causal LM: transformers' token-classification model with one output, its
    backbone from `path` and a zero-initialised head (every value starts at 0). Under ZeRO-3 the head
    is partitioned (each rank holds a slice or an empty placeholder): it is gathered, zeroed on rank 0
    and scattered again, else zero_() would touch the placeholders only."""
    import deepspeed
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0  # transformers defaults to 0.1: values must not be noisy
    model = AutoModelForTokenClassification.from_pretrained(path, config=config, **NO_HUB_KERNELS)
    head = model.score if hasattr(model, "score") else model.classifier
    with deepspeed.zero.GatheredParameters(list(head.parameters()), modifier_rank=0), torch.no_grad():
        for param in head.parameters():
            param.zero_()
    return model


def checkpointed(model: Any, on: bool) -> Any:
    """Activation checkpointing for the actor or critic when `ppo.gradient_checkpointing` is on."""
    return enable_checkpointing(model) if on else model


def lr_decay(p: Any, world: int) -> Callable[[int], float]:
    """Learning-rate factor per optimiser step: linear warm-up, then linear or cosine to min_lr_ratio."""
    per_rank = p.prompts_per_update // world
    total_steps = p.updates * p.epochs * math.ceil(per_rank * p.samples_per_prompt / p.minibatch_size)

    def decay(step: int) -> float:
        if step < p.warmup_steps:
            return (step + 1) / (p.warmup_steps + 1)
        done = min(1.0, (step - p.warmup_steps) / max(1, total_steps - p.warmup_steps))
        shape = done if p.schedule == "linear" else 0.5 * (1 - math.cos(math.pi * done))
        return 1.0 - (1.0 - p.min_lr_ratio) * shape
    return decay


@dataclass
class Models:
    """OpenRLHF's split: actor and critic train; reference and reward model only score (ref None: the
    actor with its LoRA adapters off; rm None: rule and oracle rewards; critic None: grpo and rloo)."""

    actor: Any
    critic: Any
    ref: Any
    rm: Any
    rm_tokenizer: Any
    tokenizer: Any
    generator: Generator
    zero3: bool


def build_models(cfg: DictConfig, world: int, rank: int, device: torch.device) -> Models:
    p, rc = cfg.ppo, cfg.reward
    tokenizer = load_tokenizer(cfg.policy, "policy")
    train_cfg = engines.ds_config(cfg.deepspeed, p.minibatch_size, p.max_grad_norm, world, train=True,
                                  accumulation=accumulation(p))
    frozen_cfg = engines.ds_config(cfg.deepspeed, p.minibatch_size, p.max_grad_norm, world, train=False)

    def load_actor() -> Any:
        model = apply_lora(load_causal_lm(cfg.policy, "policy", device="cpu"), cfg.lora)
        return checkpointed(model, p.gradient_checkpointing)
    decay = lr_decay(p, world)
    actor = engines.build(load_actor, train_cfg, p.lr, device, decay)
    critic = None
    if p.advantage == "gae":
        critic_path = {"policy": cfg.policy, "reward": rc.model}.get(cfg.critic_init, cfg.critic_init)
        critic = engines.build(lambda: checkpointed(load_critic(critic_path), p.gradient_checkpointing), train_cfg,
                               p.critic_lr, device, decay)
    ref = None if cfg.lora.enabled else engines.build(lambda: load_causal_lm(cfg.policy, "policy", device="cpu"),
                                                     frozen_cfg, None, device)
    rm = rm_tokenizer = None
    if rc.type != "rule" and rc.model != ORACLE:
        def load_rm() -> Any:  # the model inside the engine's load (zero.Init), its tokenizer kept from the same call
            nonlocal rm_tokenizer
            model, rm_tokenizer = load_reward_model(rc.model, "reward.model", rc.format, device="cpu")
            return model

        rm = engines.build(load_rm, frozen_cfg, None, device)
    zero3 = engines.zero_stage(train_cfg) == 3
    generator = build_generator(cfg, actor, tokenizer, zero3, world, rank)
    return Models(actor, critic, ref, rm, rm_tokenizer, tokenizer, generator, zero3)


# ----------------------------------------------------------------------------------- one update
def collect_rollouts(cfg: DictConfig, task: Task, m: Models, problems: list[Problem], update: int, rank: int,
                     world: int) -> tuple[list[Rollout], list[list[int]]]:
    """This rank's prompts of this update (a fixed order, so a resumed run sees the same data), sampled
    `samples_per_prompt` times and graded; the rollouts and each one's prompt tokens."""
    p = cfg.ppo
    per_rank = p.prompts_per_update // world
    start = ((update - 1) * p.prompts_per_update + rank * per_rank) % len(problems)
    batch_problems = [problems[(start + i) % len(problems)] for i in range(per_rank)]
    texts = [task.format_prompt(q.question, m.tokenizer) for q in batch_problems]
    for model in (m.actor, m.critic):
        if model is not None:
            model.eval()
    samples = m.generator.generate(texts, p.samples_per_prompt, p.temperature,
                                   seed=cfg.seed * 1_000_003 + update * world + rank)
    eos, separator = [m.tokenizer.eos_token_id], task.join_steps(["", ""])
    rollouts, prompt_tokens = [], []
    for q, text, group in zip(batch_problems, texts, samples):
        ids = prompt_ids(m.generator, text)
        for s in group:
            g = task.grade(q, s.text)
            rollouts.append(Rollout(q.question, s.text, s.token_ids + (eos if s.finished else []), g["steps"],
                                    bool(g["correct"]), g["answer"] is not None, bool(g["well_formed"]),
                                    g.get("first_error"), empty_steps(s.text, separator)))
            prompt_tokens.append(ids)
    return rollouts, prompt_tokens


@dataclass
class Experience:
    """One update's rollouts with everything the PPO epochs and the log need (OpenRLHF's name)."""

    rollouts: list[Rollout]
    batch: Batch
    placed: list[tuple[list[float], dict[str, Any]]]  # per rollout: task reward per token, what went in
    task_rewards: torch.Tensor  # [B, R] reward model / rule rewards, no KL
    rewards: torch.Tensor  # [B, R] with the KL penalty
    kl: torch.Tensor
    old_logp: torch.Tensor
    old_values: torch.Tensor | None  # gae only (the critic's)
    advantages: torch.Tensor
    returns: torch.Tensor | None  # gae only (the critic's targets)
    policy_mask: torch.Tensor  # [B, R] the tokens the policy loss counts (mask_separator: not the step breaks)


def score_and_place(cfg: DictConfig, m: Models, rollouts: list[Rollout], prompt_tokens: list[list[int]],
                    device: torch.device) -> tuple[Batch, list[tuple[list[float], dict[str, Any]]], torch.Tensor]:
    """Step scores (the reward model with its own tokenizer; every rank scores all of its rollouts, so
    ZeRO-3 ranks run the same number of forward passes), placed on the policy's tokens (`rl.rewards`)."""
    rc = cfg.reward
    step_scores: list[list[float] | None] = [None] * len(rollouts)
    if m.rm is not None:
        step_scores = score_items(m.rm.module, m.rm_tokenizer, [(r.question, r.steps) for r in rollouts], rc.format,
                                  rc, rc.score_batch_size, rc.max_length)
    elif rc.model == ORACLE:
        step_scores = [oracle_step_scores(r) for r in rollouts]
    placed = [rollout_rewards(r, rc, m.tokenizer, s) for r, s in zip(rollouts, step_scores)]
    b = make_batch(prompt_tokens, [r.token_ids for r in rollouts], m.tokenizer.pad_token_id, device)
    task_rewards = torch.zeros_like(b.mask)
    for i, (rw, _) in enumerate(placed):
        task_rewards[i, : len(rw)] = torch.tensor(rw)
    if rc.normalize:
        task_rewards = normalize_task_rewards(task_rewards)
    return b, placed, task_rewards


def make_experience(cfg: DictConfig, m: Models, rollouts: list[Rollout], prompt_tokens: list[list[int]],
                    device: torch.device) -> Experience:
    """Rewards placed, old and reference log-probs, values, per-token rewards with the KL penalty, and
    the advantages: GAE with the critic's values, or grpo / rloo without a critic."""
    p = cfg.ppo
    b, placed, task_rewards = score_and_place(cfg, m, rollouts, prompt_tokens, device)
    chunk = p.micro_batch_size or p.minibatch_size
    old_logp = in_chunks(lambda x: actor_forward(m.actor, x, p.temperature)[0], b, chunk)
    if m.ref is not None:
        ref_logp = in_chunks(lambda x: actor_forward(m.ref, x, p.temperature)[0], b, chunk)
    else:
        with m.actor.module.disable_adapter():
            ref_logp = in_chunks(lambda x: actor_forward(m.actor, x, p.temperature)[0], b, chunk)
    rewards, kl = with_kl(task_rewards, old_logp, ref_logp, b.mask, cfg.reward)
    old_values = returns = None
    if m.critic is not None:
        old_values = in_chunks(lambda x: critic_forward(m.critic, x), b, chunk)
        advantages, returns = gae(rewards, old_values, b.mask, p.gamma, p.lam)
    else:
        advantages = critic_free_advantages(cfg, b, placed, task_rewards, kl)
    if p.whiten_advantages:
        advantages = whiten(advantages, b.mask)
    policy_mask = b.mask * ~separator_tokens(b.tokens, m.tokenizer) if p.mask_separator else b.mask
    return Experience(rollouts, b, placed, task_rewards, rewards, kl, old_logp, old_values, advantages, returns,
                      policy_mask)


def separator_tokens(tokens: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """[B, R] True where a token is a step break: it decodes to whitespace holding a line break."""
    ids = tokens.unique()
    breaks = torch.zeros(int(ids.max()) + 1, dtype=torch.bool, device=tokens.device)
    for t in ids.tolist():  # each distinct token decoded once
        text = tokenizer.decode([t])
        breaks[t] = "\n" in text and not text.strip()
    return breaks[tokens]


def critic_free_advantages(cfg: DictConfig, b: Batch, placed: list[tuple[list[float], dict[str, Any]]],
                           task_rewards: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """grpo / rloo on the placed task rewards (`rl.advantages`), minus the KL penalty still to come
    (kl_coef x the sum of the per-token KL from each token on, as a REINFORCE return would hold it)."""
    p = cfg.ppo
    positions = torch.zeros_like(b.mask)
    for i, (rw, meta) in enumerate(placed):
        positions[i, [*meta["ends"], len(rw) - 1]] = 1.0
    advantages = group_advantages(task_rewards, positions, b.mask, p.samples_per_prompt, p.advantage, p.credit,
                                  p.baseline)
    return advantages - cfg.reward.kl_coef * returns_to_go(kl, b.mask, b.mask, "sum")


def ppo_epochs(cfg: DictConfig, m: Models, e: Experience, update: int, world: int, device: torch.device
               ) -> dict[str, list[float]]:
    """Epochs of clipped policy and value losses over shuffled minibatches (stopped early past target_kl)."""
    p = cfg.ppo
    for model in (m.actor, m.critic):
        if model is not None:
            model.train()
    stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "entropy")}
    order = torch.Generator().manual_seed(cfg.seed * 7919 + update)
    for _ in range(p.epochs):
        epoch_kl = []
        for idx in torch.randperm(len(e.rollouts), generator=order).split(p.minibatch_size):
            for k, v in minibatch_step(p, m, e, idx.to(device)).items():
                stats[k].append(v)
            epoch_kl.append(stats["approx_kl"][-1])
        kl_now = all_reduce_sum(torch.tensor(sum(epoch_kl) / len(epoch_kl)))
        if p.target_kl > 0 and float(kl_now) / world > 1.5 * p.target_kl:
            break
    return stats


def minibatch_step(p: Any, m: Models, e: Experience, idx: torch.Tensor) -> dict[str, float]:
    """One optimiser step of the actor (and the critic) on the rollouts `idx`, as forward/backward passes
    over `micro_batch_size` rows in length order whose gradients the step sums: each pass's loss is
    weighted by its share of the minibatch's tokens, so the step is that of one pass over all of them."""
    idx = by_length(e.batch, idx)
    parts = idx.tensor_split(accumulation(p))
    policy_tokens, value_tokens = e.policy_mask[idx].sum().clamp(min=1), e.batch.mask[idx].sum().clamp(min=1)
    out = dict.fromkeys(("policy_loss", "entropy", "clip_fraction", "approx_kl")
                        + (("value_loss",) if m.critic is not None else ()), 0.0)
    for part in parts:
        mb = rows(e.batch, part)
        share = float(e.policy_mask[part].sum() / policy_tokens)
        logp, ent = actor_forward(m.actor, mb, p.temperature, entropy=True)
        pg, pstats = policy_loss(logp, e.old_logp[part], e.advantages[part], e.policy_mask[part], p.clip_ratio)
        entropy = masked_mean(ent, e.policy_mask[part])
        m.actor.backward((pg - p.entropy_coef * entropy) * share, scale_wrt_gas=False)
        m.actor.step()  # applies the update after the last part (DeepSpeed's gradient accumulation)
        for k, v in (("policy_loss", pg), ("entropy", entropy), *pstats.items()):
            out[k] += float(v.detach()) * share
        if m.critic is not None:
            share = float(mb.mask.sum() / value_tokens)
            vl = value_loss(critic_forward(m.critic, mb), e.old_values[part], e.returns[part], mb.mask, p.value_clip)
            m.critic.backward(vl * share, scale_wrt_gas=False)
            m.critic.step()
            out["value_loss"] += float(vl.detach()) * share
    return out


def accumulation(p: Any) -> int:
    """Forward/backward passes per optimiser step (one where micro_batch_size is 0 or the minibatch's size or more)."""
    return math.ceil(p.minibatch_size / min(p.micro_batch_size or p.minibatch_size, p.minibatch_size))


def log_row(e: Experience, stats: dict[str, list[float]], update: int, world: int, lr: float, clock: list[float]
            ) -> dict[str, float]:
    """The learned reward beside true accuracy (the hacking alarm), KL, lengths, steps per response and
    the losses, averaged over ranks; the update's seconds and those of its phases (rank 0's clock:
    rollouts; experience = scoring, reference, old log-probs, values, advantages; train = the epochs)."""
    rollouts, steps = e.rollouts, sum(len(r.steps) for r in e.rollouts)
    local = {
        "reward/task_return": float(e.task_rewards.sum(1).mean()),
        "reward/score": sum(m["score"] for _, m in e.placed) / len(e.placed),
        "reward/total_return": float(e.rewards.sum(1).mean()),
        "reward/per_step": float(e.task_rewards.sum() / max(1, steps)),
        "train/accuracy": sum(r.correct for r in rollouts) / len(rollouts),
        "train/format_error": sum(not r.well_formed for r in rollouts) / len(rollouts),
        "train/no_answer": sum(not r.has_answer for r in rollouts) / len(rollouts),
        "train/empty_steps": sum(r.empty_steps for r in rollouts) / len(rollouts),
        "kl/per_response": float(e.kl.sum(1).mean()),
        "response/length": float(e.batch.mask.sum(1).mean()),
        "response/steps": steps / len(rollouts),
        **{f"loss/{k}" if "loss" in k else f"policy/{k}": sum(v) / max(1, len(v)) for k, v in stats.items()},
    }
    reduced = all_reduce_sum(torch.tensor(list(local.values()), dtype=torch.float64))
    return {"update": update, **{k: round(float(v) / world, 5) for k, v in zip(local, reduced)},
            "lr": lr, "seconds": round(clock[-1] - clock[0], 2),
            **{f"time/{k}": round(b - a, 2) for k, a, b in zip(("rollout", "experience", "train"), clock, clock[1:])}}


def peak_memory_gb(device: torch.device) -> float:
    """This rank's peak so far: allocated accelerator memory on a GPU, the process's resident set on a
    CPU (where the models live then), in GiB."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # Linux: KiB


# ----------------------------------------------------------------------------------- resume and finish
def start_or_resume(cfg: DictConfig, m: Models, ckpt_root: str, log_path: str, rank: int) -> dict[str, Any]:
    """The run's state: from the last checkpoint with `resume` (log lines after it dropped: they run
    again), else a fresh start that clears an earlier run's checkpoints, TensorBoard files and log."""
    loaded = load_checkpoint(ckpt_root, m.actor, m.critic, rank) if cfg.resume else None
    if loaded is not None:
        state = {k: v for k, v in loaded.items() if k in ("update", "sft", "wall", "best", "evals", "scores", "stopped")}
        sync_rollout_weights(m.generator, m.actor, m.zero3)
        if rank == 0:
            write_jsonl_atomic(log_path, [r for r in read_jsonl_resumable(log_path) if r["update"] <= state["update"]])
        return state
    if rank == 0:
        for stale in (ckpt_root, os.path.join(cfg.output_dir, "tensorboard")):
            shutil.rmtree(stale, ignore_errors=True)
        if os.path.exists(log_path):
            os.remove(log_path)
    return {"update": 0}


def final_metrics(cfg: DictConfig, state: dict[str, Any], final: dict[str, float], log_path: str, rank: int,
                  world: int, seconds: float) -> dict[str, Any]:
    """The final split's accuracies beside the starting policy's (paired), and the chosen update's log."""
    p, best = cfg.ppo, state.get("best")
    chosen = best["update"] if best is not None else state.get("stopped") or p.updates
    log = read_jsonl_resumable(log_path) if rank == 0 else []
    last = next((r for r in log if r["update"] == chosen), {})  # the policy's own update
    return {**final, **{f"sft_{k}": v for k, v in state["sft"].items() if k != "problems"},
            "final_split": cfg.final_split, "updates": p.updates, "stopped_by_hacking_guard": state.get("stopped"),
            "policy_update": chosen, "world_size": world, "reward_type": cfg.reward.type,
            "rollouts": p.updates * p.prompts_per_update * p.samples_per_prompt,
            "final_task_return": last.get("reward/task_return"), "final_kl": last.get("kl/per_response"),
            "final_steps_per_response": last.get("response/steps"), "wall_seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------------- the run
def run(cfg: DictConfig) -> dict:
    rank, world, device = engines.init_distributed()
    task = load_task(cfg.task)
    check(cfg, world, task)
    p = cfg.ppo
    started = time.time()
    torch.manual_seed(cfg.seed + rank)
    m = build_models(cfg, world, rank, device)
    problems = task.problems(cfg.train_split, cfg.train_problems, seed=cfg.seed)
    random.Random(cfg.seed).shuffle(problems)
    eval_set = task.problems(cfg.eval_split, cfg.eval_problems, seed=HELD_OUT_SEED)
    final_set = task.problems(cfg.final_split, cfg.final_eval_problems, seed=HELD_OUT_SEED)
    ckpt_root, log_path = os.path.join(cfg.output_dir, "checkpoints"), os.path.join(cfg.output_dir, "log.jsonl")
    state = start_or_resume(cfg, m, ckpt_root, log_path, rank)
    if "sft" not in state:  # the starting policy on the final split, same problems and seeds: a paired baseline
        state["sft"] = evaluate(m.generator, task, final_set, cfg.final_eval_samples, p.temperature, cfg.seed, rank, world)
    writer = SummaryWriter(os.path.join(cfg.output_dir, "tensorboard"), purge_step=state["update"] + 1) if rank == 0 else None
    bar = tqdm(total=p.updates, initial=state["update"], desc="ppo", disable=rank != 0, dynamic_ncols=True)
    wall_before = state.get("wall", 0.0)
    metric = cfg.best_metric or "accuracy_t1"
    for update in range(state["update"] + 1, (state.get("stopped") or p.updates) + 1):
        clock = [time.time()]
        rollouts, prompt_tokens = collect_rollouts(cfg, task, m, problems, update, rank, world)
        clock.append(time.time())
        experience = make_experience(cfg, m, rollouts, prompt_tokens, device)
        clock.append(time.time())
        stats = ppo_epochs(cfg, m, experience, update, world, device)
        sync_rollout_weights(m.generator, m.actor, m.zero3)
        clock.append(time.time())
        row = {**log_row(experience, stats, update, world, m.actor.get_lr()[0], clock),
               "memory/peak_gb": peak_memory_gb(device)}
        state.setdefault("scores", []).append(row["reward/score"])
        if update % cfg.eval_every == 0 or update == p.updates:
            m.actor.eval()
            row.update({f"eval/{k}": v for k, v in evaluate(m.generator, task, eval_set, cfg.eval_samples,
                                                                p.temperature, cfg.seed, rank, world).items()})
            value = row.get(f"eval/{cfg.best_metric}")
            if value is not None and value > state.get("best", {}).get("value", -1.0):
                state["best"] = save_best(ckpt_root, update, value, m.actor)
            state.setdefault("evals", []).append([sum(state["scores"]) / len(state["scores"]), row[f"eval/{metric}"]])
            state["scores"] = []
            if hacking(state["evals"], cfg.hacking_patience):
                state["stopped"] = row["hacking/stopped"] = update
        if rank == 0:
            append_jsonl(log_path, [row])
            for k, v in row.items():
                if k != "update":
                    writer.add_scalar(k, v, update)
            writer.flush()
            bar.set_postfix(reward=f"{row['reward/task_return']:.3f}", acc=f"{row['train/accuracy']:.3f}")
            bar.update(1)
        if update % cfg.checkpoint_every == 0 or update == p.updates or state.get("stopped"):
            state.update(update=update, wall=wall_before + time.time() - started)
            save_checkpoint(ckpt_root, update, m.actor, m.critic, state, rank)
        if state.get("stopped"):
            break
    bar.close()
    best = state.get("best")
    if best is not None and best["update"] != (state.get("stopped") or p.updates):
        m.actor.load_checkpoint(best["path"], tag="actor")
        sync_rollout_weights(m.generator, m.actor, m.zero3)
    m.actor.eval()
    final = evaluate(m.generator, task, final_set, cfg.final_eval_samples, p.temperature, cfg.seed, rank, world)
    engines.save_hf(m.actor, m.tokenizer, os.path.join(cfg.output_dir, "policy"))
    return final_metrics(cfg, state, final, log_path, rank, world, wall_before + time.time() - started)


def main(argv: list[str] | None = None) -> dict:
    return stage_main("ppo", PPOConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
