"""The HF generation backend: batching with left padding, seeding, n samples, stops, bad folders."""
import pytest
import torch
from omegaconf import OmegaConf

from reward.config import GenerationConfig
from reward.errors import ShepherdError
from reward.generation import load_causal_lm, load_generator, resolve_dtype
from reward.tasks.arith import ArithTask


def _gen(folder, **kw):
    cfg = OmegaConf.structured(GenerationConfig(**kw))
    return load_generator(folder, cfg)


def test_batched_greedy_equals_one_by_one(random_policy):
    """Left padding must not change what each prompt generates."""
    gen = _gen(random_policy, batch_size=16, max_new_tokens=12)
    task = ArithTask(min_ops=1, max_ops=6)
    prompts = [task.format_prompt(p.question) for p in task.problems("test", 8)]  # different lengths
    batched = gen.generate(prompts, n=1, temperature=0.0)
    single = [gen.generate([p], n=1, temperature=0.0)[0] for p in prompts]
    assert len({len(gen.tokenizer(p)["input_ids"]) for p in prompts}) > 1
    for b, s in zip(batched, single):
        assert b[0].token_ids == s[0].token_ids and b[0].text == s[0].text


def test_sampling_is_seeded_and_returns_n(random_policy):
    gen = _gen(random_policy, batch_size=5, max_new_tokens=10)
    prompts = ["Compute 1 + 2 mod 10.\n", "Compute 3 * 4 - 5 mod 10.\n"]
    a = gen.generate(prompts, n=3, temperature=1.0, seed=7)
    b = gen.generate(prompts, n=3, temperature=1.0, seed=7)
    c = gen.generate(prompts, n=3, temperature=1.0, seed=8)
    assert [len(g) for g in a] == [3, 3]
    assert [[s.text for s in g] for g in a] == [[s.text for s in g] for g in b]
    assert [[s.text for s in g] for g in a] != [[s.text for s in g] for g in c]
    assert all(len(s.token_ids) <= 10 for g in a for s in g)


def test_stop_strings_cut_the_text(random_policy):
    gen = _gen(random_policy, batch_size=8, max_new_tokens=30)
    out = gen.generate(["Compute 1 + 2 mod 10.\n"] * 4, n=2, temperature=1.0, seed=0, stop=["\n"])
    for s in (s for g in out for s in g):
        assert "\n" not in s.text


def test_missing_or_bad_model_folder(tmp_path):
    with pytest.raises(ShepherdError, match="model folder not found.*policy"):
        _gen(str(tmp_path / "nope"))
    with pytest.raises(ShepherdError, match="no config.json"):
        load_causal_lm(str(tmp_path))
    with pytest.raises(ShepherdError, match="generation.backend"):
        _gen(str(tmp_path), backend="onnx")


def test_dtype_is_chosen_by_capability():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ShepherdError, match="dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
