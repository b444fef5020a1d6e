"""Stages end to end on a small trained world: world, sample (with resume), eval, CLI and bad input."""
import json
import os
import subprocess
import sys

import pytest

from reward.io import read_jsonl
from reward.sample import main as sample_main
from rl.evaluate import main as eval_main

from .conftest import REPO


def test_world_outputs_and_learning(tiny_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics = json.loads((tiny_world / "metrics.json").read_text())
    for key in ("accuracy_greedy", "accuracy_t1", "format_error_rate", "right_answer_wrong_step", "train_seconds"):
        assert key in metrics
    assert (tiny_world / "config.yaml").read_text().count("wrong_rule: swap_sub") == 1
    env = json.loads((tiny_world / "environment.json").read_text())  # what built it, to tell builds apart
    import torch

    assert env["packages"]["torch"] == torch.__version__ and env["cpu_count"] == os.cpu_count()
    # 300 SFT steps teach the format and much of the arithmetic; an untrained model gets neither.
    assert metrics["format_error_rate"] < 0.25
    assert metrics["accuracy_greedy"] > 0.15
    policy = tiny_world / "policy"
    assert (policy / "model.safetensors").exists()
    AutoModelForCausalLM.from_pretrained(policy)
    assert AutoTokenizer.from_pretrained(policy).decode([5, 6]) != ""
    assert len(read_jsonl(str(tiny_world / "test.jsonl"))) == 100


def _sample(policy, out, n_problems=12):
    return sample_main([f"policy={policy}", f"output_dir={out}", f"num_problems={n_problems}", "samples_per_problem=4",
                        "generation.batch_size=16", "split=train", "seed=3"])


def test_sample_records_and_resume_after_a_kill(tiny_world, tmp_path):
    policy = tiny_world / "policy"
    whole = tmp_path / "whole"
    metrics = _sample(policy, whole)
    records = read_jsonl(str(whole / "samples.jsonl"))
    assert len(records) == 48 and metrics["samples"] == 48 and metrics["problems"] == 12
    r = records[0]
    for key in ("id", "problem_id", "question", "gold", "solution", "steps", "answer", "correct", "first_error", "meta"):
        assert key in r
    assert len({r["id"] for r in records}) == 48

    # A killed run: one whole chunk, half of the next, and a torn last line.
    killed = tmp_path / "killed"
    killed.mkdir()
    lines = (whole / "samples.jsonl").read_text().splitlines(keepends=True)
    (killed / "samples.jsonl").write_text("".join(lines[:22]) + lines[22][:15])
    _sample(policy, killed)
    resumed = read_jsonl(str(killed / "samples.jsonl"))
    assert [(r["id"], r["solution"]) for r in resumed] == [(r["id"], r["solution"]) for r in records]

    # A complete output is not sampled again.
    before = (killed / "samples.jsonl").read_text()
    _sample(policy, killed)
    assert (killed / "samples.jsonl").read_text() == before


def test_sample_with_reference_solutions(tiny_world, tmp_path):
    """include_reference: each problem's reference solution as one more graded record, the policy's own
    samples and accuracy unchanged (same seeds), so annotation has right steps even for a weak policy."""
    policy = tiny_world / "policy"
    plain = _sample(policy, tmp_path / "plain", n_problems=6)
    with_ref = sample_main([f"policy={policy}", f"output_dir={tmp_path / 'ref'}", "num_problems=6",
                            "samples_per_problem=4", "generation.batch_size=16", "split=train", "seed=3",
                            "include_reference=true"])
    records = read_jsonl(str(tmp_path / "ref" / "samples.jsonl"))
    refs = [r for r in records if r.get("reference")]
    assert len(records) == 30 and len(refs) == 6 and with_ref["references"] == 6
    assert all(r["correct"] and r["first_error"] is None and r["id"].endswith("-ref") for r in refs)
    own = [(r["id"], r["solution"]) for r in records if not r.get("reference")]
    assert own == [(r["id"], r["solution"]) for r in read_jsonl(str(tmp_path / "plain" / "samples.jsonl"))]
    assert with_ref["accuracy"] == plain["accuracy"] and with_ref["samples"] == plain["samples"] == 24


def test_eval_stage(tiny_world, tmp_path):
    metrics = eval_main([f"policy={tiny_world / 'policy'}", f"output_dir={tmp_path}", "num_problems=20",
                         "samples_per_problem=4"])
    for key in ("accuracy_greedy", "accuracy_t1", "accuracy_maj4", "format_error_rate"):
        assert 0.0 <= metrics[key] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy_maj4"] == metrics["accuracy_maj4"]
    records = read_jsonl(str(tmp_path / "eval_samples.jsonl"))
    assert len(records) == 20 + 80

    # Another seed: the same test problems (a benchmark's test set), other samples of them.
    eval_main([f"policy={tiny_world / 'policy'}", f"output_dir={tmp_path / 'seed1'}", "num_problems=20",
               "samples_per_problem=4", "seed=1"])
    other = read_jsonl(str(tmp_path / "seed1" / "eval_samples.jsonl"))
    assert [r["question"] for r in other] == [r["question"] for r in records]
    assert [r["solution"] for r in other] != [r["solution"] for r in records]


@pytest.mark.parametrize("args, message", [
    (["policy=/no/such/model"], "model folder not found: /no/such/model (key policy)"),
    (["task.name=nope", "policy=x"], "unknown task 'nope' (key task.name)"),
    (["num_problms=3"], "unknown config key 'num_problms'"),
    (["task.name=gsm8k", "task.path=/no/such/file.jsonl", "policy=x"], "/no/such/file.jsonl"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sample_main([f"output_dir={tmp_path}"] + args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_jsonl_line_named(tmp_path, capsys, random_policy):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(SystemExit):
        sample_main([f"output_dir={tmp_path}/o", "task.name=gsm8k", f"task.path={bad}", f"policy={random_policy}"])
    assert f"{bad}:2" in capsys.readouterr().err


def test_cli_help_lists_stages_and_keys():
    out = subprocess.run([sys.executable, "-m", "rl.cli", "--help"], capture_output=True, text=True, cwd=REPO)
    for stage in ("world", "sft", "sample", "eval"):
        assert stage in out.stdout
    out = subprocess.run([sys.executable, "-m", "rl.cli", "sample", "--help"], capture_output=True, text=True, cwd=REPO)
    assert "samples_per_problem: 16" in out.stdout and "temperature" in out.stdout
    out = subprocess.run([sys.executable, "-m", "rl.cli", "nope"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "unknown stage 'nope'" in out.stderr


def test_sft_stage_lowers_solution_loss(random_policy, tmp_path):
    """`shepherd sft` from an existing folder: the loss on unseen solutions goes down."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reward.tasks import load_task
    from rl.sft import SolutionOnlyCollator, encode_pairs, main as sft_main, training_pairs

    task = load_task("arith")
    tok = AutoTokenizer.from_pretrained(random_policy)
    batch = SolutionOnlyCollator(tok.pad_token_id)(encode_pairs(task, tok, training_pairs(task, 64, seed=99)))

    def loss(folder):
        with torch.no_grad():
            return AutoModelForCausalLM.from_pretrained(folder)(**batch).loss.item()

    metrics = sft_main([f"init={random_policy}", f"output_dir={tmp_path}", "train.steps=40", "train.batch_size=16",
                        "train.warmup_steps=5"])
    assert metrics["train_steps"] == 40
    assert loss(tmp_path / "policy") < loss(random_policy) - 0.5
    assert any((tmp_path / "tensorboard").iterdir())
