"""generation.backend=vllm where vllm is not installed (the main venv) is one clear ShepherdError.

The vLLM backend itself is tested in tests/vllm_backend, in its own venv (`bash .ci/vllm.sh`).
"""
import importlib.util

import pytest
from omegaconf import OmegaConf

from reward.config import GenerationConfig
from reward.errors import ShepherdError
from reward.generation import load_generator


def _vllm_installed() -> bool:
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None  # a namespace package is not vLLM


@pytest.mark.skipif(_vllm_installed(), reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    cfg = OmegaConf.structured(GenerationConfig(backend="vllm"))
    with pytest.raises(ShepherdError, match="vllm"):
        load_generator(str(tmp_path), cfg)
