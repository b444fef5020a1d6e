"""The Hugging Face backend of `Generator`: prompt x n in large left-padded batches with the KV cache
on, seeded per batch so that a run is reproducible.

Each prompt is encoded once and its KV cache shared by its n samples (read once per decode step by
`shared_prefix_attention`; copied to each sample for models outside SHARED_PREFIX_MODELS).
`generate(num_return_sequences=n)` (and a flat list of n copies) would run the prompt's forward n
times: for Monte-Carlo annotation, whose prompts are whole step prefixes, that is most of the work.
The decode loop then drops finished rows (`HFGenerator.decode`); both are measured in
`benchmarks/annotate.py`."""
from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Sequence

import torch
from tqdm import tqdm
from transformers import (AttentionInterface, DynamicCache, LlamaForCausalLM, LogitsProcessorList, StoppingCriteria,
                          TemperatureLogitsWarper, TopPLogitsWarper)
from transformers.cache_utils import DynamicLayer

from reward.distributed import all_reduce_sum
from reward.generation.base import Generator, Sample, cut_at_stop


# transformers renamed the model's `past_key_values` argument to `cache` (5.24 warns on the old name;
# the GPU extra's 5.19 knows only the old one).
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


class StopOnStrings(StoppingCriteria):
    """Per-row stop when the completion's tail contains a stop string.

    Written here because transformers' `stop_strings` needs a BPE-like vocabulary and fails on
    word-level tokenizers such as the embedded world's. A string of k characters ends within the last
    k tokens (every token is at least one character), so only that tail is decoded.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_len: int) -> None:
        self.tokenizer, self.stop, self.prompt_len = tokenizer, list(stop), prompt_len
        self.window = max(len(s) for s in self.stop)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tails = input_ids[:, max(self.prompt_len, input_ids.shape[1] - self.window):].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


class BufferedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views into a buffer with spare room at the end.

    DynamicLayer appends each decode step with `torch.cat`, copying the whole cache every token: on the
    demo that copy was a third of Monte-Carlo annotation's time. Here a step writes its token into the
    buffer in place, and the buffer doubles when full. Whatever replaces `keys` (the decode loop's row
    selection, `batch_repeat_interleave`, `crop`) leaves them outside the buffer, and the next update
    copies them into a fresh one, so every inherited method stays correct."""

    buffer: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = DynamicLayer.get_seq_length(self)  # the tokens in this buffer (a SharedPrefixLayer counts its prompt too)
        end = old + key_states.shape[-2]
        if not self.holds(old) or end > self.buffer[0].shape[-2]:
            shape = (*key_states.shape[:2], 2 * end)
            buffer = tuple(torch.empty(*shape, s.shape[-1], dtype=s.dtype, device=s.device) for s in (key_states, value_states))
            if old:
                buffer[0][:, :, :old], buffer[1][:, :, :old] = self.keys, self.values
            self.buffer = buffer
        self.buffer[0][:, :, old:end], self.buffer[1][:, :, old:end] = key_states, value_states
        self.keys, self.values = self.buffer[0][:, :, :end], self.buffer[1][:, :, :end]
        return self.keys, self.values

    def holds(self, length: int) -> bool:
        """Whether the cached tokens are the head of the buffer."""
        return self.buffer is not None and (not length or (self.keys.data_ptr() == self.buffer[0].data_ptr()
                                                           and self.keys.shape[0] == self.buffer[0].shape[0]))


