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

With `jobs` N > 1, up to N stages run at once, each as soon as the stages whose outputs its section
reads are done (the rule arm beside annotation, the ORM beside it too, the PPO arms side by side), the
one on the longest chain to the end first, each writing its output to <its output_dir>.log. Each gets
its share of the cores, fixed by the file; a stage nothing can run beside (the world) gets them all.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from reward.config import (ARMS_KEY, STAGES, StageConfig, arm_names, arm_overrides, load_experiment, stage_inputs,
                           stage_output_dir)
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
    # Stages at once, each once the stages it reads from are done (a PPO arm beside annotation, the PRM
    # beside the ORM), sharing the CPU cores; each one's output goes to <its output_dir>.log. Small
    # models on few cores: one thread each does more in all than two threads on one stage. 1: in order.
    jobs: int = 1


def arm_runs(out_dir: str, seeds: list[int]) -> list[tuple[int, str]]:
    """An arm's run folders under its output folder, one per seed: <out_dir>/seed<N>."""
    return [(seed, os.path.join(out_dir, f"seed{seed}")) for seed in seeds]


def stage_command(stage: str, config_file: str, out_dir: str, extra: list[str], num_gpus: int = 0,
                  hostfile: str = "", threads: int = 0) -> tuple[list[str], dict[str, str]]:
    """The command and environment of one stage: `python -m rl.cli STAGE ...` (with `threads` > 0 and no
    OMP_NUM_THREADS set, that many CPU threads), or for LAUNCHED_STAGES with num_gpus > 1 or a hostfile
    the deepspeed launcher on the stage's module."""
    from rl.cli import PRESETS

    args = ["--config", config_file, f"output_dir={out_dir}", *extra]
    if stage not in LAUNCHED_STAGES or (num_gpus <= 1 and not hostfile):
        env = dict(os.environ)
        if threads > 0:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        return [sys.executable, "-m", "rl.cli", stage, *args], env
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


@dataclass
class Job:
    """One stage run of a pipeline: `after` names the earlier jobs whose outputs it reads."""

    name: str
    stage: str
    out_dir: str
    extra: list[str]
    after: set[str] = field(default_factory=set)
    threads: int = 0  # CPU threads (OMP_NUM_THREADS); 0: torch's default, every core
    rank: int = 0  # the longest chain of work from its start to the pipeline's end: the larger starts first


# A PPO run counts as two stages in a job's rank: after the world it is the longest stage (the demo's
# arms take about as long as annotation or a reward model and the next stage together).
STAGE_WEIGHT = {"ppo": 2}


