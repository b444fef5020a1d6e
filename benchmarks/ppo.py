"""Seconds per PPO iteration (rollout, scoring, update) of our trainer (`rl.ppo`, ORM reward) and of
TRL's PPO trainer (`trl.experimental.ppo`, trl 1.12.0), and the ratio ours / TRL (target <= 0.5),
measured in one run on the same policy, prompts, batch and lengths; then the bytes of parameters and
optimiser that each of 2 ranks holds for the actor under ZeRO-2 and ZeRO-3.

    python benchmarks/ppo.py [--policy outputs/arith_copy/world/policy --orm outputs/arith_copy/train-orm/model]

The default shape is the demo's update (32 prompts x 16 samples as one minibatch of 512 rollouts, in
passes of arith_tiny's `micro_batch_size`, 2 epochs, up to 160 new tokens); `--prompts 8 --samples 4
--minibatch 16 --max-new-tokens 48` is a small one where fixed costs weigh more.

Needs `pip install trl==1.12.0` (the `trl` extra). Without --policy it builds a tiny random Llama with
the world's tokenizer (speed does not depend on the weights; a random policy rarely stops early, so
rollouts run to --max-new-tokens); without --orm the policy folder serves as the ORM. Each trainer runs
3 iterations and the median of iterations 2-3 is reported (the first one is warm-up). Both trainers
run with the same torch threads: on a CPU shared with other jobs set OMP_NUM_THREADS=1 (contended
threads made single iterations here swing from 9 to 21 s where one thread takes under 1 s).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from reward.config import load_config
from reward.generation import load_causal_lm, load_tokenizer
from reward.io import read_jsonl, write_json
from reward.prm import label_token_ids
from reward.tasks import load_task
from rl import engines
from rl.ppo import PPOConfig
from rl.sft import ModelConfig
from rl.world import save_random_policy

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "configs" / "experiments" / "arith_tiny.yaml"
ARM = ["arm=orm"]
ITERATIONS = 3  # the first is warm-up; the median of the others is reported
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# ----------------------------------------------------------------------------------- ours
def ours_seconds(args: argparse.Namespace, policy: str, orm: str, out: str) -> dict[str, float]:
    """`python -m rl.ppo` as a user runs it (one process, ZeRO-2 config); its log's `seconds` per update
    covers rollout, scoring and the PPO epochs (not the evaluations and checkpoint around them), and its
    phases (`time/*`)."""
    cmd = [sys.executable, "-m", "rl.ppo", "--config", str(EXPERIMENT), *ARM, f"policy={policy}", f"reward.model={orm}",
           f"output_dir={out}", f"ppo.updates={ITERATIONS}", f"ppo.prompts_per_update={args.prompts}",
           f"ppo.samples_per_prompt={args.samples}", f"ppo.minibatch_size={args.minibatch}",
           f"ppo.epochs={args.epochs}", f"ppo.max_new_tokens={args.max_new_tokens}", "ppo.temperature=1.0",
           "eval_every=1000", "eval_problems=8", "eval_samples=1", "final_eval_problems=8",
           "final_eval_samples=1", "checkpoint_every=1000"]
    run_or_exit(cmd, ENV)
    rows = read_jsonl(os.path.join(out, "log.jsonl"))[1:]
    return {k: statistics.median(r[k] for r in rows) for k in ("seconds", "time/rollout", "time/experience", "time/train")}


def run_or_exit(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], file=sys.stderr)
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")


# ----------------------------------------------------------------------------------- TRL
class Clock(TrainerCallback):
    """Wall time at the end of every TRL iteration (`on_step_end` fires once per PPO update)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, *_: Any, **__: Any) -> None:
        self.ends.append(time.perf_counter())


def orm_as_classifier(folder: str) -> Any:
    """The ORM as TRL needs it, a sequence-classification model: one logit l+ - l- (its sigmoid is the
    ORM's P(correct)), the head made of the ORM's output embeddings of '+' and '-'. TRL reads it at the
    response's last token, where our trainer reads the ORM at the last step tag."""
    from transformers import AutoModelForSequenceClassification

    _, good, bad = label_token_ids(load_tokenizer(folder, "orm"))
    lm_head = load_causal_lm(folder, "orm", device="cpu").get_output_embeddings().weight
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    with torch.no_grad():
        model.score.weight.copy_((lm_head[good] - lm_head[bad])[None])
    return model


