"""`shepherd report RUN_DIR...`: one markdown file with plots, from the folders stages wrote.

PPO runs (folders with `log.jsonl`; `<arm>/seed<N>` folders are seeds of one arm) give the headline
table: held-out accuracy of the SFT policy and of each arm (T=1, greedy, maj@k) with 95% intervals
over seeds, and every arm's difference from the ORM and rule arms, paired by seed; their logs give
curves of accuracy, reward, KL and steps per response against updates. Stage folders give the
verification table, the label audit, the first-error F1 and each stage's wall time.

    shepherd report outputs/arith_tiny/* output_dir=docs/results
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from reward.config import StageConfig
from reward.errors import ShepherdError
from reward.io import read_jsonl, write_atomic
from reward.stage import stage_main
from rl.hacking import first_alarm

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
ACCURACY = ("accuracy_t1", "accuracy_greedy")
# The rollouts' true accuracy beside the reward model's score of them: the hacking alarm (score up, accuracy down).
CURVES = (("eval/accuracy_t1", "held-out accuracy (T=1)"), ("train/accuracy", "rollout accuracy (true)"),
          ("reward/score", "reward model's score of the rollouts"), ("reward/task_return", "task reward per rollout"),
          ("kl/per_response", "KL to the reference per response"), ("response/steps", "steps per response"))


@dataclass
class ReportConfig(StageConfig):
    runs: list[str] = field(default_factory=list)  # the RUN_DIR arguments
    name: str = "report"  # the markdown file's name (without .md)
    pairs: list[str] = field(default_factory=list)  # more paired differences, "ppo-a:ppo-b" for a - b


def interval(values: list[float], problems: int) -> tuple[float, float]:
    """Mean and 95% half-width: over seeds (t) with 2+, else binomial over the problems of one seed."""
    mean = sum(values) / len(values)
    if len(values) >= 2:
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return mean, T_975.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))
    return mean, 1.96 * math.sqrt(max(mean * (1 - mean), 1e-12) / max(1, problems))


def fmt(mean: float, half: float) -> str:
    return f"{mean:.3f} ± {half:.3f}"


def read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def classify(dirs: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """PPO runs grouped by arm, and the other stage folders."""
    arms: dict[str, list[str]] = defaultdict(list)
    stages = []
    for d in dirs:
        d = d.rstrip("/")
        if not os.path.isfile(os.path.join(d, "metrics.json")):
            raise ShepherdError(f"{d}: no metrics.json (not a finished stage or run)")
        if os.path.isfile(os.path.join(d, "log.jsonl")):
            name = os.path.basename(d)
            arm = os.path.basename(os.path.dirname(d)) if re.fullmatch(r"seed\d+", name) else name
            arms[arm].append(d)
        else:
            stages.append(d)
    return dict(arms), stages


def accuracy_table(arms: dict[str, list[str]]) -> tuple[list[str], dict[str, dict[str, tuple[float, float]]]]:
    """Markdown rows and the numbers behind them (SFT from the arms' paired baseline evaluations)."""
    metrics = {arm: [read_json(os.path.join(d, "metrics.json")) for d in runs] for arm, runs in arms.items()}
    maj = next((k for m in metrics.values() for k in m[0] if re.fullmatch(r"accuracy_maj\d+", k)), "")
    keys = [*ACCURACY, maj] if maj else list(ACCURACY)
    first = next(iter(metrics.values()))
    rows_by_name = {"SFT policy": [{k: m[f"sft_{k}"] for k in keys} | {"problems": m["problems"]} for m in first]}
    rows_by_name.update(metrics)
    numbers: dict[str, dict[str, tuple[float, float]]] = {}
    lines = ["| policy | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, ms in rows_by_name.items():
        numbers[name] = {k: interval([m[k] for m in ms], ms[0].get("problems", 500)) for k in keys}
        lines.append(f"| {name} | {len(ms)} | " + " | ".join(fmt(*numbers[name][k]) for k in keys) + " |")
    return lines, numbers


BASELINES = ("ppo-orm", "ppo-rule")  # the paper's baseline, then the oracle outcome


def comparisons(arms: list[str]) -> list[tuple[str, str]]:
    """Every other arm against each baseline arm present (the names above, or one of them plus a
    suffix such as ppo-orm-big), then the baseline arms against each other."""
    present = [a for b in BASELINES for a in sorted(arms) if a == b or a.startswith(b + "-")]
    pairs = [(a, b) for a in sorted(set(arms) - set(present)) for b in present]
    return pairs + list(itertools.combinations(present, 2))


def difference(arms: dict[str, list[str]], a: str, b: str, key: str = "accuracy_t1") -> str:
    """a - b on `key`, paired by seed where both arms ran it."""
    by_seed = {arm: {os.path.basename(d): read_json(os.path.join(d, "metrics.json")) for d in arms[arm]} for arm in (a, b)}
    common = sorted(set(by_seed[a]) & set(by_seed[b]))
    if not common:
        return ""
    diffs = [by_seed[a][s][key] - by_seed[b][s][key] for s in common]
    if len(diffs) >= 2:
        mean, half = interval(diffs, 0)
    else:
        pa, pb, n = by_seed[a][common[0]][key], by_seed[b][common[0]][key], by_seed[a][common[0]]["problems"]
        mean, half = pa - pb, 1.96 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / max(1, n))
    return f"{a} - {b} ({key}, {len(diffs)} seed(s)): {fmt(mean, half)}"


def costs(arms: dict[str, list[str]], logs: dict[str, list[dict]]) -> list[str]:
    """Per arm: seconds per update (mean over updates and seeds), the highest peak memory of an update, and
    the seeds whose log shows the hacking alarm at patience 1 (validation accuracy fell while the learned
    reward held or rose)."""
    lines = ["| arm | seconds per update | peak memory (GB) | hacking alarm (seed@update) |", "|---|---|---|---|"]
    for arm, runs in arms.items():
        rows = [r for d in runs for r in logs[d]]
        seconds = sum(r["seconds"] for r in rows) / len(rows)
        peaks = [r["memory/peak_gb"] for r in rows if "memory/peak_gb" in r]
        alarms = {os.path.basename(d): first_alarm(logs[d], 1) for d in runs}
        fired = ", ".join(f"{run}@{u}" for run, u in alarms.items() if u is not None) or "none"
        lines.append(f"| {arm} | {seconds:.1f} | {max(peaks):.2f} | {fired} |" if peaks else
                     f"| {arm} | {seconds:.1f} | not logged | {fired} |")
    return lines


def plot_accuracy(numbers: dict[str, dict[str, tuple[float, float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(numbers)
    for j, key in enumerate(k for k in next(iter(numbers.values()))):
        xs = [i + (j - 1) * 0.25 for i in range(len(names))]
        ax.errorbar(xs, [numbers[n][key][0] for n in names], yerr=[numbers[n][key][1] for n in names],
                    fmt="o", capsize=3, label=key)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(arms: dict[str, list[str]], logs: dict[str, list[dict]], path: str) -> None:
    """Each curve is the mean over an arm's seeds at every update that has the value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, len(CURVES) // 2, figsize=(2 * len(CURVES), 6.4))
    axes = grid.flatten()
    for arm, runs in arms.items():
        for ax, (key, title) in zip(axes, CURVES):
            points: dict[int, list[float]] = defaultdict(list)
            for d in runs:
                for row in logs[d]:
                    if key in row:
                        points[row["update"]].append(row[key])
            xs = sorted(points)
            ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o" if key.startswith("eval") else None,
                    label=arm)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("update")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wall_times(stages: list[str], arms: dict[str, list[str]]) -> list[str]:
    lines = ["| stage | wall time (s) |", "|---|---|"]
    for d in stages + [r for runs in arms.values() for r in runs]:
        m = read_json(os.path.join(d, "metrics.json"))
        secs = m.get("wall_seconds", m.get("stage_seconds"))
        lines.append(f"| {d} | {secs if secs is not None else 'not recorded'} |")
    return lines


def run(cfg: DictConfig) -> dict:
    if not cfg.runs:
        raise ShepherdError("give the folders to report on: shepherd report RUN_DIR...")
    arms, stages = classify(list(cfg.runs))
    os.makedirs(cfg.output_dir, exist_ok=True)
    parts = [f"# Report: {cfg.experiment}", ""]
    out: dict[str, Any] = {"arms": len(arms)}
    if arms:
        lines, numbers = accuracy_table(arms)
        plot_accuracy(numbers, os.path.join(cfg.output_dir, f"{cfg.name}_accuracy.png"))
        logs = {d: read_jsonl(os.path.join(d, "log.jsonl")) for runs in arms.values() for d in runs}
        plot_curves(arms, logs, os.path.join(cfg.output_dir, f"{cfg.name}_curves.png"))
        parts += ["## Held-out accuracy", "", "Final evaluation on the test split; ± is a 95% interval over seeds "
                  "(t), or over problems when an arm has one seed. The SFT row is the starting policy evaluated "
                  "by every run on the same problems with the same seeds.", "", *lines, ""]
        extra = []
        for pair in cfg.pairs:
            a, _, b = pair.partition(":")
            if a not in arms or b not in arms:
                raise ShepherdError(f"pairs: '{pair}' names an arm not among the runs ({', '.join(sorted(arms))})")
            extra.append((a, b))
        parts += [f"- {difference(arms, a, b)}" for a, b in comparisons(list(arms)) + extra]
        parts += ["", f"![accuracy]({cfg.name}_accuracy.png)", "", "## Training curves", "",
                  "True accuracy beside the learned reward: when the reward rises and accuracy falls, the policy "
                  "is hacking the reward model.", "", f"![curves]({cfg.name}_curves.png)", "",
                  "## Cost and the hacking alarm", "", "Wall time per update (mean over seeds) and the highest "
                  "peak memory of an update (GPU allocated, else the process's resident set); the runs whose logs "
                  "show validation accuracy falling while the learned reward held or rose (`hacking_patience=1` "
                  "would stop them there).", "", *costs(arms, logs), ""]
        out.update({f"{arm}_{k}": round(v[0], 4) for arm, ks in numbers.items() for k, v in ks.items()})
    for name, title in (("verify.md", "Verification (best-of-N)"), ("audit.md", "Label quality (annotation audit)"),
                        ("eval_prm.md", "First wrong step (ProcessBench protocol)")):
        for d in stages:
            if os.path.isfile(os.path.join(d, name)):
                with open(os.path.join(d, name)) as f:
                    body = re.sub(r"^#+ .*\n", "", f.read(), count=1)
                parts += [f"## {title}", "", f"From `{d}`.", "", body.strip(), ""]
    parts += ["## Wall time of each stage", "", *wall_times(stages, arms), ""]
    path = os.path.join(cfg.output_dir, f"{cfg.name}.md")
    write_atomic(path, "\n".join(parts))
    out["report"] = path
    return out


def main(argv: list[str] | None = None) -> dict:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    dirs = [a for a in argv if not a.startswith("-") and "=" not in a]
    rest = [a for a in argv if a not in dirs]
    return stage_main("report", ReportConfig, run, __doc__, rest + ([f"runs={json.dumps(dirs)}"] if dirs else []),
                      sidecar=sidecar_prefix)


def sidecar_prefix(cfg: DictConfig) -> str:
    """Reports of other names beside `report.md` keep their own config, metrics and environment
    (`world_seed1_config.yaml`, ...), so one report never overwrites another's in a shared folder."""
    return "" if cfg.name == "report" else f"{cfg.name}_"


if __name__ == "__main__":
    main()
