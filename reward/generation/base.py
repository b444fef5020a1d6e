"""What both sampling backends share: the `Generator` interface and its `Sample`, model and tokenizer
loading (device, dtype, a clear error for a missing folder), stop strings, and the vLLM engine set-up
that must be importable (and testable) without vLLM installed."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from reward.errors import ShepherdError


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finished: bool  # ended at EOS or a stop string (not cut by max_new_tokens)


# transformers >= 5.2x swaps layers for kernels fetched from the Hugging Face Hub on every from_pretrained
# unless told not to: offline (HF_HUB_OFFLINE=1) that load fails on a GPU, online it runs downloaded code
# and changes numerics between machines. Our models load from local folders with their own layers.
NO_HUB_KERNELS = {"use_kernels": False}


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


def model_location(path: str, key: str) -> tuple[str, dict[str, Any]]:
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

    folder, extra = model_location(path, key)
    tok = AutoTokenizer.from_pretrained(folder, **extra)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, key: str = "policy", dtype: str = "auto", device: str = "auto") -> Any:
    """Any local causal LM folder (HF_HUB_OFFLINE works), in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM

    from transformers.integrations import is_deepspeed_zero3_enabled

    folder, extra = model_location(path, key)
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=resolve_dtype(dtype, dev), **extra, **NO_HUB_KERNELS)
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


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was there."""
    cuts = [text.index(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


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
