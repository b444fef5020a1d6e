"""Sampling behind one interface with two backends: Hugging Face `generate` (default, `hf`) and vLLM
(`vllm`, imported only when chosen). Both take a list of prompt strings and return, per prompt, `n`
samples (text and token ids)."""
from __future__ import annotations

from typing import Any

from reward.errors import ShepherdError
from reward.generation.base import (Generator, Sample, cut_at_stop, engine_max_model_len, load_causal_lm,
                                    load_tokenizer, model_location, resolve_device, resolve_dtype, this_ranks_gpu)
from reward.generation.hf import HFGenerator

__all__ = ["Generator", "Sample", "HFGenerator", "load_generator", "load_causal_lm", "load_tokenizer", "cut_at_stop",
           "engine_max_model_len", "resolve_device", "resolve_dtype", "this_ranks_gpu"]


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
        from reward.generation.vllm import VLLMGenerator

        model_location(model_path, key)
        return VLLMGenerator(model_path, gen_cfg)
    raise ShepherdError(f"unknown generation backend '{gen_cfg.backend}' (key generation.backend); use hf or vllm")
