"""`shepherd pipeline --config FILE`: every stage of an experiment in order, then the PPO arms over
seeds (and, with `prm_rounds`, more rounds of PRM labels on the PRM arm's own policy, each followed
by that arm again), then the report. A stage whose `metrics.json` exists is complete and skipped (a
second run takes seconds); a partial one is run again and resumes (sample and annotate by chunks, PPO
from its last checkpoint). Each stage runs in its own process, as a user would start it.

    shepherd pipeline --config configs/experiments/arith_tiny.yaml
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from reward.config import StageConfig, load_experiment, stage_output_dir
from reward.errors import ShepherdError
from reward.stage import stage_main

REWARD_STAGES = ["world", "eval", "sample", "annotate", "train-prm", "train-orm", "verify", "eval-prm"]


@dataclass
class PipelineConfig(StageConfig):
    experiment_file: str = ""  # set from --config
    stages: list[str] = field(default_factory=lambda: list(REWARD_STAGES))
    arms: list[str] = field(default_factory=list)  # experiment files with a `ppo:` section (paths from the repo root)
    seeds: list[int] = field(default_factory=lambda: [0])  # every arm runs once per seed: <arm output_dir>/seed<N>
    report: bool = True
    # Rounds 2..prm_rounds of PRM labels on the PRM arm's own mistakes: `shepherd prm-round` on the
    # policy of its first seed (into the prm_round section's output_dir + <r>), then that arm again over the seeds with
    # the new PRM (into <arm output_dir>-r<r>/seed<N>). 1: the arms' PRM only.
    prm_rounds: int = 1
    prm_arm: str = ""  # the arm the rounds retrain; empty: the first arm whose reward.type is prm or prm_min


def arm_runs(out_dir: str, seeds: list[int]) -> list[tuple[int, str]]:
    """An arm's run folders under its output folder, one per seed: <out_dir>/seed<N>."""
    return [(seed, os.path.join(out_dir, f"seed{seed}")) for seed in seeds]


def run_stage(stage: str, config_file: str, out_dir: str, extra: list[str]) -> float:
    """Run one stage in a fresh process unless its metrics.json says it is complete; its wall time."""
    if os.path.isfile(os.path.join(out_dir, "metrics.json")):
        print(f"[pipeline] {stage}: complete, skipped ({out_dir})", flush=True)
        return 0.0
    print(f"[pipeline] {stage} -> {out_dir}", flush=True)
    started = time.time()
    cmd = [sys.executable, "-m", "rl.cli", stage, "--config", config_file, f"output_dir={out_dir}", *extra]
    if subprocess.run(cmd).returncode != 0:
        raise ShepherdError(f"stage {stage} failed (rerun `{' '.join(cmd[2:])}` to see why; finished stages stay done)")
    return time.time() - started


def round_arm(cfg: DictConfig) -> str:
    """The arm whose policy each PRM round labels and which reruns with that round's PRM."""
    from rl.rewards import RewardConfig

    if cfg.prm_arm:
        if not os.path.isfile(cfg.prm_arm):
            raise ShepherdError(f"PPO arm file not found: {cfg.prm_arm} (key prm_arm)")
        return cfg.prm_arm
    for arm in cfg.arms:
        if OmegaConf.select(load_experiment(arm), "ppo.reward.type", default=RewardConfig.type) in ("prm", "prm_min"):
            return arm
    raise ShepherdError("prm_rounds > 1 needs an arm with reward.type prm or prm_min (key arms or prm_arm)")


def prm_rounds(cfg: DictConfig) -> list[str]:
    """Rounds 2..prm_rounds: new PRM labels on the last round's policy, then the PRM arm with the new PRM."""
    if cfg.prm_rounds <= 1:
        return []
    arm = round_arm(cfg)
    arm_out, seeds = stage_output_dir(arm, "ppo"), list(cfg.seeds)
    policy, rounds, runs = os.path.join(arm_runs(arm_out, seeds)[0][1], "policy"), [], []
    for r in range(2, cfg.prm_rounds + 1):
        round_out = stage_output_dir(cfg.experiment_file, "prm-round") + str(r)
        run_stage("prm-round", cfg.experiment_file, round_out,
                  [f"policy={policy}", f"earlier_rounds=[{','.join(rounds)}]"])
        rounds.append(round_out)
        round_runs = arm_runs(f"{arm_out}-r{r}", seeds)
        for seed, out in round_runs:
            run_stage("ppo", arm, out, [f"seed={seed}", "resume=true", f"reward.model={round_out}/train-prm/model"])
            runs.append(out)
        policy = os.path.join(round_runs[0][1], "policy")
    return runs


def run(cfg: DictConfig) -> dict:
    from rl.cli import STAGES

    if not cfg.experiment_file:
        raise ShepherdError("pipeline needs the experiment file: shepherd pipeline --config FILE")
    unknown = [s for s in cfg.stages if s not in STAGES or s in ("pipeline", "ppo", "prm-round", "report")]
    if unknown:
        raise ShepherdError(f"unknown stage '{unknown[0]}' in key stages; use some of {', '.join(REWARD_STAGES)}")
    for arm in cfg.arms:
        if not os.path.isfile(arm):
            raise ShepherdError(f"PPO arm file not found: {arm} (key arms)")
    seconds: dict[str, float] = {}
    for stage in cfg.stages:
        seconds[stage] = run_stage(stage, cfg.experiment_file, stage_output_dir(cfg.experiment_file, stage), [])
    runs = []
    for arm in cfg.arms:
        for seed, out in arm_runs(stage_output_dir(arm, "ppo"), list(cfg.seeds)):
            seconds[out] = run_stage("ppo", arm, out, [f"seed={seed}", "resume=true"])
            runs.append(out)
    runs += prm_rounds(cfg)
    if cfg.report:
        stage_dirs = [stage_output_dir(cfg.experiment_file, s) for s in cfg.stages]
        cmd = [sys.executable, "-m", "rl.report", *stage_dirs, *runs, f"output_dir={cfg.output_dir}",
               f"experiment={cfg.experiment}"]
        if subprocess.run(cmd).returncode != 0:
            raise ShepherdError("the report failed (every stage before it is complete)")
    return {"stages_run": sum(v > 0 for v in seconds.values()), "ppo_runs": len(runs),
            "report": os.path.join(cfg.output_dir, "report.md") if cfg.report else ""}


def experiment_stage_main(stage: str, schema: type, run: Callable[[DictConfig], dict], doc: str,
                          argv: list[str] | None) -> dict:
    """stage_main for a stage that starts other stages with its experiment file (key experiment_file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config", default="")
    config = finder.parse_known_args(argv)[0].config  # the stage's own parser does not keep the file name
    return stage_main(stage, schema, run, doc, argv + ([f"experiment_file={config}"] if config else []))


def main(argv: list[str] | None = None) -> dict:
    return experiment_stage_main("pipeline", PipelineConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
