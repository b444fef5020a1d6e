"""The HF generation backend: batching with left padding, seeding, n samples, stops, bad folders; the vLLM engine's length and GPU."""
import os

import pytest
import torch
from omegaconf import OmegaConf
from transformers.cache_utils import DynamicLayer

from reward.config import GenerationConfig
from reward.errors import ShepherdError
from reward.generation.hf import CACHE_KWARG, BufferedLayer
from reward.generation import engine_max_model_len, load_causal_lm, load_generator, resolve_dtype, this_ranks_gpu
from reward.tasks.arith import ArithTask


def _gen(folder, **kw):
    cfg = OmegaConf.structured(GenerationConfig(**kw))
    return load_generator(folder, cfg)


def test_shared_prefix_attention_equals_attention_over_the_repeated_cache():
    """Each prompt's keys read once for its n samples give what SDPA gives over the prompt's cache copied to
    every row: left padding, rows dropped (a prompt left with 0, 1 or all its rows), grouped KV heads."""
    from types import SimpleNamespace

    from reward.generation.hf import SharedPrefixLayer, shared_prefix_attention

    torch.manual_seed(0)
    prompts, n, kv_heads, heads, plen, dim = 3, 3, 2, 4, 5, 8
    pk, pv = torch.randn(prompts, kv_heads, plen, dim), torch.randn(prompts, kv_heads, plen, dim)
    keep = torch.ones(prompts, plen, dtype=torch.bool)
    keep[0, :2] = keep[2, :1] = False  # left padding
    layer = SharedPrefixLayer(pk, pv, keep, n)
    for step in range(3):
        layer.update(torch.randn(layer.owner.numel(), kv_heads, 1, dim), torch.randn(layer.owner.numel(), kv_heads, 1, dim))
        if step == 0:
            layer.batch_select_indices(torch.tensor([0, 1, 2, 5, 6, 7]))
        if step == 1:
            layer.batch_select_indices(torch.tensor([0, 1, 2, 4]))  # prompt 0 keeps all, 1 none, 2 one row
    assert layer.get_seq_length() == plen + 3 and layer.owner.tolist() == [0, 0, 0, 2]
    query = torch.randn(4, heads, 1, dim)
    ours, _ = shared_prefix_attention(SimpleNamespace(layer_idx=0), query, layer.keys, layer.values, None,
                                      scaling=dim ** -0.5, shared_prefix=SimpleNamespace(layers=[layer]))
    keys, values = (torch.cat([p[layer.owner], own], 2).repeat_interleave(heads // kv_heads, 1)
                    for p, own in ((pk, layer.keys), (pv, layer.values)))
    visible = torch.cat([keep[layer.owner], torch.ones(4, 3, dtype=torch.bool)], 1)[:, None, None, :]
    theirs = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=visible).transpose(1, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_decode_loop_draws_what_plain_generate_draws(random_policy, temperature):
    """Each prompt is encoded once and its KV cache copied to its n samples, and rows leave the batch as
    they end: the tokens drawn must still be those of `generate` over the n copies of every prompt (left
    padded, same seed), sampled or greedy."""
    gen = _gen(random_policy, batch_size=64, max_new_tokens=12)
    task = ArithTask(min_ops=1, max_ops=6)
    prompts = [task.format_prompt(p.question) for p in task.problems("test", 5)]  # different lengths
    n = 3 if temperature else 1
    ours = gen.generate(prompts, n=n, temperature=temperature, seed=4)
    shared = type(gen.prefill(gen.encode(prompts), n)[CACHE_KWARG].layers[0]).__name__ == "SharedPrefixLayer"
    assert shared == (n > 1)  # n samples read their prompt's keys once (shared_prefix_attention)
    flat = [p for p in prompts for _ in range(n)]
    enc = gen.encode(flat)
    torch.manual_seed(4 * 100003)  # the seed of the first (here the only) batch
    how = dict(do_sample=True, temperature=temperature, top_k=0) if temperature else dict(do_sample=False)
    plain = gen.model.generate(**enc, **how, max_new_tokens=12, pad_token_id=gen.tokenizer.pad_token_id,
                               eos_token_id=gen.tokenizer.eos_token_id)
    width = enc["input_ids"].shape[1]
    eos = gen.tokenizer.eos_token_id
    expected = [row[: row.index(eos)] if eos in row else row for row in plain[:, width:].tolist()]
    assert [s.token_ids for g in ours for s in g] == expected
    assert [s.finished for g in ours for s in g] == [eos in row for row in plain[:, width:].tolist()]
    if temperature == 1.0:
        assert len({tuple(s.token_ids) for s in ours[0]}) > 1  # the copies of one prompt sample apart
        ended = [s.finished for g in ours for s in g]
        assert any(ended) and not all(ended)  # rows left the batch while others went on


def test_buffered_cache_layer_holds_what_the_dynamic_layer_holds():
    """Writes in place, growth past the buffer, row selection, repeat and crop: same keys and values as
    transformers' own DynamicLayer after every operation."""
    torch.manual_seed(0)
    ours, theirs = BufferedLayer(), DynamicLayer()
    ops = {3: ("batch_repeat_interleave", 3), 7: ("batch_select_indices", torch.tensor([0, 2, 5])),
           10: ("crop", -2)}
    for i in range(13):
        if i in ops:
            name, arg = ops[i]
            for layer in (ours, theirs):
                getattr(layer, name)(arg)
        k = torch.randn(ours.keys.shape[0] if i else 2, 3, 1 if i else 5, 4)
        got, want = ours.update(k, -k), theirs.update(k, -k)
        assert all(torch.equal(g, w) for g, w in zip(got, want)) and ours.get_seq_length() == theirs.get_seq_length()
    assert ours.buffer[0].shape[-2] > ours.get_seq_length()  # still writing into spare room


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


def test_vllm_engine_length_is_the_config_key_or_prompt_room_within_the_model():
    """generation.vllm_max_model_len from an experiment section reaches the engine's length; 0 means
    max_new_tokens + 1024 prompt tokens, never past the model's positions; a longer key is an error."""
    from reward.config import load_config
    from reward.sample import SampleConfig

    model = {"max_position_embeddings": 2048}
    cfg = load_config(SampleConfig, "sample", None, ["generation.vllm_max_model_len=640"])
    assert engine_max_model_len(cfg.generation, model) == 640
    default = load_config(SampleConfig, "sample").generation
    assert default.vllm_max_model_len == 0 and engine_max_model_len(default, model) == default.max_new_tokens + 1024
    assert engine_max_model_len(default, {"max_position_embeddings": 512}) == 512
    with pytest.raises(ShepherdError, match="generation.vllm_max_model_len 4096 exceeds"):
        engine_max_model_len(load_config(SampleConfig, "sample", None, ["generation.vllm_max_model_len=4096"]).generation, model)
    with pytest.raises(ShepherdError, match="vllm_max_model_len"):  # a typo names the key it meant
        load_config(SampleConfig, "sample", None, ["generation.vllm_max_len=640"])


def test_vllm_engine_of_each_rank_sees_only_that_ranks_gpu(monkeypatch):
    """Under the launcher (WORLD_SIZE > 1) rank LOCAL_RANK's engine starts with only its own GPU visible;
    the variable is restored after. One process, or no GPU: nothing changes."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with this_ranks_gpu(on_gpu=True):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6"
    with this_ranks_gpu(on_gpu=False):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6"
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ShepherdError, match="LOCAL_RANK 3"):
        with this_ranks_gpu(on_gpu=True):
            pass
    monkeypatch.setenv("WORLD_SIZE", "1")
    with this_ranks_gpu(on_gpu=True):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6"


def test_models_load_without_hub_kernels(random_policy):
    """transformers kernelizes every from_pretrained by default, fetching layers from the Hub: offline on a GPU
    that load failed (`deepspeed` PPO and train-prm under ZeRO-3). Policy and critic keep their own layers."""
    from rl.ppo import load_critic

    assert not load_causal_lm(random_policy, device="cpu").use_kernels
    assert not load_critic(random_policy).use_kernels