def trl_seconds(args: argparse.Namespace, policy: str, orm: str, out: str) -> float:
    """TRL's PPOTrainer on the same shapes: a batch of prompts x samples rollouts (one per prompt row),
    minibatches of the same size, same epochs, response length, temperature and stop at EOS. Timed from
    the end of one iteration to the end of the next (`on_step_end` fires once per PPO update), so the
    set-up before `train()` and the first, warm-up iteration are left out."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig as TRLConfig, PPOTrainer

    rollouts = args.prompts * args.samples
    cfg = load_config(PPOConfig, "ppo", str(EXPERIMENT), ARM)
    task = load_task(cfg.task)
    tok = load_tokenizer(policy, "policy")
    tok.padding_side = "left"  # TRL generates from left-padded queries
    problems = task.problems(cfg.train_split, ITERATIONS * rollouts, seed=cfg.seed)
    data = Dataset.from_dict({"input_ids": [tok(task.format_prompt(q.question, tok))["input_ids"] for q in problems]})
    config = TRLConfig(
        output_dir=out, per_device_train_batch_size=rollouts, gradient_accumulation_steps=1,
        num_mini_batches=rollouts // args.minibatch, num_ppo_epochs=args.epochs, response_length=args.max_new_tokens,
        total_episodes=ITERATIONS * rollouts, local_rollout_forward_batch_size=rollouts, temperature=1.0,
        stop_token="eos", num_sample_generations=0, bf16=torch.cuda.is_available(), fp16=False,
        gradient_checkpointing=False,  # TRL's default is on; ours has none, so off for like with like
        report_to="none", save_strategy="no", disable_tqdm=True, seed=cfg.seed)
    value = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
    clock = Clock()
    trainer = PPOTrainer(args=config, processing_class=tok, model=AutoModelForCausalLM.from_pretrained(policy),
                         ref_model=AutoModelForCausalLM.from_pretrained(policy), reward_model=orm_as_classifier(orm),
                         train_dataset=data, value_model=value, eval_dataset=data, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # TRL's per-iteration metrics would bury the results
    trainer.train()
    return statistics.median(b - a for a, b in zip(clock.ends, clock.ends[1:]))


# ----------------------------------------------------------------------------------- memory
def nbytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def held_bytes(engine: Any, stage: int) -> dict[str, int]:
    """This rank's parameters (under ZeRO-3 only its shard, `ds_tensor`), the fp32 master partition the
    ZeRO wrapper keeps, and the base optimiser's states (Adam's moments of that partition)."""
    wrapper = engine.optimizer
    master = wrapper.fp32_partitioned_groups_flat if stage == 3 else wrapper.single_partition_of_fp32_groups
    states = [t for s in wrapper.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    params = [p.ds_tensor if stage == 3 else p for p in engine.module.parameters()]
    return {"params": nbytes(params), "fp32_master": nbytes(master), "optimizer_states": nbytes(states)}


def memory_worker(policy: str, stage: int, report: str) -> None:
    """One rank under the deepspeed launcher: the actor as rl.ppo builds it, one backward and step (so
    optimiser states exist), then this rank's bytes to REPORT/stage{S}_rank{R}.json."""
    rank, world, device = engines.init_distributed()
    cfg = engines.ds_config(str(REPO / f"configs/deepspeed/zero{stage}.json"), 1, 1.0, world, train=True)
    actor = engines.build(lambda: load_causal_lm(policy, "policy", device="cpu"), cfg, 1e-4, device)
    task = load_task(load_config(PPOConfig, "ppo", str(EXPERIMENT), ARM).task)
    prompt = task.format_prompt(task.problems("train", 1)[0].question)
    ids = load_tokenizer(policy, "policy")([prompt], return_tensors="pt")["input_ids"].to(device)
    actor.backward(actor(input_ids=ids, labels=ids).loss)
    actor.step()
    write_json(os.path.join(report, f"stage{stage}_rank{rank}.json"),
               {"stage": stage, "rank": rank, "world": world, **held_bytes(actor, stage)})


def memory_table(policy: str, ranks: int, report: str) -> list[dict[str, int]]:
    launcher = str(Path(sys.executable).parent / "deepspeed")
    for stage in (2, 3):
        run_or_exit([launcher, "--num_gpus", str(ranks), "--master_port", str(engines.free_port()), "--no_local_rank",
                     __file__, "--memory-worker", "--stage", str(stage), "--policy", policy, "--report", report],
                    {**ENV, "OMP_NUM_THREADS": "1"})
    rows = [json.loads(Path(f).read_text()) for f in glob.glob(os.path.join(report, "stage*_rank*.json"))]
    return sorted(rows, key=lambda r: (r["stage"], r["rank"]))


# ----------------------------------------------------------------------------------- main
def mib(n: int) -> str:
    return f"{n / 2**20:12.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="")
    parser.add_argument("--orm", default="")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per iteration")
    parser.add_argument("--samples", type=int, default=16, help="rollouts per prompt")
    parser.add_argument("--minibatch", type=int, default=512, help="rollouts per optimiser step")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the memory table")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--report", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.policy, args.stage, args.report)
        return
    with tempfile.TemporaryDirectory() as tmp:
        policy = args.policy or save_random_policy(os.path.join(tmp, "policy"),
                                                   ModelConfig(hidden_size=64, intermediate_size=128))
        orm = args.orm or policy
        ours = ours_seconds(args, policy, orm, os.path.join(tmp, "ours"))
        trl = trl_seconds(args, policy, orm, os.path.join(tmp, "trl"))
        os.makedirs(os.path.join(tmp, "memory"))
        memory = memory_table(policy, args.ranks, os.path.join(tmp, "memory"))
    print(f"policy: {args.policy or 'random tiny Llama (hidden 64)'}; ORM: {args.orm or 'the policy folder'}; "
          f"torch threads: {torch.get_num_threads()}")
    print(f"one iteration: {args.prompts} prompts x {args.samples} samples, minibatch {args.minibatch}, "
          f"{args.epochs} epochs, up to {args.max_new_tokens} new tokens (median of iterations 2-{ITERATIONS})")
    print(f"ours (rl.ppo, ORM):     {ours['seconds']:8.2f} s/iteration (rollout {ours['time/rollout']:.2f}, "
          f"experience {ours['time/experience']:.2f}, train {ours['time/train']:.2f})")
    print(f"TRL (experimental.ppo): {trl:8.2f} s/iteration")
    print(f"ratio ours / TRL: {ours['seconds'] / trl:.2f} (target <= 0.5)")
    print(f"\nactor bytes held per rank (MiB), {args.ranks} ranks, after one optimiser step:")
    print(f"{'stage':<7}{'rank':>5}{'params':>12}{'fp32 master':>12}{'Adam states':>12}{'total':>12}")
    for r in memory:
        total = r["params"] + r["fp32_master"] + r["optimizer_states"]
        print(f"ZeRO-{r['stage']:<2}{r['rank']:>5}{mib(r['params'])}{mib(r['fp32_master'])}"
              f"{mib(r['optimizer_states'])}{mib(total)}")


if __name__ == "__main__":
    main()
