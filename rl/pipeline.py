"""`shepherd pipeline --config FILE`: every stage of an experiment in order, then the PPO arms over
seeds (and, with `prm_rounds`, more rounds of PRM labels on the PRM arm's own policy, each followed
by that arm again), then the report. A stage whose `metrics.json` exists is complete and skipped (a
second run takes seconds); a partial one is run again and resumes (sample and annotate by chunks, PPO
from its last checkpoint). Each stage runs in its own process (or ranks), as a user would start it.

    shepherd pipeline --config configs/experiments/arith_tiny.yaml

Stages that train (sft, train-prm, train-orm, ppo) and stages that sample (sample, annotate) start
under the `deepspeed` launcher when `num_gpus` > 1 (or a `hostfile` is given): DeepSpeed ranks for
training, data-parallel ranks that share the sampling chunks (`reward.shards`) with the same records as
one process. On a machine without a GPU, `num_gpus` N starts N gloo ranks with one thread each.
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

from reward.config import ARMS_KEY, STAGES, StageConfig, arm_names, arm_overrides, load_experiment, stage_output_dir
from reward.errors import ShepherdError
from reward.stage import stage_main

REWARD_STAGES = ["world", "eval", "sample", "annotate", "train-prm", "train-orm", "verify", "eval-prm"]
AFTER_ARMS = ("error-kinds", "ppo", "prm-round", "report", "pipeline")  # not in key stages: they follow the arms
LAUNCHED_STAGES = ("sample", "annotate", "sft", "train-prm", "train-orm", "ppo")  # under deepspeed when num_gpus > 1


@dataclass
class LaunchConfig(StageConfig):
    """Keys of a stage that starts other stages: the ranks each of LAUNCHED_STAGES gets."""

    num_gpus: int = 0  # > 1: `deepspeed --num_gpus N` (no GPU here: N gloo ranks); 0 or 1: one process
    # Several nodes: `deepspeed --hostfile FILE` (num_gpus, if > 0, then counts per node; MASTER_ADDR
    # from the environment pins the first host).
    hostfile: str = ""


@dataclass
class PipelineConfig(LaunchConfig):
    experiment_file: str = ""  # set from --config
    stages: list[str] = field(default_factory=lambda: list(REWARD_STAGES))
    arms: list[str] = field(default_factory=list)  # names under the file's `arms:` to run; empty: all of them
    seeds: list[int] = field(default_factory=lambda: [0])  # every arm runs once per seed: <arm output_dir>/seed<N>
    report: bool = True
    # Rounds 2..prm_rounds of PRM labels on the PRM arm's own mistakes: `shepherd prm-round` on the
    # policy of its first seed (into the prm_round section's output_dir + <r>), then that arm again over the seeds with
    # the new PRM (into <arm output_dir>-r<r>/seed<N>). 1: the arms' PRM only.
    prm_rounds: int = 1
    prm_arm: str = ""  # the arm (a name) the rounds retrain; empty: the first arm whose reward.type is prm or prm_min


def arm_runs(out_dir: str, seeds: list[int]) -> list[tuple[int, str]]:
    """An arm's run folders under its output folder, one per seed: <out_dir>/seed<N>."""
    return [(seed, os.path.join(out_dir, f"seed{seed}")) for seed in seeds]


def stage_command(stage: str, config_file: str, out_dir: str, extra: list[str], num_gpus: int = 0,
                  hostfile: str = "") -> tuple[list[str], dict[str, str]]:
    """The command and environment of one stage: `python -m rl.cli STAGE ...`, or for LAUNCHED_STAGES
    with num_gpus > 1 or a hostfile the deepspeed launcher on the stage's module."""
    from rl.cli import PRESETS

    args = ["--config", config_file, f"output_dir={out_dir}", *extra]
    if stage not in LAUNCHED_STAGES or (num_gpus <= 1 and not hostfile):
        return [sys.executable, "-m", "rl.cli", stage, *args], dict(os.environ)
    import torch

    from rl.engines import free_port

    where = []
    if hostfile:
        if not os.path.isfile(hostfile):
            raise ShepherdError(f"hostfile not found: {hostfile} (key hostfile)")
        where = ["--hostfile", hostfile]
        if os.environ.get("MASTER_ADDR"):
            where += ["--master_addr", os.environ["MASTER_ADDR"]]
    if num_gpus > 0:
        where += ["--num_gpus", str(num_gpus)]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")  # gloo ranks share the cores
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", *where, "--master_port", str(free_port()),
           "--module", STAGES[stage][0], *args, *PRESETS.get(stage, [])]
    return cmd, env


