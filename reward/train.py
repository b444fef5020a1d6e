"""`shepherd train-prm` / `shepherd train-orm`: fine-tune a causal LM as a Math-Shepherd reward model.

PRM: binary cross-entropy at every step tag on HE (hard) or SE (soft) labels. ORM: the same model and
code with one label at the last tag, the final answer's correctness. HF Trainer with our loss (see
`reward.prm` for why not TRL's PRMTrainer), DeepSpeed ZeRO through `train.deepspeed`, LoRA through peft.

    deepspeed --num_gpus 8 --module reward.train --config EXP.yaml kind=prm train.deepspeed=configs/deepspeed/zero2.json
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from omegaconf import DictConfig
from transformers import Trainer
from transformers.integrations import is_deepspeed_zero3_enabled

from reward.batching import right_pad
from reward import distributed
from reward.config import StageConfig
from reward.errors import ShepherdError
from reward.generation import load_causal_lm, load_tokenizer
from reward.grow import expand_layers, freeze_all_but_last_layers
from reward.io import iter_jsonl
from reward.formats import TAG_FORMATS, TAGGED
from reward.labels import from_math_shepherd
from reward.lora import LoraSettings, apply_lora
from reward.prm import encode_tagged, ensure_label_tokens, score_steps, step_bce
from reward.slips import skipped_slip
from reward.stage import stage_main
from reward.training import TrainConfig, save_trained, tensorboard_callback, training_arguments


@dataclass
class RewardTrainConfig(StageConfig):
    kind: str = "prm"  # prm | orm
    data: str = ""  # stepwise.jsonl (or math_shepherd.jsonl) from `shepherd annotate`; an ORM also samples.jsonl
    init: str = ""  # causal-LM folder to start from (e.g. the world's policy)
    label_type: str = "he"  # prm: he (hard) or se (soft targets)
    # prm: all (the paper: every tag's label) or first_error (labels up to the first wrong step, later
    # tags masked, as PRM800K's annotators stop there): the PRM then judges a step given that the steps
    # before it are right, a local check, and a prefix's score is the running min of its step scores.
    label_scope: str = "all"
    add_tokens: bool = True  # add the step tag and +/- to the tokenizer when missing
    expand_layers: int = 0  # append this many identity-initialised blocks (reward.grow): deeper than init
    train_new_layers_only: bool = False  # with expand_layers: freeze the initial model, train the new blocks (LLaMA Pro)
    val_share: float = 0.1  # problems held out for validation (split by problem)
    max_length: int = 1024
    format: str = TAGGED  # the text the model learns to score (reward.formats): tagged | math-shepherd
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, batch_size=32, lr=1e-3, warmup_steps=30))


@dataclass
class Example:
    problem_id: str
    question: str
    steps: list[str]
    targets: list[float]  # one per step; NaN where the step carries no label (ORM: all but the last)


def read_examples(path: str, kind: str, label_type: str, label_scope: str = "all") -> list[Example]:
    """Training rows from either annotate format, or for an ORM from samples.jsonl (its outcome labels need no
    Monte-Carlo annotation, so the ORM trains beside it); a label count that does not match the steps is an
    error. `label_scope=first_error` masks (NaN) every tag after the first step whose hard label is wrong."""
    out = []
    for lineno, r in enumerate(iter_jsonl(path), 1):
        where = f"{path}:{lineno}"
        if "steps" in r and "completions" not in r:  # a sample (`shepherd sample`): its outcome, no step labels
            if kind != "orm":
                raise ShepherdError(f"{where}: a sample has no step labels; the PRM learns from `shepherd annotate`'s output")
            if not r["steps"] or r.get("gold") in (None, "") or skipped_slip(r):
                continue  # as annotate skips it: no step to score, no answer to judge, or a slip that changed nothing
            if "correct" not in r or "question" not in r:
                raise ShepherdError(f"{where}: a sample needs the fields 'question' and 'correct'")
            r = {**r, "prompt": r["question"], "completions": r["steps"], "labels": [r["correct"]] * len(r["steps"])}
        if "input" in r and "label" in r:
            parsed = from_math_shepherd(r, where)  # a problem is its question (released rows: no ids)
            r = {**parsed, "problem_id": r.get("problem_id", parsed["prompt"])}
        for key in ("prompt", "completions", "labels"):
            if key not in r:
                raise ShepherdError(f"{where}: missing field '{key}'")
        steps = r["completions"]
        if not steps:
            raise ShepherdError(f"{where}: a record with no steps")
        labels = r["soft_labels"] if label_type == "se" and kind == "prm" else r["labels"]
        if label_type == "se" and "soft_labels" not in r and kind == "prm":
            raise ShepherdError(f"{where}: label_type=se needs 'soft_labels' (use stepwise.jsonl)")
        if len(labels) != len(steps):
            raise ShepherdError(f"{where}: {len(labels)} labels for {len(steps)} steps")
        targets = [float(x) for x in labels]
        if label_scope == "first_error" and not all(r["labels"]):
            first = [bool(x) for x in r["labels"]].index(False)
            targets = targets[: first + 1] + [math.nan] * (len(steps) - first - 1)
        if kind == "orm":
            final = float(r["correct"]) if "correct" in r else targets[-1]
            targets = [math.nan] * (len(steps) - 1) + [final]
        out.append(Example(str(r.get("problem_id", lineno)), r["prompt"], list(steps), targets))
    if not out:
        raise ShepherdError(f"{path}: no records")
    return out


def split_by_problem(examples: list[Example], val_share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Validation holds whole problems, so it measures generalisation to new problems."""
    problems = sorted({e.problem_id for e in examples})
    random.Random(seed).shuffle(problems)
    val = set(problems[: int(round(len(problems) * val_share))])
    return [e for e in examples if e.problem_id not in val], [e for e in examples if e.problem_id in val]


