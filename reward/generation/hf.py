"""The Hugging Face backend of `Generator`: prompt x n in large left-padded `generate` calls with the
KV cache on, seeded per batch so that a run is reproducible.

Each prompt is encoded once and its KV cache copied to its n samples. `generate(num_return_sequences=n)`
(and a flat list of n copies) would run the prompt's forward n times: for Monte-Carlo annotation, whose
prompts are whole step prefixes, that is most of the work (`benchmarks/annotate.py`)."""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from tqdm import tqdm
from transformers import DynamicCache, LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList

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
        """`generate` inputs for n samples of each prompt, with the prompts' KV cache computed once (all
        but the last token, which `generate` feeds itself) and repeated n times. Positions follow the
        left padding exactly as `generate` derives them from the attention mask."""
        ids, mask = enc["input_ids"], enc["attention_mask"]
        inputs: dict[str, Any] = {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0)}
        if ids.shape[1] < 2:
            return inputs
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                   use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache})
        cache.batch_repeat_interleave(n)
        inputs[CACHE_KWARG] = cache
        return inputs

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int = 1, temperature: float = 1.0, seed: int = 0,
                 max_new_tokens: int | None = None, stop: Sequence[str] = (), progress: bool = False
                 ) -> list[list[Sample]]:
        eos = self.tokenizer.eos_token_id
        per_call = max(1, self.batch_size // n)  # prompts per generate call: batch_size rows
        out: list[Sample] = []
        starts = range(0, len(prompts), per_call)
        for b, start in enumerate(tqdm(starts, desc="generate", disable=not progress, leave=False)):
            enc = self.encode(prompts[start: start + per_call])
            torch.manual_seed(seed * 100003 + b)
            # top_k=0: plain temperature sampling (some checkpoints default to top-k 50)
            kwargs = dict(do_sample=True, temperature=temperature, top_p=self.top_p, top_k=0) if temperature > 0 \
                else dict(do_sample=False)
            width = enc["input_ids"].shape[1]
            ids = self.model.generate(
                **self.prefill(enc, n), **kwargs, max_new_tokens=max_new_tokens or self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos, synced_gpus=self.synced_gpus,
                stopping_criteria=StoppingCriteriaList([StopOnStrings(self.tokenizer, stop, width)]) if stop else None,
            )[:, width:]
            for row in ids.tolist():
                finished = eos in row
                row = row[: row.index(eos)] if finished else row
                while row and row[-1] == self.tokenizer.pad_token_id:  # rows that stopped on a stop string
                    row.pop()
                text, stopped = cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), stop)
                out.append(Sample(text=text, token_ids=row, finished=finished or stopped))
        return [out[i * n: (i + 1) * n] for i in range(len(prompts))]
