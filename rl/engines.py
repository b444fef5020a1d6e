"""The four PPO models as DeepSpeed engines (OpenRLHF's split): actor and critic train under the
configured ZeRO stage; the reference policy and the reward model are inference engines (ZeRO-3 when
training is ZeRO-3, else stage 0: with no optimizer there is nothing for ZeRO-1/2 to shard).

On CPU the ranks talk over gloo; one process is a world of one. Under ZeRO-3 the models are built
inside `zero.Init` (through transformers' `HfDeepSpeedConfig`), so no rank ever holds a whole copy.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import torch

from reward.distributed import free_port, init_distributed  # noqa: F401 (the engines' entry points)
from reward.errors import ShepherdError
from reward.lora import folded_weights


def ds_config(path: str, batch: int, grad_clip: float, world: int, train: bool, accumulation: int = 1) -> dict[str, Any]:
    """A DeepSpeed JSON with its "auto" values filled in (`batch` rows per rank and optimiser step, in
    `accumulation` forward/backward passes); stage 0 for inference engines and one rank, unless 3."""
    if not os.path.isfile(path):
        raise ShepherdError(f"DeepSpeed config not found: {path} (key deepspeed)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ShepherdError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    micro = -(-batch // accumulation)
    cfg.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accumulation,
               train_batch_size=micro * accumulation * world, gradient_clipping=grad_clip)
    cfg.setdefault("bf16", {})["enabled"] = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cfg.pop("optimizer", None)  # we pass torch's AdamW: DeepSpeed's fused Adam compiles for minutes on CPU
    cfg.pop("scheduler", None)
    if zero_stage(cfg) != 3 and (not train or world == 1):
        # Frozen engines, and ZeRO-1/2 on one rank (nothing to partition): stage 0, whose step skips the
        # gradient bucketing and the all-reduce of a group of one (a third of a small model's step on CPU).
        cfg["zero_optimization"] = {"stage": 0}
    cfg["zero_allow_untested_optimizer"] = True
    return cfg


def zero_stage(cfg: dict[str, Any]) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def build(load: Callable[[], Any], cfg: dict[str, Any], lr: float | None = None, device: torch.device | None = None,
          schedule: Callable[[int], float] | None = None) -> Any:
    """Load a model (inside zero.Init under ZeRO-3) and wrap it in a DeepSpeed engine; `lr` None: frozen.
    `schedule` scales the learning rate per optimiser step (the engine steps and checkpoints it)."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(cfg) if zero_stage(cfg) == 3 else None  # noqa: F841 (must outlive the load)
    model = load()
    unset_hf_deepspeed_config()
    if device is not None and zero_stage(cfg) != 3:
        model = model.to(device)
    if lr is None:
        model.requires_grad_(False)
        model.eval()
        engine, *_ = deepspeed.initialize(model=model, config=cfg)
        return engine
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    scheduler = (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule)) if schedule else None
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=cfg)
    return engine


def gathered_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0 (a collective under ZeRO-3: every rank must call it)."""
    if zero_stage(engine.config) == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    if torch.distributed.get_rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def save_hf(engine: Any, tokenizer: Any, out_dir: str) -> None:
    """The trained model as a safetensors folder `from_pretrained` loads; written to a sibling folder
    and renamed, so a kill never leaves half a model. LoRA adapters are folded in (ZeRO-2 only)."""
    rank0 = torch.distributed.get_rank() == 0
    if hasattr(engine.module, "peft_config"):
        model = engine.module.get_base_model()
        state = folded_weights(engine.module) if rank0 else None
    else:
        model, state = engine.module, gathered_state_dict(engine)
    if rank0:
        tmp = out_dir.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    torch.distributed.barrier()
