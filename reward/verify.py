"""`shepherd verify`: best-of-N with the PRM and the ORM, judged within each problem.

For a test split it samples N solutions per problem, scores every step with the PRM and the ORM, and
reports accuracy against N (1, 2, 4, ... N) for: random pick, majority vote (self-consistency), ORM
best, PRM best (aggregated by min / prod / last), SC+ORM and SC+PRM (argmax_a sum_i 1[a_i = a] score_i),
and the policy's own confidence (its lowest token probability in the solution), with bootstrap 95%
intervals over problems. It also reports pairwise accuracy: the share of (right, wrong) answer pairs
to the same problem that a scorer orders correctly. A reward model that ranks problems by difficulty
gets a high AUC and still picks badly; these figures cannot be fooled that way.
"""
from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from reward.batching import right_pad
from reward.config import GenerationConfig, StageConfig
from reward.errors import ShepherdError
from reward.adapters import AdapterSettings, load_reward_model, score_items
from reward.formats import TAGGED, check_format
from reward.generation import load_causal_lm, load_generator, load_tokenizer
from reward.io import read_jsonl, write_atomic, write_jsonl_atomic
from reward.prm import aggregate
from reward.sample import policy_sample, sample_and_grade
from reward.stage import stage_main
from reward.tasks import HELD_OUT_SEED, load_task


@dataclass
class VerifyConfig(AdapterSettings, StageConfig):
    policy: str = ""
    prm: str = ""  # reward-model folders; either may be empty (its methods are then left out)
    orm: str = ""
    # each reward model's convention (reward.adapters): tagged | math-shepherd | qwen-prm | separator
    prm_format: str = TAGGED
    orm_format: str = TAGGED
    split: str = "test"
    num_problems: int = 200
    n: int = 64  # solutions per problem (up to 256)
    temperature: float = 1.0
    aggregations: list[str] = field(default_factory=lambda: ["min", "prod", "last"])
    bootstrap: int = 1000
    samples: str = ""  # reuse a samples.jsonl with at least n solutions per problem instead of sampling
    score_batch_size: int = 64
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class Group:
    """The N solutions of one problem and what every scorer says about them."""

    correct: np.ndarray  # bool [N]
    answers: list[str | None]
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # scorer name -> [N]


# --- selection rules: each maps (group, indices of a subset) to "the picked answer is right" --------
def pick_random(g: Group, idx: np.ndarray) -> float:
    """Expected accuracy of a uniform random pick (exact, no sampling noise)."""
    return float(g.correct[idx].mean())


def pick_majority(g: Group, idx: np.ndarray) -> float:
    votes: dict[str, int] = defaultdict(int)
    for i in idx:
        if g.answers[i] is not None:
            votes[g.answers[i]] += 1
    return _answer_correct(g, idx, votes)


def pick_best(name: str) -> Callable[[Group, np.ndarray], float]:
    def pick(g: Group, idx: np.ndarray) -> float:
        return float(g.correct[idx[int(np.argmax(g.scores[name][idx]))]])
    return pick


def pick_weighted_vote(name: str) -> Callable[[Group, np.ndarray], float]:
    """Self-consistency weighted by a scorer: argmax_a sum_i 1[a_i = a] * score_i."""
    def pick(g: Group, idx: np.ndarray) -> float:
        votes: dict[str, float] = defaultdict(float)
        for i in idx:
            if g.answers[i] is not None:
                votes[g.answers[i]] += float(g.scores[name][i])
        return _answer_correct(g, idx, votes)
    return pick


def _answer_correct(g: Group, idx: np.ndarray, votes: dict[str, float]) -> float:
    if not votes:
        return 0.0
    best = max(votes, key=lambda a: votes[a])  # ties: the first answer seen
    return float(next(g.correct[i] for i in idx if g.answers[i] == best))


def accuracy_at(groups: Sequence[Group], pick: Callable[[Group, np.ndarray], float], k: int) -> np.ndarray:
    """Per problem, the mean over disjoint subsets of size k of its N solutions."""
    out = []
    for g in groups:
        n = len(g.correct)
        subsets = [np.arange(s, s + k) for s in range(0, n - k + 1, k)]
        out.append(np.mean([pick(g, idx) for idx in subsets]))
    return np.array(out)


