"""HF Trainer plumbing shared by SFT and reward-model training: hyper-parameters, arguments that
work on CPU and GPU with or without DeepSpeed, TensorBoard in the stage's folder, atomic saving."""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from transformers import TrainingArguments
from transformers.integrations import TensorBoardCallback


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64  # per rank
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay to this share of lr
    weight_decay: float = 0.0
    adam_beta2: float = 0.98
    max_grad_norm: float = 1.0
    logging_steps: int = 50
    deepspeed: str = ""  # a DeepSpeed JSON, e.g. configs/deepspeed/zero2.json
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower


def distributed_backend() -> str | None:
    """gloo for several CPU ranks (else every rank believes it is rank 0 of 1); None for one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "nccl" if torch.cuda.is_available() else "gloo"
    return None


def training_arguments(t: Any, output_dir: str, seed: int) -> TrainingArguments:
    """TrainingArguments from a TrainConfig: fp32 on CPU, bf16 on a GPU that has it, DeepSpeed if set."""
    cuda = torch.cuda.is_available()
    if t.deepspeed and not os.path.isfile(t.deepspeed):
        from reward.errors import ShepherdError

        raise ShepherdError(f"DeepSpeed config not found: {t.deepspeed} (key train.deepspeed)")
    return TrainingArguments(
        output_dir=os.path.join(output_dir, "trainer"), per_device_train_batch_size=t.batch_size,
        max_steps=t.steps, learning_rate=t.lr, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": t.min_lr_ratio},
        adam_beta2=t.adam_beta2, max_grad_norm=t.max_grad_norm, logging_steps=t.logging_steps,
        save_strategy="no", report_to="none", use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
        seed=seed, deepspeed=t.deepspeed or None, ddp_backend=distributed_backend(), remove_unused_columns=False,
        dataloader_drop_last=True, **checkpointing_arguments(t.gradient_checkpointing),
    )


# transformers 5.2x renamed gradient checkpointing to activation checkpointing (the old names warn and go
# in v6); the range we support starts before the rename, so each call takes the name this version has.
NO_REENTRANT = {"use_reentrant": False}  # reentrant checkpointing needs grads on the inputs (LoRA: none)


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """TrainingArguments' checkpointing fields, under this transformers' name."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {prefix: enabled, f"{prefix}_kwargs": NO_REENTRANT}


def enable_checkpointing(model: Any) -> Any:
    """Recompute activations in backward (non-reentrant), under this transformers' name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=NO_REENTRANT)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=NO_REENTRANT)
    return model


def tensorboard_callback(output_dir: str) -> TensorBoardCallback:
    """TensorBoard events into the stage's own folder (transformers 5 dropped `logging_dir`)."""
    return TensorBoardCallback(tb_writer=SummaryWriter(os.path.join(output_dir, "tensorboard")))


def save_trained(trainer: Any, tokenizer: Any, out_dir: str, lora: Any = None) -> None:
    """Save through a sibling folder and rename, so a killed run never leaves half a checkpoint.
    Every rank calls it (ZeRO-3 gathers the weights); rank 0 writes. With LoRA enabled the adapters
    are folded into the weights of the gathered state dict: a plain model, under ZeRO-2 or ZeRO-3."""
    tmp = out_dir.rstrip("/") + ".tmp"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    if lora is not None and lora.enabled:
        from reward.lora import merged_state_dict

        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # rank 0's whole copy
        if trainer.is_world_process_zero():
            base = trainer.accelerator.unwrap_model(trainer.model).get_base_model()
            base.save_pretrained(tmp, state_dict=merged_state_dict(state, lora), safe_serialization=True)
    else:
        trainer.save_model(tmp)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
        shutil.rmtree(os.path.join(os.path.dirname(out_dir.rstrip("/")), "trainer"), ignore_errors=True)