class TagCollator:
    """Right-padded ids and a float target per position: the label at each step tag, NaN elsewhere."""

    def __init__(self, tokenizer: Any, tag_id: int, max_length: int, fmt: str = TAGGED) -> None:
        self.tokenizer, self.tag_id, self.max_length, self.fmt = tokenizer, tag_id, max_length, fmt
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(self, e: Example) -> tuple[list[int], list[float]]:
        ids, positions = encode_tagged(self.tokenizer, e.question, e.steps, self.tag_id, self.max_length, fmt=self.fmt)
        if len(positions) != len(e.steps) and len(ids) < self.max_length:
            raise ShepherdError(f"problem {e.problem_id}: {len(positions)} step tags found for {len(e.steps)} steps "
                                "(a step contains the tag, or the tokenizer merges it)")
        targets = [math.nan] * len(ids)
        for pos, y in zip(positions, e.targets):
            targets[pos] = y
        return ids, targets

    def __call__(self, rows: Sequence[Example]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(e) for e in rows]
        ids, mask = right_pad([x for x, _ in encoded], self.pad)
        targets, _ = right_pad([y for _, y in encoded], math.nan, torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "targets": targets}


class StepRewardTrainer(Trainer):
    """The HF Trainer with the Math-Shepherd loss: BCE on l+ - l- at the step tags only."""

    def __init__(self, *args: Any, good_id: int, bad_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.good_id, self.bad_id = good_id, bad_id

    def compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False, **kwargs: Any):
        targets = inputs.pop("targets")
        outputs = model(**inputs)
        loss = step_bce(outputs.logits, targets, self.good_id, self.bad_id)
        return (loss, outputs) if return_outputs else loss


def validation_metrics(model: Any, tokenizer: Any, val: list[Example], max_length: int, batch_size: int = 16,
                       fmt: str = TAGGED) -> dict[str, float]:
    """Tag-level accuracy and AUC on held-out problems (AUC across problems is not the gate: see verify).

    Scored with the trained model where it is (its device, dtype and ZeRO shards), each rank on an
    equal share of the problems (ZeRO-3 ranks must run the same number of forwards), the pairs then
    gathered: reloading a 7B on rank 0's CPU took hours while the other ranks timed out at a barrier."""
    if not val:
        return {}
    rank, world = distributed.world()
    per = math.ceil(len(val) / world)
    mine = val[rank * per: (rank + 1) * per]
    real = len(mine)
    mine += val[:1] * (per - real)  # padding rows are scored, not counted
    was_training = model.training
    model.eval()
    scores = score_steps(model, tokenizer, [(e.question, e.steps) for e in mine], batch_size, max_length,
                         fmt=fmt)[:real]
    model.train(was_training)
    local = [(s, t) for e, ss in zip(mine, scores) for s, t in zip(ss, e.targets) if not math.isnan(t)]
    pairs = [pair for part in distributed.all_gather_objects(local) for pair in part]
    hard = [(s, t >= 0.5) for s, t in pairs]
    acc = sum((s >= 0.5) == y for s, y in hard) / len(hard)
    pos = [s for s, y in hard if y]
    neg = [s for s, y in hard if not y]
    auc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg)) if pos and neg else float("nan")
    return {"val_tag_accuracy": round(acc, 4), "val_tag_auc": round(auc, 4), "val_tags": len(hard),
            "val_positive_share": round(len(pos) / len(hard), 4)}


