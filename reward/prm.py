"""Reward models in the Math-Shepherd convention, on any causal LM.

Every step of the input ends with the tag ' ки'; at each tag the LM head's logits restricted to the
tokens '+' and '-' give P(step correct) = softmax(l+, l-)[+] = sigmoid(l+ - l-). The PRM is trained
with binary cross-entropy at every tag (hard HE or soft SE targets), the ORM with one label at the
last tag; one forward pass scores all steps of a solution. Where the tags go in the text is the
reward model's format (reward/formats.py): ours, or the released PRM's.

Written here rather than taken from TRL: TRL's PRMTrainer uses a token-classification head and
truncates soft labels to ints; the Math-Shepherd convention keeps the LM head.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from reward.batching import right_pad
from reward.errors import ShepherdError
from reward.formats import TAG_TEXT, TAGGED, segments, tag_ids, tag_text
from reward.tasks import BAD_TOKEN, GOOD_TOKEN, STEP_TAG


def label_token_ids(tokenizer: Any, tag: str = STEP_TAG) -> tuple[int, int, int]:
    """Ids of the step tag and of '+' / '-': each must be one token of this tokenizer. A byte-level BPE,
    or a SentencePiece tokenizer (Llama, Mistral: '▁' + '▁ки'), may split ' ки' into two tokens: the
    tag is then its last token, the model card's encode('ки')[-1]."""
    tag_enc = tag_ids(tokenizer, tag)
    if not tag_enc or (len(tag_enc) > 1 and tokenizer.decode(tag_enc[-1:]).strip() != tag):
        raise ShepherdError(f"the tokenizer has no single token for {tag_text(tag)!r}: add it (add_tokens=true)")
    ids = [tag_enc[-1]]
    for text in (GOOD_TOKEN, BAD_TOKEN):
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) != 1 or enc[0] == tokenizer.unk_token_id:
            raise ShepherdError(f"the tokenizer has no single token for {text!r}: add it (add_tokens=true)")
        ids.append(enc[0])
    return ids[0], ids[1], ids[2]


def ensure_label_tokens(model: Any, tokenizer: Any, allow_add: bool) -> tuple[int, int, int]:
    """Add the tag and the +/- tokens when missing (and resize the embeddings), if allowed."""
    try:
        return label_token_ids(tokenizer)
    except ShepherdError:
        if not allow_add:
            raise ShepherdError(
                f"the model's tokenizer lacks the step tag '{STEP_TAG}' or the label tokens '+'/'-' "
                "and adding them is not allowed (key add_tokens)") from None
    tokenizer.add_tokens([TAG_TEXT, GOOD_TOKEN, BAD_TOKEN])
    model.resize_token_embeddings(len(tokenizer))
    return label_token_ids(tokenizer)


def encode_segments(tokenizer: Any, segs: Sequence[str], tag_id: int, tag: str = STEP_TAG,
                    max_length: int = 0) -> tuple[list[int], list[int]]:
    """Token ids of the text `segs` joined by ' ' + tag, and the positions of its tags (one per join).

    The whole text is tokenized at once, as the published Math-Shepherd recipe does, and the tags are
    the tokens equal to the tag id. Where a tag merges with the text before it (e.g. a step cut after an
    operator), the segments are encoded one by one with the tag id between them, so every step keeps
    exactly one tag.
    """
    ids = tokenizer(tag_text(tag).join(segs))["input_ids"]
    positions = [i for i, t in enumerate(ids) if t == tag_id]
    if len(positions) != len(segs) - 1:
        ids = tokenizer(segs[0])["input_ids"]
        positions = []
        for seg in segs[1:]:
            positions.append(len(ids))
            ids += [tag_id] + (tokenizer(seg, add_special_tokens=False)["input_ids"] if seg else [])
    if max_length and len(ids) > max_length:
        ids = ids[:max_length]
        positions = [p for p in positions if p < max_length]
    return ids, positions


