"""Block expansion: a deeper reward model that starts as exactly the policy, and freezing its base."""
import torch
from transformers import AutoModelForCausalLM

from reward.grow import expand_layers, freeze_all_but_last_layers


def test_expanded_model_computes_what_the_policy_computes(random_policy):
    model = AutoModelForCausalLM.from_pretrained(random_policy).eval()
    ids = torch.randint(4, model.config.vocab_size, (2, 12))
    before = model(ids).logits
    expand_layers(model, 2)
    assert model.config.num_hidden_layers == len(model.model.layers) == 4
    assert torch.allclose(model(ids).logits, before, atol=1e-6)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]


def test_only_the_new_blocks_train(random_policy, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(random_policy)
    expand_layers(model, 1)
    freeze_all_but_last_layers(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layers.2.") for n in trainable)
    model.save_pretrained(tmp_path)  # the grown model saves and loads as a plain deeper Llama
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.num_hidden_layers == 3
