"""Block expansion (LLaMA Pro, Wu et al. 2024): a reward model deeper than the policy it starts from.

A step check needs the policy's own prediction of a step's result (formed in its last layer, at the
token before the result) to be compared with the result written after it. A model exactly as deep as
the policy has no layer left to make that comparison at the step tag; measured on the embedded world,
a PRM fine-tuned from the 2-layer policy kept scoring a step the same when its result was changed.
Each added block is a copy of the last one with its output projections zeroed, so the grown model
computes exactly what the policy computes until training moves the new blocks.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from reward.errors import ShepherdError


def expand_layers(model: Any, n: int) -> Any:
    """Append `n` identity-initialised decoder blocks to a Llama-style causal LM, in place."""
    if n <= 0:
        return model
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not len(layers):
        raise ShepherdError(f"expand_layers needs a Llama-style model (model.model.layers); got {type(model).__name__}")
    last = layers[-1]
    for _ in range(n):
        block = copy.deepcopy(last)
        with torch.no_grad():
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
            for proj in (block.self_attn.o_proj, block.mlp.down_proj):
                if getattr(proj, "bias", None) is not None:
                    proj.bias.zero_()
        block.self_attn.layer_idx = len(layers)
        layers.append(block)
    model.config.num_hidden_layers = len(layers)
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types:  # per-layer attention kinds (sliding or full) must cover the new blocks too
        model.config.layer_types = list(layer_types) + [layer_types[-1]] * n
    return model


def freeze_all_but_last_layers(model: Any, n: int) -> None:
    """Train only the last `n` decoder blocks: the initial model's knowledge (here, the policy's
    arithmetic) cannot be overwritten while the new blocks learn to check it."""
    model.requires_grad_(False)
    for block in model.model.layers[-n:]:
        block.requires_grad_(True)
