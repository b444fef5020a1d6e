"""LoRA (peft) in one place: the settings, wrapping a model, and folding trained adapters back into
plain weights, so a reward model or a policy trained with LoRA is saved as a model `from_pretrained`
loads with no peft.

Folding works on a state dict rather than on the model (peft's `merge_and_unload`): under ZeRO-3 each
rank holds only slices of every weight, and the gathered state dict is the one whole copy there is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LoraSettings:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


def apply_lora(model: Any, settings: Any) -> Any:
    """`model` with LoRA adapters on `target_modules` when enabled (peft's PeftModel), else unchanged."""
    if not settings.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=settings.r, lora_alpha=settings.alpha,
                                            lora_dropout=settings.dropout,
                                            target_modules=list(settings.target_modules)))


def folded_weights(model: Any) -> dict[str, torch.Tensor]:
    """A peft LoRA model's weights with its adapters folded in, under the base model's names, the model
    itself left as it is (it keeps training its adapters): for a vLLM engine's copy and a saved policy."""
    config = model.peft_config["default"]
    if getattr(config, "use_dora", False) or getattr(config, "use_rslora", False):
        raise ValueError("only plain LoRA adapters can be folded (use_dora / use_rslora are off in LoraSettings)")
    settings = LoraSettings(r=config.r, alpha=config.lora_alpha)
    return merged_state_dict({k: v.detach() for k, v in model.state_dict().items()}, settings)


def merged_state_dict(state: dict[str, torch.Tensor], settings: Any) -> dict[str, torch.Tensor]:
    """A peft LoRA model's state dict with every adapter folded in, W + (alpha / r) * B @ A, under the
    base model's own names (what peft's merge computes for plain LoRA)."""
    scale = settings.alpha / settings.r
    out = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        base, _, param = key.rpartition(".base_layer.")
        if base and param == "weight":
            a, b = state[f"{base}.lora_A.default.weight"], state[f"{base}.lora_B.default.weight"]
            value = (value.float() + scale * (b.float() @ a.float())).to(value.dtype)
        out[key.replace("base_model.model.", "", 1).replace(".base_layer", "")] = value
    return out
