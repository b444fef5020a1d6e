"""Reward-model conventions as adapters: (question, steps) in, one P(step correct) per step out, whatever
convention the reward model was trained in. `score`, `verify`, `eval-prm` and `ppo` load and score
through `load_reward_model` and `score_items`, the format named by their `format` key:

- `tagged`, `math-shepherd` (`reward.prm`): a causal LM whose steps end with the tag ' ки'; at each tag
  softmax over the LM head's '+' / '-' logits (ours, and the released math-shepherd-mistral-7b-prm);
- `qwen-prm`: Qwen2.5-Math-PRM-7B/72B. The model card's recipe: a chat with the system prompt below,
  the question as the user turn and the steps joined by `<extra_0>` (one after the last) as the
  assistant turn, the whole string tokenized at once; a Qwen2 decoder whose last hidden states go
  through a two-layer score head (Linear h->h, ReLU, Linear h->2); P(correct) = softmax(logits)[1]
  at every `<extra_0>`. The checkpoint ships remote code (`Qwen2ForProcessRewardModel`); we load it
  without `trust_remote_code`: transformers' own `Qwen2Model` reads the decoder's weights, and
  `QwenPRM` adds the head from the `score.*` tensors of the same safetensors files.
- `separator`: any causal-LM PRM whose steps each end with a string (`separator`, e.g. "\\n\\n") and
  whose verdict is two label tokens (`label_tokens`, good first): the question and every step, each
  followed by the separator, tokenized piece by piece (so a step's end is a token boundary whatever the
  tokenizer merges), P(correct) = softmax over the two label logits at each separator's last token.

Every format scores all steps of a solution in one forward pass, texts batched by length.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from reward.errors import ShepherdError
from reward.formats import MATH_SHEPHERD, QWEN_PRM, SEPARATOR, TAGGED, check_format
from reward.generation.base import (NO_HUB_KERNELS, load_causal_lm, load_tokenizer, model_location, resolve_device,
                                    resolve_dtype)
from reward.prm import score_encoded, score_steps
from reward.tasks import BAD_TOKEN, GOOD_TOKEN, STEP_TAG

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_STEP = "<extra_0>"


@dataclass
class AdapterSettings:
    """What a format needs besides the model: the tag (tagged, math-shepherd), the separator and label
    tokens (separator)."""

    step_tag: str = STEP_TAG
    separator: str = "\n\n"
    label_tokens: list[str] = field(default_factory=lambda: [GOOD_TOKEN, BAD_TOKEN])


class QwenPRM(torch.nn.Module):
    """A Qwen2 decoder and Qwen's two-layer score head: logits [B, T, 2] at every token."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        h = model.config.hidden_size
        self.model, self.config = model, model.config
        self.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return SimpleNamespace(logits=self.score(hidden.to(self.score[0].weight.dtype)))


def score_head_weights(folder: str) -> dict[str, torch.Tensor]:
    """The `score.*` tensors of a checkpoint's safetensors files (one file or shards), keys without
    the `score.` prefix."""
    from safetensors import safe_open

    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if key.startswith("score."):
                    out[key[len("score."):]] = f.get_tensor(key)
    return out


def load_qwen_prm(path: str, key: str, dtype: str = "auto", device: str = "auto") -> QwenPRM:
    from transformers import Qwen2Model

    folder, extra = model_location(path, key)
    with open(os.path.join(folder, "config.json")) as f:
        if json.load(f).get("model_type") != "qwen2":
            raise ShepherdError(f"{folder} is not a Qwen2 checkpoint (model_type in config.json; key {key}): "
                                "format qwen-prm reads Qwen2.5-Math-PRM models")
    dev = resolve_device(device)
    model = QwenPRM(Qwen2Model.from_pretrained(folder, dtype=resolve_dtype(dtype, dev), **extra,
                                                  **NO_HUB_KERNELS))
    head = score_head_weights(folder)
    expected = {k for k in model.score.state_dict()}
    if set(head) != expected:
        raise ShepherdError(f"{folder}: format qwen-prm needs the score head's tensors {sorted(expected)} "
                            f"(as score.<name>), found {sorted(head) or 'none'} (key {key})")
    model.score.load_state_dict(head)
    model.score.to(next(model.model.parameters()).dtype)
    return model.to(dev).eval()


def load_reward_model(path: str, key: str, fmt: str, dtype: str = "auto", device: str = "auto") -> tuple[Any, Any]:
    """The model and tokenizer of a reward-model folder in format `fmt` (checked by the caller)."""
    model = load_qwen_prm(path, key, dtype, device) if fmt == QWEN_PRM else load_causal_lm(path, key, dtype, device)
    return model, load_tokenizer(path, key)


def single_token(tokenizer: Any, text: str, what: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ShepherdError(f"the reward model's tokenizer has no single token for {what} {text!r}")
    return ids[0]


def encode_qwen(tokenizer: Any, question: str, steps: Sequence[str], step_id: int, max_length: int
                ) -> tuple[list[int], list[int]]:
    messages = [{"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": question},
                {"role": "assistant", "content": QWEN_STEP.join(steps) + QWEN_STEP}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tokenizer.encode(text)  # as the model card does
    ids = ids[:max_length] if max_length else ids
    return ids, [i for i, t in enumerate(ids) if t == step_id]


def encode_separated(tokenizer: Any, question: str, steps: Sequence[str], separator: str, max_length: int
                     ) -> tuple[list[int], list[int]]:
    ids = tokenizer(question + separator)["input_ids"]
    ends = []
    for step in steps:
        ids = ids + tokenizer(step + separator, add_special_tokens=False)["input_ids"]
        ends.append(len(ids) - 1)
    if max_length:
        ids, ends = ids[:max_length], [e for e in ends if e < max_length]
    return ids, ends


def score_items(model: Any, tokenizer: Any, items: Sequence[tuple[str, Sequence[str]]], fmt: str = TAGGED,
                settings: AdapterSettings | Any = None, batch_size: int = 64, max_length: int = 0
                ) -> list[list[float]]:
    """P(correct) for every step of every (question, steps) item, in the reward model's convention."""
    s = settings or AdapterSettings()
    if fmt in (TAGGED, MATH_SHEPHERD):
        return score_steps(model, tokenizer, items, batch_size, max_length, s.step_tag, fmt)
    if fmt == QWEN_PRM:
        step_id = single_token(tokenizer, QWEN_STEP, "the step token")
        encoded = [encode_qwen(tokenizer, q, st, step_id, max_length) for q, st in items]
        return score_encoded(model, tokenizer, encoded, batch_size, lambda logits: logits.float().softmax(-1)[..., 1])
    if fmt == SEPARATOR:
        if len(s.label_tokens) != 2:
            raise ShepherdError(f"label_tokens must be two tokens, good then bad; got {list(s.label_tokens)}")
        good, bad = (single_token(tokenizer, t, "the label token") for t in s.label_tokens)
        encoded = [encode_separated(tokenizer, q, st, s.separator, max_length) for q, st in items]
        return score_encoded(model, tokenizer, encoded, batch_size,
                             lambda logits: logits[..., [good, bad]].float().softmax(-1)[..., 0])
    check_format(fmt, "format")
    raise AssertionError(fmt)