def bootstrap_ci(values: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """95% interval of the mean by resampling problems."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(reps, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def pairwise_accuracy(groups: Sequence[Group], name: str) -> float:
    """Share of (right, wrong) pairs within a problem that the scorer orders right (ties count half)."""
    hits = total = 0.0
    for g in groups:
        s = g.scores[name]
        right, wrong = s[g.correct], s[~g.correct]
        if len(right) and len(wrong):
            diff = right[:, None] - wrong[None, :]
            hits += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            total += diff.size
    return hits / total if total else float("nan")


@torch.no_grad()
def policy_confidence(model: Any, tokenizer: Any, prompts: Sequence[str], solutions: Sequence[str],
                      batch_size: int = 64) -> list[float]:
    """The policy's lowest probability of a token it wrote (teacher forcing on prompt + solution)."""
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        p_ids = tokenizer(list(prompts[start: start + batch_size]))["input_ids"]
        s_ids = tokenizer(list(solutions[start: start + batch_size]), add_special_tokens=False)["input_ids"]
        ids, mask = right_pad([p + s for p, s in zip(p_ids, s_ids)], tokenizer.pad_token_id)
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1).cpu()
        for i, (p, s) in enumerate(zip(p_ids, s_ids)):
            if not s:
                out.append(0.0)
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(s) - 1)
            out.append(float(logp[i, pos, torch.tensor(s)].exp().min()))
    return out


def methods(scorers: Sequence[str], aggregations: Sequence[str]) -> dict[str, Callable[[Group, np.ndarray], float]]:
    table: dict[str, Callable[[Group, np.ndarray], float]] = {"random": pick_random, "majority": pick_majority}
    if "orm" in scorers:
        table["orm"] = pick_best("orm")
        table["sc_orm"] = pick_weighted_vote("orm")
    for agg in aggregations:
        if f"prm_{agg}" in scorers:
            table[f"prm_{agg}"] = pick_best(f"prm_{agg}")
    if "prm_min" in scorers:
        table["sc_prm"] = pick_weighted_vote("prm_min")
    table["confidence"] = pick_best("confidence")
    return table


def load_or_sample(cfg: DictConfig, task: Any) -> list[list[dict[str, Any]]]:
    """Per problem, n graded solutions: sampled now, or read from cfg.samples."""
    if cfg.samples:
        by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in read_jsonl(cfg.samples, required=("problem_id", "question", "solution", "correct")):
            if policy_sample(r):  # a data set's own solution, a forced slip: no candidates of the policy's
                by_problem[r["problem_id"]].append(r)
        groups = [g[: cfg.n] for g in by_problem.values() if len(g) >= cfg.n]
        if not groups:
            raise ShepherdError(f"{cfg.samples}: no problem has n={cfg.n} solutions (key n)")
        return groups[: cfg.num_problems]
    problems = task.problems(cfg.split, cfg.num_problems, seed=HELD_OUT_SEED)
    generator = load_generator(cfg.policy, cfg.generation)
    return sample_and_grade(generator, task, problems, cfg.n, cfg.temperature, cfg.seed + 17, progress=True)


