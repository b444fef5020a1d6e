"""OmegaConf structured configs: typed defaults per stage, one experiment file, dotted overrides.

An experiment file holds shared top-level keys (``experiment``, ``seed``, ``task``) and one section per
stage (``world:``, ``sample:``, ``train_prm:`` ...). A stage's config is its dataclass defaults, then the
shared keys, then its section, then ``key=value`` overrides from the command line; struct mode makes
any unknown key an error that names the key and the closest valid one.

The PPO arms of an experiment (PRM, ORM, rule reward ...) differ in a few keys, so they are named
override sets of the ``ppo:`` section under the top-level key ``arms`` (an arm may ``extends:`` another)
rather than files: ``shepherd ppo --config FILE arm=prm`` is the ``ppo:`` section with arm ``prm`` over it,
written to ``outputs/<experiment>/ppo-prm`` unless the arm names its own ``output_dir``.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from reward.errors import ShepherdError

# The one list of stages: stage -> (module, one-line description). Module names are strings, so that
# `reward` never imports `rl` and a module is imported only when its stage runs; an experiment file's
# sections are these names with `-` as `_`.
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
    "error-kinds": ("reward.error_kinds", "arith: the kind of each policy's first wrong step, and how often the PRM flags it"),
    "ppo": ("rl.ppo", "step-by-step PPO under DeepSpeed ZeRO: PRM reward at every step, ORM / rule baselines"),
    "prm-round": ("rl.prm_round", "label a PPO policy's own samples (sample, annotate) and train a PRM on every round's labels"),
    "report": ("rl.report", "one markdown report with plots from stage and PPO run folders"),
    "pipeline": ("rl.pipeline", "every stage of an experiment, the PPO arms over seeds, the report; skips finished stages"),
}
SHARED_KEYS = ("experiment", "seed", "task")
BASE_KEY = "base"  # `base: other.yaml`: this file's keys override that file's (a path relative to this file)
ARMS_KEY = "arms"  # arm name -> overrides of the `ppo:` section
EXTENDS_KEY = "extends"  # inside an arm: the arm whose overrides this one's go over


def section_name(stage: str) -> str:
    return stage.replace("-", "_")


@dataclass
class TaskConfig:
    """Which task and its knobs. `arith` knobs are ignored by `gsm8k` and `math`."""

    name: str = "arith"  # arith | gsm8k | math
    path: str = ""  # gsm8k/math: a jsonl file or a folder with <split>.jsonl, or a datasets hub id
    # arith: `modular` (single-digit chains, `7 + 8 = 5` mod 10) or `chain` (multi-digit, 0-999).
    form: str = "modular"
    min_ops: int = 4
    max_ops: int = 7
    modulus: int = 10
    operand_max: int = 99  # chain form: operands 1..operand_max, multipliers 2..9
    ops: str = "+-*"
    # Systematic mistakes taught by SFT data: a share of solutions applies a fixed wrong rule at every
    # step where it applies (`smaller_from_larger`: a - b with a < b done as b - a; `swap_sub`: a - b
    # computed as b - a but written a - b; `drop_carry`: + without carries). See reward/tasks/arith.py.
    wrong_rule: str = "swap_sub"
    wrong_rule_share: float = 0.3
    carry_rest: bool = False  # each step restates the operations still to do (`7 + 8 = 5 ; 5 * 3 - 9`)
    chat_template: bool = False  # real instruct models: wrap the prompt in the tokenizer's chat template
    # Non-chat SFT policies: the prompt they were trained on, with `{question}` where the question goes
    # (e.g. MetaMath's Alpaca prompt); empty: the question and a line break. With chat_template, it is
    # the user message instead of the task's own instruction.
    prompt_template: str = ""
    # gsm8k: keep only problems whose reference solution has at most this many steps (0: all). A small
    # model solves almost none of the rest, and Monte-Carlo labels are then all 0.
    max_gold_steps: int = 0


@dataclass
class StageConfig:
    """Keys every stage has."""

    experiment: str = "default"
    output_dir: str = ""  # empty: outputs/<experiment>/<stage>
    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)


@dataclass
class GenerationConfig:
    backend: str = "hf"  # hf | vllm
    batch_size: int = 256  # sequences per generate call (HF backend)
    max_new_tokens: int = 96
    top_p: float = 1.0
    dtype: str = "auto"  # auto: bf16 on a GPU that supports it, fp32 on CPU
    device: str = "auto"
    vllm_gpu_memory_utilization: float = 0.5
    # Tokens (prompt + completion) one vLLM sequence may hold; 0: max_new_tokens + 1024, capped at the
    # model's max_position_embeddings. The engine reserves KV cache for this length: keep it tight.
    vllm_max_model_len: int = 0


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _merge(base: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = str(getattr(e, "full_key", "") or getattr(e, "key", ""))
        parent_path = key.rsplit(".", 1)[0] if "." in key else ""
        parent = OmegaConf.select(base, parent_path) if parent_path else base
        valid = [str(k) for k in parent.keys()] if isinstance(parent, DictConfig) else []
        raise ShepherdError(f"unknown config key '{key}' in {where}{_closest(key.rsplit('.', 1)[-1], valid)}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "")
        raise ShepherdError(f"bad value for config key '{key}' in {where}: {e.msg if hasattr(e, 'msg') else e}") from None


def load_experiment(config_file: str, seen: tuple[str, ...] = ()) -> DictConfig:
    """An experiment file merged over its `base` chain (arms of one experiment share the base)."""
    if not os.path.isfile(config_file):
        raise ShepherdError(f"config file not found: {config_file}")
    if os.path.abspath(config_file) in seen:
        raise ShepherdError(f"config file {config_file} includes itself through '{BASE_KEY}'")
    try:
        raw = OmegaConf.load(config_file)
    except Exception as e:  # yaml errors carry the line in their message
        raise ShepherdError(f"cannot parse config file {config_file}: {e}") from None
    if BASE_KEY not in raw:
        return raw
    base_file = os.path.join(os.path.dirname(config_file), str(raw.pop(BASE_KEY)))
    return OmegaConf.merge(load_experiment(base_file, seen + (os.path.abspath(config_file),)), raw)


def default_output_dir(experiment: str, stage: str) -> str:
    return os.path.join("outputs", experiment, stage)


def arm_overrides(raw: DictConfig, arm: str, where: str, key: str = "arm") -> DictConfig:
    """The overrides of arm `arm` over the `ppo:` section, its `extends` chain merged (the named arm last)."""
    arms = raw.get(ARMS_KEY) or {}
    chain: list[str] = []
    name = arm
    while name:
        if name not in arms:
            known = ", ".join(str(k) for k in arms) or "none"
            raise ShepherdError(f"unknown arm '{name}' (key {key}) in {where}; its arms: {known}")
        if name in chain:
            raise ShepherdError(f"arm '{name}' in {where} extends itself (key {ARMS_KEY}.{name}.{EXTENDS_KEY})")
        chain.append(name)
        name = str(arms[name].get(EXTENDS_KEY) or "")
    merged = OmegaConf.create({})
    for name in reversed(chain):
        body = OmegaConf.masked_copy(arms[name], [k for k in arms[name] if k != EXTENDS_KEY])
        merged = OmegaConf.merge(merged, body)
    return merged


def arm_names(config_file: str) -> list[str]:
    """The arms an experiment file (with its `base` chain) declares, in file order."""
    return [str(k) for k in (load_experiment(config_file).get(ARMS_KEY) or {})]


def stage_output_dir(config_file: str, stage: str, arm: str = "") -> str:
    """Where a stage (or a PPO arm) of an experiment writes, without building its config (load_config's rule)."""
    raw = load_experiment(config_file)
    experiment = str(raw.get("experiment", "default"))
    if arm:
        placed = OmegaConf.merge(raw, {"arm_": arm_overrides(raw, arm, config_file)})  # interpolations resolve in the file
        return str(placed.arm_.get("output_dir") or default_output_dir(experiment, f"{stage}-{arm}"))
    section = raw.get(section_name(stage)) or {}
    return str(section.get("output_dir") or default_output_dir(experiment, stage))


def stage_inputs(config_file: str, stage: str, overrides: Sequence[str] = ()) -> list[str]:
    """The string values a stage's section of an experiment file sets (an arm's overrides over `ppo:`,
    then key=value `overrides`), resolved, output_dir left out: the paths it reads are among them (the
    pipeline orders stages by them)."""
    raw = load_experiment(config_file)
    given = OmegaConf.from_dotlist(list(overrides))
    arm = str(given.get("arm") or "")
    body = OmegaConf.merge(raw.get(section_name(stage)) or {}, arm_overrides(raw, arm, config_file) if arm else {},
                           given)
    placed = OmegaConf.merge(raw, {"section_": body})  # interpolations resolve in the file
    values, found = [OmegaConf.to_container(placed.section_, resolve=True)], []
    while values:
        value = values.pop()
        if isinstance(value, dict):
            values += [v for k, v in value.items() if k != "output_dir"]
        elif isinstance(value, list):
            values += value
        elif isinstance(value, str):
            found.append(value)
    return found


def load_config(schema: type, stage: str, config_file: str | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Build the resolved, struct-mode config of `stage` from its dataclass `schema`."""
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    if config_file:
        if not os.path.isfile(config_file):
            raise ShepherdError(f"config file not found: {config_file}")
        raw = load_experiment(config_file)
        sections = {section_name(s) for s in STAGES} | {ARMS_KEY}
        shared = {}
        for key, value in raw.items():
            if key in sections:
                continue
            if key not in SHARED_KEYS and key not in cfg:
                raise ShepherdError(
                    f"unknown top-level key '{key}' in {config_file}{_closest(str(key), sorted(sections | set(SHARED_KEYS)))}"
                )
            if key in cfg:
                shared[key] = value
        cfg = _merge(cfg, OmegaConf.create(shared), config_file)
        if section_name(stage) in raw:
            cfg = _merge(cfg, raw[section_name(stage)], f"{config_file} (section '{section_name(stage)}')")
    dotlist = OmegaConf.create({})
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ShepherdError(f"override '{bad[0]}' is not of the form key=value")
        dotlist = OmegaConf.from_dotlist(list(overrides))
    arm = str(dotlist.get("arm") or cfg.get("arm") or "")
    if arm:
        if "arm" not in cfg:
            raise ShepherdError(f"stage {stage} has no arms (key arm); arms are PPO's")
        if not config_file:
            raise ShepherdError(f"arm '{arm}' needs the experiment file that declares it: --config FILE")
        body = arm_overrides(raw, arm, config_file)
        cfg = _merge(cfg, body, f"{config_file} (arm '{arm}')")
        if "output_dir" not in body:  # each arm its own folder, not the section's
            cfg.output_dir = ""
    cfg = _merge(cfg, dotlist, "command-line overrides")
    if not cfg.output_dir:
        cfg.output_dir = default_output_dir(cfg.experiment, f"{stage}-{arm}" if arm else stage)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ShepherdError(f"cannot resolve config: {e}") from None
    return cfg


def describe(schema: type) -> str:
    """The keys of a stage with their defaults, for `shepherd STAGE --help`."""
    return OmegaConf.to_yaml(OmegaConf.structured(schema))