def order_jobs(jobs: list[Job], config_file: str, slots: int) -> list[Job]:
    """Each job after the earlier ones it reads from (a path under their output folder, in its section of
    the file), and its CPU threads: every core when no other job can run beside it (all of them come
    before or after it), else its share of `slots`. Fixed by the file, not by timing, so a run's numbers
    do not depend on which stage happened to finish first. And its rank: the weight of the longest chain
    of jobs from it to the end, so that of the ready jobs those on the critical path start first."""
    if slots <= 1:
        return jobs
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    before: dict[str, set[str]] = {}  # every job a job waits for, directly or not
    for i, job in enumerate(jobs):
        reads = stage_inputs(config_file, job.stage, job.extra)
        job.after = {a.name for a in jobs[:i] if any(r == a.out_dir or r.startswith(a.out_dir.rstrip("/") + "/")
                                                      for r in reads)}
        before[job.name] = set().union(job.after, *(before[a] for a in job.after))
    for job in reversed(jobs):  # a job's dependents come after it in the list
        job.rank = STAGE_WEIGHT.get(job.stage, 1) + max((o.rank for o in jobs if job.name in o.after), default=0)
    for job in jobs:
        alone = all(job.name in before[o.name] or o.name in before[job.name] for o in jobs if o is not job)
        job.threads = cores if alone else max(1, cores // slots)
    return jobs


def ready_jobs(pending: list[Job], waiting: set[str], slots: int) -> list[Job]:
    """The pending jobs that wait for no other, in the order to start them: one slot, the list's order;
    more, the longest chain to the end first (the critical path), then PPO (the longest stage)."""
    ready = [j for j in pending if not j.after & waiting]
    return ready if slots <= 1 else sorted(ready, key=lambda j: (-j.rank, j.stage != "ppo"))


def run_jobs(jobs: list[Job], config_file: str, slots: int = 1, num_gpus: int = 0, hostfile: str = "") -> int:
    """Run the jobs, up to `slots` at once, each once the jobs it reads from are done; a job whose
    metrics.json exists is complete and skipped. One slot: in list order, output to this terminal; more:
    each job's output into <out_dir>.log. A failure stops the others (they resume on the next run) and
    names the stage. Returns how many jobs ran."""
    pending, running, ran = [], {}, 0
    for job in order_jobs(jobs, config_file, slots):
        if os.path.isfile(os.path.join(job.out_dir, "metrics.json")):
            print(f"[pipeline] {job.stage}: complete, skipped ({job.out_dir})", flush=True)
        else:
            pending.append(job)
    waiting = {j.name for j in pending}
    while pending or running:
        for job in ready_jobs(pending, waiting, slots)[:slots - len(running)]:
            cmd, env = stage_command(job.stage, config_file, job.out_dir, job.extra, num_gpus, hostfile, job.threads)
            log = None
            if slots > 1:
                os.makedirs(os.path.dirname(os.path.abspath(job.out_dir)), exist_ok=True)
                log = open(f"{job.out_dir.rstrip('/')}.log", "a")  # append-only: a resumed stage keeps its first try's lines
            print(f"[pipeline] {job.stage} -> {job.out_dir}" + (f" (log: {log.name})" if log else ""), flush=True)
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
            running[job.name] = (job, proc, log, time.time())
            pending.remove(job)
        time.sleep(0.2)
        for name, (job, proc, log, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if log:
                log.close()
            if proc.returncode != 0:
                for _, other, other_log, _ in running.values():
                    other.terminate()
                    other.wait()
                    if other_log:
                        other_log.close()
                tail = ""
                if log:
                    with open(log.name) as f:
                        tail = f"; the end of {log.name}:\n" + "".join(f.readlines()[-15:])
                raise ShepherdError(f"stage {job.name} failed (rerun `{' '.join(cmd_of(job, config_file))}` to see "
                                    f"why; finished stages stay done){tail}")
            waiting.discard(name)
            ran += 1
            print(f"[pipeline] {job.stage} done in {time.time() - started:.0f} s ({job.out_dir})", flush=True)
            if log:  # its own print of metrics.json went to the log
                with open(os.path.join(job.out_dir, "metrics.json")) as f:
                    print(json.dumps({k: v for k, v in json.load(f).items() if not isinstance(v, (list, dict))}), flush=True)
    return ran


def cmd_of(job: Job, config_file: str) -> list[str]:
    """The command a user reruns a job with."""
    return ["shepherd", job.stage, "--config", config_file, f"output_dir={job.out_dir}", *job.extra]


def run_stage(stage: str, config_file: str, out_dir: str, extra: list[str], num_gpus: int = 0,
              hostfile: str = "") -> float:
    """Run one stage in fresh processes unless its metrics.json says it is complete; its wall time."""
    started = time.time()
    ran = run_jobs([Job(stage, stage, out_dir, extra)], config_file, 1, num_gpus, hostfile)
    return time.time() - started if ran else 0.0


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
    jobs = [Job(stage, stage, stage_output_dir(cfg.experiment_file, stage), []) for stage in cfg.stages]
    runs = []
    for arm in pipeline_arms(cfg):
        for seed, out in arm_runs(stage_output_dir(cfg.experiment_file, "ppo", arm), list(cfg.seeds)):
            jobs.append(Job(f"ppo-{arm}/seed{seed}", "ppo", out, [f"arm={arm}", f"seed={seed}", "resume=true"]))
            runs.append(out)
    ran = run_jobs(jobs, cfg.experiment_file, cfg.jobs, cfg.num_gpus, cfg.hostfile)
    runs += prm_rounds(cfg)
    if cfg.report:
        stage_dirs = [stage_output_dir(cfg.experiment_file, s) for s in cfg.stages]
        cmd = [sys.executable, "-m", "rl.report", *stage_dirs, *runs, f"output_dir={cfg.output_dir}",
               f"experiment={cfg.experiment}"]
        if subprocess.run(cmd).returncode != 0:
            raise ShepherdError("the report failed (every stage before it is complete)")
    return {"stages_run": ran, "ppo_runs": len(runs),
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