def encode_tagged(tokenizer: Any, question: str, steps: Sequence[str], tag_id: int, max_length: int = 0,
                  tag: str = STEP_TAG, fmt: str = TAGGED) -> tuple[list[int], list[int]]:
    """Token ids of (question, steps) in the reward model's format `fmt` and the positions of its step
    tags (one per step)."""
    return encode_segments(tokenizer, segments(question, steps, fmt), tag_id, tag, max_length)


def tag_logit_margin(logits: torch.Tensor, good_id: int, bad_id: int) -> torch.Tensor:
    """l+ - l- at every position: sigmoid of it is the softmax over {+, -} taken at '+'."""
    return logits[..., good_id].float() - logits[..., bad_id].float()


def step_bce(logits: torch.Tensor, targets: torch.Tensor, good_id: int, bad_id: int) -> torch.Tensor:
    """Binary cross-entropy at the tags: `targets` holds a label in [0, 1] at each tag, NaN elsewhere.

    The PRM sums over a solution's steps (the paper's loss); we average over all tags in the batch so
    the learning rate does not depend on the number of steps.
    """
    mask = ~torch.isnan(targets)
    if not mask.any():
        return logits.sum() * 0.0
    margin = tag_logit_margin(logits, good_id, bad_id)[mask]
    return torch.nn.functional.binary_cross_entropy_with_logits(margin, targets[mask].float())


def score_steps(model: Any, tokenizer: Any, items: Sequence[tuple[str, Sequence[str]]], batch_size: int = 64,
                max_length: int = 0, tag: str = STEP_TAG, fmt: str = TAGGED) -> list[list[float]]:
    """P(correct) for every step of every (question, steps) item, written in the reward model's own
    format `fmt` with its own step `tag` (a released PRM's differ from the policy's and from ours)."""
    return score_segments(model, tokenizer, [segments(q, s, fmt) for q, s in items], batch_size, max_length, tag)


def score_segments(model: Any, tokenizer: Any, texts: Sequence[Sequence[str]], batch_size: int = 64,
                   max_length: int = 0, tag: str = STEP_TAG) -> list[list[float]]:
    """P(correct) at every step tag of every text, given cut at its tags (`reward.formats.segments`):
    one forward pass per text, texts batched (right padding; the causal mask keeps padding out of the
    tags' context)."""
    tag_id, good_id, bad_id = label_token_ids(tokenizer, tag)
    encoded = [encode_segments(tokenizer, segs, tag_id, tag, max_length) for segs in texts]
    return score_encoded(model, tokenizer, encoded, batch_size,
                         lambda logits: torch.sigmoid(tag_logit_margin(logits, good_id, bad_id)))


@torch.no_grad()
def score_encoded(model: Any, tokenizer: Any, encoded: Sequence[tuple[list[int], list[int]]], batch_size: int,
                  probability: Callable[[torch.Tensor], torch.Tensor]) -> list[list[float]]:
    """One forward per encoded text (token ids, step positions), texts of similar length batched (right
    padding), `probability(logits)` [B, T, V] -> [B, T] read at each text's step positions: the pass
    every reward-model convention shares (`reward.adapters`)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # similar lengths together
    out: list[list[float]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        ids, mask = right_pad([encoded[i][0] for i in idx], pad)
        probs = probability(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits).cpu()
        for row, i in enumerate(idx):
            out[i] = probs[row, encoded[i][1]].tolist()
    return out


def aggregate(scores: Sequence[float], how: str = "min") -> float:
    """A solution's score from its step scores: min (the paper), prod, or last (Qwen's PRM lessons)."""
    if not scores:
        return 0.0
    if how == "min":
        return min(scores)
    if how == "prod":
        p = 1.0
        for s in scores:
            p *= s
        return p
    if how == "last":
        return scores[-1]
    raise ShepherdError(f"unknown aggregation '{how}'; use min, prod or last")
