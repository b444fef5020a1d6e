"""`shepherd STAGE --config FILE [key=value ...]`: one command for every stage of the pipeline.

Each stage is also a module (`python -m rl.sft`, `python -m reward.sample`), so the `deepspeed`
launcher can start it with `--module`.
"""
from __future__ import annotations

import importlib
import sys

# stage -> (module, one-line description); modules are imported only when their stage runs.
STAGES = {
    "import-gguf": ("reward.import_gguf", "turn a GGUF model file (default: SmolLM2-135M-Instruct) into a safetensors model folder"),
    "world": ("rl.world", "build the embedded world: arith data, tokenizer, tiny SFT policy, its accuracy"),
    "sft": ("rl.sft", "supervised fine-tuning of a policy on step-by-step solutions"),
    "sample": ("reward.sample", "draw and grade solutions from a policy for a split (samples.jsonl)"),
    "eval": ("rl.evaluate", "accuracy of a policy on a split: greedy, sampled, maj@k"),
    "annotate": ("reward.annotate", "label every step by Monte-Carlo completions (HE, SE): Math-Shepherd data"),
    "train-prm": ("reward.train", "train a process reward model (BCE at every step tag) under DeepSpeed"),
    "train-orm": ("reward.train", "train an outcome reward model (one label at the last tag), same code"),
    "score": ("reward.score", "P(correct) for every step of every solution in a jsonl (scores.jsonl)"),
    "verify": ("reward.verify", "best-of-N with PRM / ORM / majority / confidence, pairwise accuracy, plot"),
    "eval-prm": ("reward.eval_prm", "how well a PRM finds the first wrong step: ProcessBench F1 (arith oracle or ProcessBench)"),
    "ppo": ("rl.ppo", "step-by-step PPO under DeepSpeed ZeRO: PRM reward at every step, ORM / rule baselines"),
    "prm-round": ("rl.prm_round", "label a PPO policy's own samples (sample, annotate) and train a PRM on every round's labels"),
    "report": ("rl.report", "one markdown report with plots from stage and PPO run folders"),
    "pipeline": ("rl.pipeline", "every stage of an experiment, the PPO arms over seeds, the report; skips finished stages"),
}
PRESETS = {"train-orm": ["kind=orm"]}  # overrides a stage adds to its module's (one module trains both reward models)


def usage() -> str:
    lines = ["usage: shepherd STAGE --config FILE [key=value ...]", "", "stages:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in STAGES.items()]
    lines += ["", "`shepherd STAGE --help` lists the stage's config keys and their defaults."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    stage = argv[0]
    if stage not in STAGES:
        print(f"shepherd: unknown stage '{stage}'\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(STAGES[stage][0]).main(argv[1:] + PRESETS.get(stage, []))


if __name__ == "__main__":
    main()