def run(cfg: DictConfig) -> dict:
    if cfg.kind not in ("prm", "orm"):
        raise ShepherdError(f"unknown reward-model kind '{cfg.kind}' (key kind); use prm or orm")
    if cfg.label_type not in ("he", "se"):
        raise ShepherdError(f"unknown label type '{cfg.label_type}' (key label_type); use he or se")
    if cfg.label_scope not in ("all", "first_error"):
        raise ShepherdError(f"unknown label scope '{cfg.label_scope}' (key label_scope); use all or first_error")
    if cfg.format not in TAG_FORMATS:
        raise ShepherdError(f"train-prm / train-orm write format tagged or math-shepherd, not '{cfg.format}' (key format): "
                            "the other formats read released reward models")
    if cfg.kind == "orm" and cfg.label_scope != "all":
        raise ShepherdError("label_scope applies to the PRM; an ORM has one label per solution (key label_scope)")
    if not cfg.data:
        raise ShepherdError("no training data given (key data): a stepwise.jsonl from `shepherd annotate`")
    examples = read_examples(cfg.data, cfg.kind, cfg.label_type, cfg.label_scope)
    train, val = split_by_problem(examples, cfg.val_share, cfg.seed)
    tokenizer = load_tokenizer(cfg.init, "init")
    torch.manual_seed(cfg.seed)
    # The arguments first: under ZeRO-3 they hold the DeepSpeed config that makes from_pretrained load
    # each rank's shard only (zero.Init), never the whole model on every rank.
    args = training_arguments(cfg.train, cfg.output_dir, cfg.seed)
    if cfg.train.deepspeed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        distributed.init_distributed()  # zero.Init reads the world size from DeepSpeed's group as the model loads
    model = load_causal_lm(cfg.init, "init", device="cpu")
    tag_id, good_id, bad_id = ensure_label_tokens(model, tokenizer, cfg.add_tokens)
    if cfg.expand_layers and is_deepspeed_zero3_enabled():
        raise ShepherdError("expand_layers copies whole decoder blocks: use ZeRO-2 (key train.deepspeed)")
    expand_layers(model, cfg.expand_layers)
    if cfg.train_new_layers_only:
        if cfg.expand_layers <= 0:
            raise ShepherdError("train_new_layers_only needs expand_layers > 0")
        freeze_all_but_last_layers(model, cfg.expand_layers)
    model = apply_lora(model, cfg.lora)
    model.train()
    trainer = StepRewardTrainer(
        model=model, args=args, train_dataset=train,
        data_collator=TagCollator(tokenizer, tag_id, cfg.max_length, cfg.format),
        callbacks=[tensorboard_callback(cfg.output_dir)], good_id=good_id, bad_id=bad_id,
    )
    result = trainer.train()
    metrics = {"kind": cfg.kind, "label_type": cfg.label_type, "train_examples": len(train), "val_examples": len(val),
               "train_loss": round(float(result.training_loss), 4), "train_steps": int(result.global_step),
               "world_size": trainer.args.world_size, "deepspeed": cfg.train.deepspeed}
    metrics.update(validation_metrics(trainer.model, tokenizer, val, cfg.max_length, cfg.train.batch_size, cfg.format))
    save_trained(trainer, tokenizer, os.path.join(cfg.output_dir, "model"), cfg.lora)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    argv = list(argv if argv is not None else __import__("sys").argv[1:])
    stage = "train-orm" if "kind=orm" in argv else "train-prm"
    return stage_main(stage, RewardTrainConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