def buffered_cache(config: Any) -> DynamicCache:
    """The model's `DynamicCache` with each full-attention layer buffered (sliding-window layers keep
    their own update, which trims the window)."""
    cache = DynamicCache(config=config)
    cache.layers = [BufferedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class SharedPrefixLayer(BufferedLayer):
    """A cache layer for n samples of each prompt that holds every prompt's keys and values once.

    `keys`/`values` (buffered) hold each row's own tokens; `prefix` holds the prompts' (one row per
    prompt) and `owner` the prompt of each row, in order. Repeating the prompt's cache to its n samples
    (`batch_repeat_interleave`) made every row selection and buffer growth copy the prompt n times over:
    for Monte-Carlo annotation, whose prompts are whole step prefixes, that was the largest cost left.
    `shared_prefix_attention` reads the prompt here instead."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor, n: int) -> None:
        super().__init__()
        self.prefix = (keys, values)
        self.keep = keep  # [prompts, prompt length]: not padding
        self.owner = torch.arange(keys.shape[0], device=keys.device).repeat_interleave(n)
        self._grid: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def get_seq_length(self) -> int:
        return self.prefix[0].shape[-2] + super().get_seq_length()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if DynamicLayer.get_seq_length(self):
            self.keys, self.values = self.keys[indices], self.values[indices]
        self.owner, self._grid = self.owner[indices], None

    def grid(self) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Each row's slot among its prompt's rows, the most rows a prompt has, and each row's additive
        mask over the prompt (-inf on padding); kept until rows leave."""
        if self._grid is None:
            counts = torch.bincount(self.owner, minlength=self.keep.shape[0])
            slot = torch.arange(self.owner.numel(), device=self.owner.device) - (counts.cumsum(0) - counts)[self.owner]
            bias = torch.zeros(self.keep.shape, device=self.keep.device).masked_fill(~self.keep, float("-inf"))
            self._grid = slot, int(counts.max()), bias[self.owner][:, None, None, :]
        return self._grid


# Models whose attention is softmax(q k^T * scaling) v over every cached token (no softcap, sinks or
# sliding window), which `shared_prefix_attention` computes in two parts.
SHARED_PREFIX_MODELS = ("llama", "qwen2", "qwen3")
SHARED_PREFIX_ATTENTION = "shepherd_shared_prefix"


def shared_prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: Any, scaling: float, dropout: float = 0.0, shared_prefix: Any = None,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """One decode step's attention over each row's prompt (read once per prompt from its
    `SharedPrefixLayer`) and its own tokens (`key`, `value`), one softmax over both.

    A transformers attention function (registered under SHARED_PREFIX_ATTENTION for the decode loop):
    the library's kernels take one key tensor per row. Rows of one prompt are consecutive (`owner` is
    sorted), so each prompt's queries are gathered into a [prompts, rows of the most numerous prompt]
    grid and meet its keys in one batched matmul."""
    layer = shared_prefix.layers[module.layer_idx]
    (pk, pv), owner = layer.prefix, layer.owner
    slot, width, bias = layer.grid()
    rows, heads, q, dim = query.shape  # q == 1: the loop feeds one token per row
    prompts, kv_heads, plen = pk.shape[:3]
    groups = heads // kv_heads

    def to_grid(x: torch.Tensor) -> torch.Tensor:  # [rows, heads, q, k] -> [prompts, kv_heads, groups*width*q, k]
        grid = x.new_zeros(prompts, width, *x.shape[1:])
        grid[owner, slot] = x
        return grid.transpose(1, 2).reshape(prompts, kv_heads, groups * width * q, x.shape[-1])

    def from_grid(x: torch.Tensor) -> torch.Tensor:  # the inverse, for the rows that exist
        return x.reshape(prompts, heads, width, q, x.shape[-1]).transpose(1, 2)[owner, slot]

    by_kv = (rows, kv_heads, groups * q, dim)
    prefix_scores = from_grid(to_grid(query) @ pk.transpose(-1, -2)).float() * scaling + bias
    own_scores = (query.reshape(by_kv) @ key.transpose(-1, -2)).reshape(rows, heads, q, -1).float() * scaling
    weights = torch.softmax(torch.cat([prefix_scores, own_scores], -1), -1).to(query.dtype)
    out = from_grid(to_grid(weights[..., :plen]) @ pv)
    out = out + (weights[..., plen:].reshape(rows, kv_heads, groups * q, -1) @ value).reshape(rows, heads, q, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)


@contextmanager
def attention(model: Any, implementation: str) -> Iterator[None]:
    """The model's attention function switched for a block (the config is read at every forward)."""
    before = model.config._attn_implementation
    model.config._attn_implementation = implementation
    try:
        yield
    finally:
        model.config._attn_implementation = before


class HFGenerator(Generator):
    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 256, max_new_tokens: int = 96,
                 top_p: float = 1.0) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_new_tokens, self.top_p = batch_size, max_new_tokens, top_p
        self.synced_gpus = False  # ZeRO-3 over several ranks: every rank runs every forward of generate
        self.tokenizer.padding_side = "left"

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        # Chat-templated prompts already carry their special tokens.
        bos = self.tokenizer.bos_token
        add_special = not (bos and prompts and prompts[0].startswith(bos))
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special)
        return {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def prefill(self, enc: dict[str, torch.Tensor], n: int) -> dict[str, Any]:
        """Decode inputs for n samples of each prompt, with the prompts' KV cache computed once (all but
        the last token, which the decode loop feeds itself) and repeated n times. Positions follow the
        left padding exactly as `generate` derives them from the attention mask."""
        ids, mask = enc["input_ids"], enc["attention_mask"]
        inputs: dict[str, Any] = {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0)}
        if ids.shape[1] < 2:
            return inputs
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = buffered_cache(self.model.config)
        self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                   use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache})
        if n > 1 and self.model.config.model_type in SHARED_PREFIX_MODELS and all(
                type(layer) is BufferedLayer for layer in cache.layers):
            keep = mask[:, :-1].bool()
            cache.layers = [SharedPrefixLayer(layer.keys, layer.values, keep, n) for layer in cache.layers]
        else:
            cache.batch_repeat_interleave(n)
        inputs[CACHE_KWARG] = cache
        return inputs

    @torch.no_grad()
    def decode(self, inputs: dict[str, Any], temperature: float, max_new_tokens: int, stop: Sequence[str]
               ) -> list[tuple[list[int], bool]]:
        """Per row: its new tokens without EOS (a row that met a stop string keeps the tokens up to it), and
        whether it ended (EOS or stop string) rather than ran out of tokens.

        Our loop instead of `model.generate`: generate keeps every row in the forward until the longest
        one ends, while Monte-Carlo completions and rollouts end at very different lengths (on the demo
        about half of generate's forward work went to finished rows). Finished rows leave the batch and
        its KV cache (`DynamicCache.batch_select_indices`). Sampling still draws for every row, as
        generate does (torch.multinomial spends the same random numbers per row whatever the
        probabilities), so the tokens equal generate's for the same seed (tests/test_generation.py).
        Under ZeRO-3 over several ranks (`synced_gpus`) every rank runs a forward until all are done."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        rows, eos, pad = ids.shape[0], self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        warpers = LogitsProcessorList()
        if temperature > 0 and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if temperature > 0 and self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        stopper = StopOnStrings(self.tokenizer, stop, 0) if stop else None
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if CACHE_KWARG in inputs:  # the prompt but its last token is in the cache
            cache, step_ids, step_pos = inputs[CACHE_KWARG], ids[:, -1:], positions[:, -1:]
        else:
            cache, step_ids, step_pos = buffered_cache(self.model.config), ids, positions
        shared = isinstance(cache.layers[0], SharedPrefixLayer)
        extra = {"shared_prefix": cache} if shared else {}
        if shared:  # shared_prefix_attention reads the prompt's padding from the cache: no mask to grow per token
            mask = None
        live = torch.arange(rows, device=ids.device)  # the output rows still in the batch, in batch order
        out = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=ids.device)
        lengths, ended_by = [max_new_tokens] * rows, [False] * rows
        with attention(self.model, SHARED_PREFIX_ATTENTION) if shared else nullcontext():
            for t in range(max_new_tokens):
                result = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                                    logits_to_keep=1, **{CACHE_KWARG: cache}, **extra)
                scores = torch.zeros(rows, result.logits.shape[-1], dtype=torch.float32, device=ids.device)
                scores[live] = result.logits[: live.numel(), -1].float()
                if temperature > 0:
                    tokens = torch.multinomial(torch.softmax(warpers(out[:, :t], scores), -1), 1)[:, 0][live]
                else:
                    tokens = scores[live].argmax(-1)
                out[live, t] = tokens
                ended = tokens == eos
                if stopper is not None:
                    ended |= stopper(out[live, : t + 1], scores)
                for r, token in zip(live[ended].tolist(), tokens[ended].tolist()):
                    lengths[r], ended_by[r] = t + int(token != eos), True
                keep = (~ended).nonzero()[:, 0]
                if not self.rows_left(keep.numel()):
                    break
                live = live[keep]
                if keep.numel() == 0:  # this rank is done, another is not: one row keeps it in step, unrecorded
                    keep, tokens = keep.new_zeros(1), tokens.new_full((max(1, tokens.numel()),), pad)
                if keep.numel() < step_ids.shape[0]:
                    cache.batch_select_indices(keep)
                    step_pos, tokens = step_pos[keep], tokens[keep]
                    mask = mask[keep] if mask is not None else None
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
                step_ids, step_pos = tokens[:, None], step_pos[:, -1:] + 1
        return [(row[:n], done) for row, n, done in zip(out.tolist(), lengths, ended_by)]

    def rows_left(self, here: int) -> bool:
        """Whether any rank still has unfinished rows (only this one's count without synced_gpus)."""
        if not self.synced_gpus:
            return here > 0
        return all_reduce_sum(torch.tensor([float(here > 0)])).item() > 0

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int = 1, temperature: float = 1.0, seed: int = 0,
                 max_new_tokens: int | None = None, stop: Sequence[str] = (), progress: bool = False
                 ) -> list[list[Sample]]:
        per_call = max(1, self.batch_size // n)  # prompts per decode: batch_size rows
        out: list[Sample] = []
        starts = range(0, len(prompts), per_call)
        for b, start in enumerate(tqdm(starts, desc="generate", disable=not progress, leave=False)):
            enc = self.encode(prompts[start: start + per_call])
            torch.manual_seed(seed * 100003 + b)
            rows = self.decode(self.prefill(enc, n), temperature, max_new_tokens or self.max_new_tokens, stop)
            for row, ended in rows:
                text, stopped = cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), stop)
                out.append(Sample(text=text, token_ids=row, finished=ended or stopped))
        return [out[i * n: (i + 1) * n] for i in range(len(prompts))]