def run_stage(stage: str, config_file: str, out_dir: str, extra: list[str], num_gpus: int = 0,
              hostfile: str = "") -> float:
    """Run one stage in fresh processes unless its metrics.json says it is complete; its wall time."""
    if os.path.isfile(os.path.join(out_dir, "metrics.json")):
        print(f"[pipeline] {stage}: complete, skipped ({out_dir})", flush=True)
        return 0.0
    print(f"[pipeline] {stage} -> {out_dir}", flush=True)
    started = time.time()
    cmd, env = stage_command(stage, config_file, out_dir, extra, num_gpus, hostfile)
    if subprocess.run(cmd, env=env).returncode != 0:
        raise ShepherdError(f"stage {stage} failed (rerun `{' '.join(cmd[2:])}` to see why; finished stages stay done)")
    return time.time() - started


def pipeline_arms(cfg: DictConfig) -> list[str]:
    """The arms to run: the names in key arms (each declared in the file), else every arm of the file."""
    declared = arm_names(cfg.experiment_file)
    unknown = [a for a in cfg.arms if a not in declared]
    if unknown:
        raise ShepherdError(f"unknown arm '{unknown[0]}' in key arms; {cfg.experiment_file} declares "
                            f"{', '.join(declared) or f'none (top-level key {ARMS_KEY})'}")
    return list(cfg.arms) or declared


def round_arm(cfg: DictConfig) -> str:
    """The arm whose policy each PRM round labels and which reruns with that round's PRM."""
    from rl.rewards import RewardConfig

    raw = load_experiment(cfg.experiment_file)
    if cfg.prm_arm:
        arm_overrides(raw, cfg.prm_arm, cfg.experiment_file, "prm_arm")  # an unknown name: an error naming the arms
        return cfg.prm_arm
    section = OmegaConf.select(raw, "ppo.reward.type", default=RewardConfig.type)
    for arm in pipeline_arms(cfg):
        if OmegaConf.select(arm_overrides(raw, arm, cfg.experiment_file), "reward.type", default=section) in ("prm", "prm_min"):
            return arm
    raise ShepherdError("prm_rounds > 1 needs an arm with reward.type prm or prm_min (key arms or prm_arm)")


def launch_overrides(cfg: DictConfig) -> list[str]:
    """The launch keys, passed on to a stage that starts stages itself (prm-round)."""
    return [f"num_gpus={cfg.num_gpus}"] + ([f"hostfile={cfg.hostfile}"] if cfg.hostfile else [])


def prm_rounds(cfg: DictConfig) -> list[str]:
    """Rounds 2..prm_rounds: new PRM labels on the last round's policy, then the PRM arm with the new PRM."""
    if cfg.prm_rounds <= 1:
        return []
    arm = round_arm(cfg)
    arm_out, seeds = stage_output_dir(cfg.experiment_file, "ppo", arm), list(cfg.seeds)
    policy, rounds, runs = os.path.join(arm_runs(arm_out, seeds)[0][1], "policy"), [], []
    for r in range(2, cfg.prm_rounds + 1):
        round_out = stage_output_dir(cfg.experiment_file, "prm-round") + str(r)
        run_stage("prm-round", cfg.experiment_file, round_out,
                  [f"policy={policy}", f"earlier_rounds=[{','.join(rounds)}]", *launch_overrides(cfg)])
        rounds.append(round_out)
        round_runs = arm_runs(f"{arm_out}-r{r}", seeds)
        for seed, out in round_runs:
            run_stage("ppo", cfg.experiment_file, out, [f"arm={arm}", f"seed={seed}", "resume=true",
                                                        f"reward.model={round_out}/train-prm/model"], cfg.num_gpus, cfg.hostfile)
            runs.append(out)
        policy = os.path.join(round_runs[0][1], "policy")
    return runs


def run(cfg: DictConfig) -> dict:
    if not cfg.experiment_file:
        raise ShepherdError("pipeline needs the experiment file: shepherd pipeline --config FILE")
    allowed = [s for s in STAGES if s not in AFTER_ARMS]
    unknown = [s for s in cfg.stages if s not in allowed]
    if unknown:
        raise ShepherdError(f"unknown stage '{unknown[0]}' in key stages; use some of {', '.join(allowed)}")
    arms = pipeline_arms(cfg)
    seconds: dict[str, float] = {}
    for stage in cfg.stages:
        seconds[stage] = run_stage(stage, cfg.experiment_file, stage_output_dir(cfg.experiment_file, stage), [],
                                   cfg.num_gpus, cfg.hostfile)
    runs = []
    for arm in arms:
        for seed, out in arm_runs(stage_output_dir(cfg.experiment_file, "ppo", arm), list(cfg.seeds)):
            seconds[out] = run_stage("ppo", cfg.experiment_file, out, [f"arm={arm}", f"seed={seed}", "resume=true"],
                                     cfg.num_gpus, cfg.hostfile)
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
