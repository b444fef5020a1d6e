"""How a reward model reads a solution: the text it was trained on, cut where its step tags go.

A format turns (question, steps) into *segments*: the reward model's input text with the step tag
' ки' taken out, so that `tag_text(tag).join(segments)` is that text and the tag after step k sits between
segments k and k+1 (`reward.prm.encode_segments` finds the tags' token positions). Every stage that
scores steps takes the format of its reward model from a config key (`format`, `reward.format`,
`verify.prm_format` / `orm_format`):
- `tagged` (the default): the format `shepherd train-prm` trains in: the question on its own line(s),
  then one step per line, each ending with ' ки': `question\\nstep 1 ки\\nstep 2 ки\\n`;
- `math-shepherd`: the released math-shepherd-mistral-7b-prm's format, as its model card builds it:
  `question Step 1: ... ки\\nStep 2: ... ки` (question and first step on one line, each step prefixed
  `Step k: ` unless it already starts with it, steps joined by a newline, nothing after the last tag).
A Math-Shepherd row (`input`/`label`) already is a reward-model text: it is scored as it stands
(`reward.labels.split_math_shepherd`) by either.
Two more formats read reward models of other conventions (`qwen-prm`, `separator`): `reward.adapters`
writes their texts and scores them; both take (question, steps), never segments.
"""
from __future__ import annotations

from typing import Any, Sequence

from reward.errors import ShepherdError
from reward.tasks import STEP_TAG

TAGGED, MATH_SHEPHERD, QWEN_PRM, SEPARATOR = "tagged", "math-shepherd", "qwen-prm", "separator"
TAG_FORMATS = (TAGGED, MATH_SHEPHERD)  # a tag after every step, +/- read at it (reward.prm)
FORMATS = (*TAG_FORMATS, QWEN_PRM, SEPARATOR)
STEP_PREFIX = "Step {k}: "  # math-shepherd: what starts step k


def tag_text(tag: str = STEP_TAG) -> str:
    """What ends every step of a reward-model text: a space and the tag (' ки')."""
    return f" {tag}"


TAG_TEXT = tag_text()


def tag_ids(tokenizer: Any, tag: str = STEP_TAG) -> list[int]:
    """The token ids of ' ' + tag in `tokenizer`, or [] when it cannot encode the tag (an unknown token,
    or ids that do not decode back to it): the one check of a tokenizer against the step tag."""
    ids = tokenizer(tag_text(tag), add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and unk in ids) or tokenizer.decode(ids).strip() != tag:
        return []
    return ids


def check_format(name: str, key: str) -> None:
    """A reward-model format this project can write; `key` names the config key that chose it."""
    if name not in FORMATS:
        raise ShepherdError(f"unknown reward-model format '{name}' (key {key}); use one of {', '.join(FORMATS)}")


def segments(question: str, steps: Sequence[str], fmt: str = TAGGED) -> list[str]:
    """The reward model's text for (question, steps) in format `fmt`, cut at the step tags: one more
    segment than steps (the text before the first tag, between tags, after the last)."""
    if fmt not in TAG_FORMATS:
        raise ShepherdError(f"format '{fmt}' has no step tags to cut at; use one of {', '.join(TAG_FORMATS)}")
    if fmt == TAGGED:
        head, bodies, tails = question + "\n", list(steps), ["\n"] * len(steps)
    else:
        head, tails = question + " ", ["\n"] * (len(steps) - 1) + [""]
        bodies = [s if s.startswith(STEP_PREFIX.format(k=k).rstrip()) else STEP_PREFIX.format(k=k) + s
                  for k, s in enumerate(steps, 1)]
    out = [head]
    for body, tail in zip(bodies, tails):
        out[-1] += body
        out.append(tail)
    return out


def render(question: str, steps: Sequence[str], fmt: str = TAGGED, tag: str = STEP_TAG) -> str:
    """The reward model's input text: every step followed by ' ' + tag."""
    return tag_text(tag).join(segments(question, steps, fmt))
