"""`shepherd STAGE --config FILE [key=value ...]`: one command for every stage of the pipeline.

Each stage is also a module (`python -m rl.sft`, `python -m reward.sample`), so the `deepspeed`
launcher can start it with `--module`.
"""
from __future__ import annotations

import importlib
import sys

from reward.config import STAGES

PRESETS = {"train-orm": ["kind=orm"]}  # overrides a stage adds to its module's (one module trains both reward models)


def usage() -> str:
    lines = ["usage: shepherd STAGE --config FILE [key=value ...]", "", "stages:"]
    width = max(map(len, STAGES)) + 1
    lines += [f"  {name:<{width}} {desc}" for name, (_, desc) in STAGES.items()]
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
