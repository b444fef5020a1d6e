"""Sampling behind one interface with two backends: Hugging Face `generate` (default) and vLLM.

Both take a list of prompt strings and return, per prompt, `n` samples (text and token ids). The HF
backend batches prompt x n into large left-padded `generate` calls with the KV cache on, seeded per
batch so that a run is reproducible.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from reward.errors import ShepherdError


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finished: bool  # ended at EOS or a stop string (not cut by max_new_tokens)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 autocast ran 27x slower on an AVX2-only CPU here), bf16 on a GPU that has it."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ShepherdError(f"unknown dtype '{dtype}'; use auto, fp32, bf16 or fp16") from None


def _model_location(path: str, key: str) -> tuple[str, dict[str, Any]]:
    """A folder, or a .gguf file (loaded dequantised through transformers' gguf support)."""
    if not path:
        raise ShepherdError(f"no model given (key {key})")
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise ShepherdError(f"model file not found: {path} (key {key})")
        return os.path.dirname(path) or ".", {"gguf_file": os.path.basename(path)}
    if not os.path.isdir(path):
        raise ShepherdError(f"model folder not found: {path} (key {key})")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ShepherdError(f"{path} is not a model folder: no config.json (key {key})")
    return path, {}


def load_tokenizer(path: str, key: str = "policy") -> Any:
    from transformers import AutoTokenizer

    folder, extra = _model_location(path, key)
    tok = AutoTokenizer.from_pretrained(folder, **extra)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, key: str = "policy", dtype: str = "auto", device: str = "auto") -> Any:
    """Any local causal LM folder (HF_HUB_OFFLINE works), in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM

    from transformers.integrations import is_deepspeed_zero3_enabled

    folder, extra = _model_location(path, key)
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=resolve_dtype(dtype, dev), **extra)
    if is_deepspeed_zero3_enabled():  # loaded as this rank's shards (zero.Init): DeepSpeed places them
        return model.eval()
    return model.to(dev).eval()


class Generator:
    """Interface: `generate(prompts, n, temperature, seed)` -> per prompt, n Samples."""

    tokenizer: Any

    def generate(self, prompts: Sequence[str], n: int = 1, temperature: float = 1.0, seed: int = 0,
                 max_new_tokens: int | None = None, stop: Sequence[str] = (), progress: bool = False
                 ) -> list[list[Sample]]:
        raise NotImplementedError


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.index(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


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

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int = 1, temperature: float = 1.0, seed: int = 0,
                 max_new_tokens: int | None = None, stop: Sequence[str] = (), progress: bool = False
                 ) -> list[list[Sample]]:
        flat = [p for p in prompts for _ in range(n)]
        eos = self.tokenizer.eos_token_id
        out: list[Sample] = []
        starts = range(0, len(flat), self.batch_size)
        for b, start in enumerate(tqdm(starts, desc="generate", disable=not progress, leave=False)):
            chunk = flat[start: start + self.batch_size]
            enc = self.encode(chunk)
            torch.manual_seed(seed * 100003 + b)
            # top_k=0: plain temperature sampling (some checkpoints default to top-k 50)
            kwargs = dict(do_sample=True, temperature=temperature, top_p=self.top_p, top_k=0) if temperature > 0 \
                else dict(do_sample=False)
            width = enc["input_ids"].shape[1]
            ids = self.model.generate(
                **enc, **kwargs, max_new_tokens=max_new_tokens or self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos, synced_gpus=self.synced_gpus,
                stopping_criteria=StoppingCriteriaList([StopOnStrings(self.tokenizer, stop, width)]) if stop else None,
            )[:, width:]
            for row in ids.tolist():
                finished = eos in row
                row = row[: row.index(eos)] if finished else row
                while row and row[-1] == self.tokenizer.pad_token_id:  # rows that stopped on a stop string
                    row.pop()
                text, stopped = _cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), stop)
                out.append(Sample(text=text, token_ids=row, finished=finished or stopped))
        return [out[i * n: (i + 1) * n] for i in range(len(prompts))]


VLLM_PROMPT_ROOM = 1024  # vLLM: prompt tokens allowed beside max_new_tokens when generation.vllm_max_model_len is 0


def engine_max_model_len(gen_cfg: Any, model_cfg: dict[str, Any]) -> int:
    """vLLM: `generation.vllm_max_model_len`, or max_new_tokens + VLLM_PROMPT_ROOM capped at the model's
    max_position_embeddings: the engine reserves KV cache for this many tokens per sequence."""
    limit = model_cfg.get("max_position_embeddings")
    limit = limit if isinstance(limit, int) and limit > 0 else None
    if gen_cfg.vllm_max_model_len > 0:
        if limit is not None and gen_cfg.vllm_max_model_len > limit:
            raise ShepherdError(f"generation.vllm_max_model_len {gen_cfg.vllm_max_model_len} exceeds the model's "
                                f"max_position_embeddings {limit}")
        return int(gen_cfg.vllm_max_model_len)
    wanted = int(gen_cfg.max_new_tokens) + VLLM_PROMPT_ROOM
    return wanted if limit is None else min(wanted, limit)


@contextlib.contextmanager
def this_ranks_gpu(on_gpu: bool) -> Iterator[None]:
    """vLLM: while the engine starts, show it only this rank's GPU (LOCAL_RANK) when a launcher started
    several ranks, each seeing every GPU: vLLM takes the first visible one, and its engine-core process
    inherits the environment. The in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0) would use the
    first GPU the parent sees, so it is refused there."""
    if not on_gpu or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
        raise ShepherdError("vLLM on several ranks needs its engine in its own process: unset "
                            "VLLM_ENABLE_V1_MULTIPROCESSING (it is 0)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = before.split(",") if before else [str(i) for i in range(torch.cuda.device_count())]
    if local >= len(visible):
        raise ShepherdError(f"LOCAL_RANK {local} but only {len(visible)} GPUs visible (CUDA_VISIBLE_DEVICES={before})")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[local]
    try:
        yield
    finally:
        if before is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def load_generator(model_path: str, gen_cfg: Any, key: str = "policy") -> Generator:
    """The configured backend for a model folder; vLLM without vLLM installed is a clear error."""
    if gen_cfg.backend == "hf":
        tok = load_tokenizer(model_path, key)
        model = load_causal_lm(model_path, key, gen_cfg.dtype, gen_cfg.device)
        return HFGenerator(model, tok, gen_cfg.batch_size, gen_cfg.max_new_tokens, gen_cfg.top_p)
    if gen_cfg.backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ShepherdError(
                "generation.backend=vllm but vllm is not installed: `pip install vllm` on a GPU, "
                "or `make test-vllm` for the CPU build (its own venv)") from None
        from reward.generation_vllm import VLLMGenerator

        _model_location(model_path, key)
        return VLLMGenerator(model_path, gen_cfg)
    raise ShepherdError(f"unknown generation backend '{gen_cfg.backend}' (key generation.backend); use hf or vllm")
