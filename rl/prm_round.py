"""`shepherd prm-round --config FILE policy=RUN/policy`: one more round of PRM labels, on a PPO policy's
own mistakes, and a PRM trained on every round's labels.

A PRM only learns to check the mistakes its training samples hold; a policy trained against it moves
its mistakes to where it does not look (arith_copy: result-digit slips, 0.1% of the SFT policy's
samples, 11% of the PRM-PPO policy's, 4% of them flagged). A round samples the PPO policy on the
training problems (the `sample` section), labels those samples by Monte-Carlo completions (the
`annotate` section) with the policy that PPO run started from, so that a label keeps one meaning across
rounds (can the SFT policy still finish from here), and trains a PRM (the `train_prm` section) on the
`train_prm` data plus the labels of `earlier_rounds` and this one. Each part is the ordinary stage in
its own process, so a killed round resumes where it stopped.

    shepherd prm-round --config configs/experiments/arith_copy.yaml \
        policy=outputs/arith_copy/ppo-prm/seed0/policy output_dir=outputs/arith_copy/prm-round2
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from reward.config import load_config
from reward.errors import ShepherdError
from reward.io import write_atomic
from reward.train import RewardTrainConfig
from rl.pipeline import LaunchConfig, experiment_stage_main, run_stage


@dataclass
class PrmRoundConfig(LaunchConfig):
    experiment_file: str = ""  # set from --config
    policy: str = ""  # the PPO run's policy folder whose samples this round labels
    completer: str = ""  # empty: the policy that PPO run started from (key policy of its config.yaml)
    earlier_rounds: list[str] = field(default_factory=list)  # output folders of rounds 2.. before this one
    train_steps: int = 0  # 0: the train_prm section's train.steps


def started_from(policy: str) -> str:
    """The starting policy of the PPO run that wrote `policy` (<run>/policy beside <run>/config.yaml)."""
    config = os.path.join(os.path.dirname(os.path.normpath(policy)), "config.yaml")
    if not os.path.isfile(config):
        raise ShepherdError(f"no {config} beside policy {policy}: give the completer (key completer)")
    start = OmegaConf.load(config).get("policy")
    if not start:
        raise ShepherdError(f"{config} names no starting policy (key policy): give the completer (key completer)")
    return str(start)


def merge_rounds(paths: list[str], out: str) -> int:
    """Every round's stepwise records in one file (written atomically); the number of records."""
    lines = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            lines += [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
    write_atomic(out, "".join(lines))
    return len(lines)


def run(cfg: DictConfig) -> dict:
    if not cfg.experiment_file:
        raise ShepherdError("prm-round needs the experiment file: shepherd prm-round --config FILE policy=DIR")
    if not cfg.policy:
        raise ShepherdError("no policy given (key policy): the policy folder of a PPO run, e.g. <run>/seed0/policy")
    completer = cfg.completer or started_from(cfg.policy)
    first = load_config(RewardTrainConfig, "train-prm", cfg.experiment_file).data
    labels = [first] + [os.path.join(r, "annotate", "stepwise.jsonl") for r in cfg.earlier_rounds]
    for path in labels:  # before an hour of sampling and labelling, not after
        if not os.path.isfile(path):
            raise ShepherdError(f"labels of an earlier round not found: {path} (keys earlier_rounds, train_prm.data)")
    out, exp = cfg.output_dir, cfg.experiment_file
    sample, annotate, train = (os.path.join(out, s) for s in ("sample", "annotate", "train-prm"))
    seconds = {
        "sample": run_stage("sample", exp, sample, [f"policy={cfg.policy}"], cfg.num_gpus, cfg.hostfile),
        "annotate": run_stage("annotate", exp, annotate, [f"input={sample}/samples.jsonl", f"completer={completer}",
                                                           "audit=false"], cfg.num_gpus, cfg.hostfile),
    }
    data = os.path.join(out, "data.jsonl")
    records = merge_rounds(labels + [os.path.join(annotate, "stepwise.jsonl")], data)
    steps = [f"train.steps={cfg.train_steps}"] if cfg.train_steps else []
    seconds["train_prm"] = run_stage("train-prm", exp, train, [f"data={data}", *steps], cfg.num_gpus, cfg.hostfile)
    times = {f"{stage}_seconds": round(v, 1) for stage, v in seconds.items()}
    return {"round": len(labels) + 1, "completer": completer, "records": records,
            "prm": os.path.join(train, "model"), **times}


def main(argv: list[str] | None = None) -> dict:
    return experiment_stage_main("prm-round", PrmRoundConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
