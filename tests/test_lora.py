"""LoRA folded into plain weights (`reward.lora`) equals peft's own merge, and leaves the model as it was."""
from __future__ import annotations

import torch

from reward.lora import LoraSettings, apply_lora, folded_weights, merged_state_dict


def test_folded_weights_equal_peft_merge_and_keep_the_adapters(random_policy):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(random_policy),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))  # random adapters: the merge changes weights
    folded = folded_weights(model)
    assert any("lora_" in k for k in model.state_dict())  # the model keeps its adapters
    merged = {k: v for k, v in model.merge_and_unload().state_dict().items()}
    assert folded.keys() == merged.keys()
    for k in merged:
        torch.testing.assert_close(folded[k], merged[k], rtol=1e-5, atol=1e-6)
    plain = AutoModelForCausalLM.from_pretrained(random_policy).state_dict()
    assert not torch.equal(folded["model.layers.0.self_attn.q_proj.weight"], plain["model.layers.0.self_attn.q_proj.weight"])


def test_disabled_lora_leaves_the_model_and_merged_state_dict_scales_by_alpha_over_r(random_policy):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(random_policy)
    assert apply_lora(model, LoraSettings(enabled=False)) is model
    w, a, b = torch.ones(2, 3), torch.ones(1, 3), torch.full((2, 1), 0.5)
    state = {"base_model.model.x.base_layer.weight": w, "base_model.model.x.lora_A.default.weight": a,
             "base_model.model.x.lora_B.default.weight": b}
    out = merged_state_dict(state, LoraSettings(r=1, alpha=4))
    assert list(out) == ["x.weight"] and torch.equal(out["x.weight"], w + 4 * 0.5)
