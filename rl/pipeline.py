"""`shepherd pipeline --config FILE`: every stage of an experiment in order, then the PPO arms over
seeds, then the report. A stage whose `metrics.json` exists is complete and skipped (a second run takes
seconds); a partial one is run again and resumes (sample and annotate by chunks, PPO from its last
checkpoint). Each stage runs in its own process, as a user would start it.

    shepherd pipeline --config configs/experiments/arith_tiny.yaml
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from omegaconf import DictConfig

from reward.config import StageConfig, stage_output_dir
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


def arm_runs(arm: str, seeds: list[int]) -> list[tuple[int, str]]:
    return [(seed, os.path.join(stage_output_dir(arm, "ppo"), f"seed{seed}")) for seed in seeds]


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


def run(cfg: DictConfig) -> dict:
    from rl.cli import STAGES

    if not cfg.experiment_file:
        raise ShepherdError("pipeline needs the experiment file: shepherd pipeline --config FILE")
    unknown = [s for s in cfg.stages if s not in STAGES or s in ("pipeline", "ppo", "report")]
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
        for seed, out in arm_runs(arm, list(cfg.seeds)):
            seconds[out] = run_stage("ppo", arm, out, [f"seed={seed}", "resume=true"])
            runs.append(out)
    if cfg.report:
        stage_dirs = [stage_output_dir(cfg.experiment_file, s) for s in cfg.stages]
        cmd = [sys.executable, "-m", "rl.report", *stage_dirs, *runs, f"output_dir={cfg.output_dir}",
               f"experiment={cfg.experiment}"]
        if subprocess.run(cmd).returncode != 0:
            raise ShepherdError("the report failed (every stage before it is complete)")
    return {"stages_run": sum(v > 0 for v in seconds.values()), "ppo_runs": len(runs),
            "report": os.path.join(cfg.output_dir, "report.md") if cfg.report else ""}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config", default="")
    config = finder.parse_known_args(argv)[0].config  # the stage's own parser does not keep the file name
    return stage_main("pipeline", PipelineConfig, run, __doc__, argv + ([f"experiment_file={config}"] if config else []))


if __name__ == "__main__":
    main()
