"""The shape every stage shares: parse `--config FILE key=value ...`, save the resolved config and the
environment (package versions, CPU, GPU), run, save a flat metrics.json, and turn bad input into one
clear line instead of a traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

from omegaconf import DictConfig

from reward.config import describe, load_config
from reward.errors import ShepherdError
from reward.io import save_metrics, save_stage_config, write_json


def is_main_process() -> bool:
    """Rank 0 writes the shared files (config.yaml, metrics.json) when several ranks run a stage."""
    return int(os.environ.get("RANK", "0")) == 0


PACKAGES = ("torch", "transformers", "trl", "deepspeed", "peft", "accelerate", "tokenizers", "datasets", "omegaconf",
            "vllm")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides fp32 against bf16 speed on CPU


def environment() -> dict[str, Any]:
    """What ran a stage: package versions, CPU and GPU. Two builds of one config that differ can then be
    told apart (the same arith_copy config gave an SFT policy of 0.54 on one machine, 0.37 on another)."""
    import platform
    from importlib import metadata

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    cpu, flags = platform.processor(), set()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    torch = sys.modules.get("torch")
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else ""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cpu_flags": [f for f in CPU_FLAGS if f in flags], "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads() if torch is not None else None, "gpu": gpu, "packages": packages}


def parse_stage_args(stage: str, schema: type, doc: str, argv: Sequence[str] | None) -> DictConfig:
    parser = argparse.ArgumentParser(
        prog=f"shepherd {stage}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys and their defaults (override any of them as key.sub=value):\n\n" + describe(schema),
    )
    parser.add_argument("--config", help="experiment YAML file (shared keys + a section per stage)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(flags_to_overrides(list(sys.argv[1:] if argv is None else argv)))
    return load_config(schema, stage, args.config, args.overrides)


OWN_FLAGS = ("--config", "--local_rank", "--local-rank", "--help", "-h")


def flags_to_overrides(argv: list[str]) -> list[str]:
    """`--model DIR --input=FILE` read as `model=DIR input=FILE`: any config key works as a flag."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and arg.split("=")[0] not in OWN_FLAGS:
            if "=" in arg:
                out.append(arg[2:])
            elif i + 1 < len(argv):
                out.append(f"{arg[2:]}={argv[i + 1]}")
                i += 1
            else:
                raise ShepherdError(f"flag '{arg}' needs a value")
        else:
            out.append(arg)
        i += 1
    return out


def leave_process_group() -> None:
    """All ranks meet, then tear the process group down before the interpreter exits: left to exit
    handlers, a gloo rank once aborted after its work was done ("terminate called without an active
    exception", exit -6), failing a finished 2-rank ZeRO-3 run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def stage_main(stage: str, schema: type, run: Callable[[DictConfig], dict[str, Any]], doc: str,
               argv: Sequence[str] | None = None, sidecar: Callable[[DictConfig], str] | None = None) -> dict[str, Any]:
    """Entry point of `shepherd STAGE` and `python -m MODULE`; exits 2 with one line on bad input.
    `sidecar` names the prefix of config.yaml, metrics.json and environment.json, for a stage whose
    outputs share a folder with others of its kind (reports by name)."""
    try:
        cfg = parse_stage_args(stage, schema, doc, argv)
        prefix = sidecar(cfg) if sidecar else ""
        if is_main_process():
            save_stage_config(cfg, prefix)
            write_json(os.path.join(cfg.output_dir, f"{prefix}environment.json"), environment())
        started = time.time()
        metrics = run(cfg)
        metrics.setdefault("stage_seconds", round(time.time() - started, 1))
        if is_main_process():
            save_metrics(cfg, metrics, prefix)
            print(f"[{stage}] wrote {cfg.output_dir}")
            print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}, indent=1))
        leave_process_group()
        return metrics
    except ShepherdError as e:
        print(f"shepherd {stage}: error: {e}", file=sys.stderr)
        sys.exit(2)