def run(cfg: DictConfig) -> dict:
    if not cfg.policy:
        raise ShepherdError("verify needs the policy (key policy): it samples and gives the confidence baseline")
    if not 1 <= cfg.n <= 256:
        raise ShepherdError(f"n must be in 1..256, got {cfg.n} (key n)")
    for name in ("prm", "orm"):
        check_format(cfg[f"{name}_format"], f"{name}_format")
    task = load_task(cfg.task)
    sampled = load_or_sample(cfg, task)
    flat = [r for g in sampled for r in g]
    items = [(r["question"], r["steps"] or [""]) for r in flat]
    step_scores: dict[str, list[list[float]]] = {}
    for name in ("prm", "orm"):
        if cfg[name]:
            model, rm_tok = load_reward_model(cfg[name], name, cfg[f"{name}_format"])
            step_scores[name] = score_items(model, rm_tok, items, cfg[f"{name}_format"], cfg, cfg.score_batch_size)
            del model
    tok = load_tokenizer(cfg.policy)
    policy = load_causal_lm(cfg.policy)
    confidence = policy_confidence(policy, tok, [task.format_prompt(r["question"], tok) for r in flat],
                                   [r["solution"] for r in flat])

    scores: dict[str, list[float]] = {"confidence": confidence}
    if "orm" in step_scores:
        scores["orm"] = [aggregate(s, "last") for s in step_scores["orm"]]
    for agg in cfg.aggregations:
        if "prm" in step_scores:
            scores[f"prm_{agg}"] = [aggregate(s, agg) for s in step_scores["prm"]]
    groups, at = [], 0
    for g in sampled:
        sl = slice(at, at + len(g))
        groups.append(Group(np.array([r["correct"] for r in g]), [r["answer"] for r in g],
                            {k: np.array(v[sl]) for k, v in scores.items()}))
        at += len(g)
    write_jsonl_atomic(os.path.join(cfg.output_dir, "scored.jsonl"),
                       [{**r, **{f"{k}_steps": step_scores[k][i] for k in step_scores}, "confidence": confidence[i]}
                        for i, r in enumerate(flat)])

    n = min(len(g.correct) for g in groups)
    ks = [k for k in (2 ** i for i in range(9)) if k <= n]
    rows = []
    for name, pick in methods(list(scores), cfg.aggregations).items():
        for k in ks:
            acc = accuracy_at(groups, pick, k)
            lo, hi = bootstrap_ci(acc, cfg.bootstrap, cfg.seed)
            rows.append({"method": name, "N": k, "accuracy": round(float(acc.mean()), 4),
                         "ci_low": round(lo, 4), "ci_high": round(hi, 4)})
    pairwise = {f"pairwise_{name}": round(pairwise_accuracy(groups, name), 4) for name in scores}
    write_reports(cfg.output_dir, rows, pairwise, len(groups), n)
    metrics: dict[str, Any] = {"problems": len(groups), "n": n, **pairwise}
    if "pairwise_prm_min" in pairwise:  # the paper's aggregation is the PRM's headline figure
        metrics["pairwise_prm"] = pairwise["pairwise_prm_min"]
    for r in rows:
        if r["N"] == min(16, n):
            metrics[f"bo{r['N']}_{r['method']}"] = r["accuracy"]
    return metrics


def write_reports(folder: str, rows: list[dict[str, Any]], pairwise: dict[str, float], problems: int, n: int) -> None:
    """verify.csv, verify.md (accuracy with 95% intervals against N) and verify.png."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(os.path.join(folder, "verify.csv"), buf.getvalue())
    ks = sorted({r["N"] for r in rows})
    names = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["N"]): r for r in rows}
    lines = [f"Best-of-N accuracy on {problems} problems, {n} solutions each (95% bootstrap intervals).", "",
             "| method | " + " | ".join(f"N={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            f"{cell[name, k]['accuracy']:.3f} [{cell[name, k]['ci_low']:.3f}, {cell[name, k]['ci_high']:.3f}]" for k in ks) + " |")
    lines += ["", "Pairwise accuracy within a problem (right vs wrong answers): " +
              ", ".join(f"{k.removeprefix('pairwise_')} {v:.3f}" for k, v in pairwise.items())]
    write_atomic(os.path.join(folder, "verify.md"), "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        acc = [cell[name, k]["accuracy"] for k in ks]
        ax.plot(ks, acc, marker="o", label=name)
        ax.fill_between(ks, [cell[name, k]["ci_low"] for k in ks], [cell[name, k]["ci_high"] for k in ks], alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (solutions per problem)")
    ax.set_ylabel("accuracy of the picked answer")
    ax.set_title(f"Best-of-N, {problems} problems")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = os.path.join(folder, ".verify.png.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, os.path.join(folder, "verify.png"))


def main(argv: list[str] | None = None) -> dict:
    return stage_main("verify", VerifyConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
