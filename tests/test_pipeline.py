"""The whole pipeline on a miniature experiment (seconds per stage): every stage, three PPO arms, the
report; run again, it skips everything."""
import json
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import REPO


def mini_experiment(tmp_path):
    out = tmp_path / "outputs"
    base = {
        "experiment": "mini", "seed": 0,
        "task": {"name": "arith", "form": "modular", "min_ops": 1, "max_ops": 2, "wrong_rule": "swap_sub",
                 "wrong_rule_share": 0.3},
        "world": {"output_dir": f"{out}/world", "train": {"steps": 150, "batch_size": 32, "warmup_steps": 10},
                  "eval_problems": 20, "eval_samples": 2},
        "eval": {"output_dir": f"{out}/eval", "policy": f"{out}/world/policy", "num_problems": 10,
                 "samples_per_problem": 2},
        "sample": {"output_dir": f"{out}/sample", "policy": f"{out}/world/policy", "num_problems": 8,
                   "samples_per_problem": 4},
        "annotate": {"output_dir": f"{out}/annotate", "input": f"{out}/sample/samples.jsonl", "n_completions": 2,
                     "audit": True, "audit_solutions": 16},
        "train_prm": {"output_dir": f"{out}/train-prm", "data": f"{out}/annotate/stepwise.jsonl",
                      "init": f"{out}/world/policy", "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1}},
        "train_orm": {"output_dir": f"{out}/train-orm", "kind": "orm", "data": f"{out}/sample/samples.jsonl",
                      "init": f"{out}/world/policy", "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1}},
        "verify": {"output_dir": f"{out}/verify", "policy": f"{out}/world/policy", "prm": f"{out}/train-prm/model",
                   "orm": f"{out}/train-orm/model", "num_problems": 10, "n": 8},
        "eval_prm": {"output_dir": f"{out}/eval-prm", "model": f"{out}/train-prm/model", "source": "arith",
                     "input": f"{out}/verify/scored.jsonl"},
        "ppo": {"policy": f"{out}/world/policy", "train_problems": 16, "eval_every": 2, "eval_problems": 4,
                "eval_samples": 2, "final_eval_problems": 6, "final_eval_samples": 2, "checkpoint_every": 2,
                "ppo": {"updates": 2, "prompts_per_update": 4, "samples_per_prompt": 4, "minibatch_size": 16,
                        "max_new_tokens": 32}},
        "prm_round": {"output_dir": f"{out}/prm-round"},
        "pipeline": {"output_dir": f"{out}/report", "seeds": [0], "jobs": 2},
    }
    base["arms"] = {kind: {"output_dir": f"{out}/ppo-{kind}", "reward": {"type": kind} | (
        {"model": f"{out}/train-{kind}/model"} if kind != "rule" else {})} for kind in ("prm", "orm", "rule")}
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(base))
    return tmp_path / "mini.yaml", out


def pipeline(config, *overrides):
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "rl.cli", "pipeline", "--config", str(config), *overrides], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return time.time() - started, proc.stdout


def test_pipeline_end_to_end_then_skips_everything(tmp_path):
    config, out = mini_experiment(tmp_path)
    pipeline(config)
    for stage in ("world", "eval", "sample", "annotate", "train-prm", "train-orm", "verify", "eval-prm"):
        assert (out / stage / "metrics.json").exists(), stage
    for kind in ("prm", "orm", "rule"):
        m = json.loads((out / f"ppo-{kind}" / "seed0" / "metrics.json").read_text())
        assert m["reward_type"] == kind and 0 <= m["accuracy_t1"] <= 1 and 0 <= m["accuracy_greedy"] <= 1
    assert f"[eval] wrote {out}/eval" in (out / "eval.log").read_text()  # two at once: each stage's output in its log
    report = (out / "report" / "report.md").read_text()
    for needle in ("SFT policy", "ppo-prm", "ppo-orm", "ppo-rule", "ppo-prm - ppo-orm", "Verification",
                   "Label quality", "First wrong step", "Wall time", "Cost and the hacking alarm"):
        assert needle in report, needle
    assert (out / "report" / "report_curves.png").stat().st_size > 1000
    seconds, stdout = pipeline(config)
    assert stdout.count("complete, skipped") == 11 and seconds < 60

    # A second PRM round: labels on the PRM arm's own samples, a PRM on both rounds, the arm again.
    pipeline(config, "prm_rounds=2")
    rnd = out / "prm-round2"
    m = json.loads((rnd / "metrics.json").read_text())
    first = (out / "annotate" / "stepwise.jsonl").read_text().splitlines()
    new = (rnd / "annotate" / "stepwise.jsonl").read_text().splitlines()
    assert 0 < len(new) <= 8 * 4 and m["records"] == len(first) + len(new) == len((rnd / "data.jsonl").read_text().splitlines())
    assert m["round"] == 2 and m["completer"] == f"{out}/world/policy"
    sampled = yaml.safe_load((rnd / "sample" / "config.yaml").read_text())
    assert sampled["policy"] == f"{out}/ppo-prm/seed0/policy"
    trained = yaml.safe_load((out / "ppo-prm-r2" / "seed0" / "config.yaml").read_text())
    assert trained["reward"]["model"] == f"{rnd}/train-prm/model" and (rnd / "train-prm" / "model").is_dir()
    assert "ppo-prm-r2" in (out / "report" / "report.md").read_text()


def test_stages_at_once_wait_for_the_stages_they_read_from(tmp_path):
    """Each stage waits for those whose output folder its section names; a stage nothing can run beside
    gets every core, the others a share; fixed by the file, not by which stage finishes first."""
    import os

    from rl.pipeline import Job, order_jobs

    config, out = mini_experiment(tmp_path)
    stages = ("world", "eval", "sample", "annotate", "train-prm", "train-orm", "verify", "eval-prm")
    jobs = [Job(s, s, f"{out}/{s}", []) for s in stages]
    jobs += [Job(f"ppo-{k}", "ppo", f"{out}/ppo-{k}/seed0", [f"arm={k}", "seed=0"]) for k in ("prm", "orm", "rule")]
    after = {j.name: j.after for j in order_jobs(jobs, str(config), 2)}
    assert after["world"] == set() and after["eval"] == after["sample"] == after["ppo-rule"] == {"world"}
    assert after["annotate"] == {"sample"} and after["train-prm"] == {"world", "annotate"}
    assert after["train-orm"] == {"world", "sample"}  # outcomes only: it trains beside the annotation
    assert after["verify"] == {"world", "train-prm", "train-orm"} and after["eval-prm"] == {"train-prm", "verify"}
    assert after["ppo-prm"] == {"world", "train-prm"} and after["ppo-orm"] == {"world", "train-orm"}
    cores = len(os.sched_getaffinity(0))
    threads = {j.name: j.threads for j in jobs}
    assert threads["world"] == cores and threads["annotate"] == threads["ppo-prm"] == max(1, cores // 2)
    assert all(j.after == set() and j.threads == 0 for j in order_jobs([Job(s, s, f"{out}/{s}", []) for s in stages],
                                                                        str(config), 1))


def test_the_critical_path_starts_first_and_one_slot_keeps_the_list_order(tmp_path):
    """With two slots the ready job on the longest chain to the end starts first (sampling, which the
    reward models and PPO arms wait on, before the rule arm and eval); with one, the file's order."""
    from rl.pipeline import Job, order_jobs, ready_jobs

    config, out = mini_experiment(tmp_path)
    stages = ("world", "eval", "sample", "annotate", "train-prm", "train-orm", "verify", "eval-prm")
    jobs = [Job(s, s, f"{out}/{s}", []) for s in stages]
    jobs += [Job(f"ppo-{k}", "ppo", f"{out}/ppo-{k}/seed0", [f"arm={k}", "seed=0"]) for k in ("prm", "orm", "rule")]
    order_jobs(jobs, str(config), 2)
    waiting = {j.name for j in jobs}

    def ready(done: set[str]) -> list[str]:
        return [j.name for j in ready_jobs([j for j in jobs if j.name not in done], waiting - done, 2)]

    assert ready(set()) == ["world"]
    assert ready({"world"}) == ["sample", "ppo-rule", "eval"]
    assert ready({"world", "sample"})[:2] == ["annotate", "train-orm"]
    done = {"world", "eval", "sample", "annotate", "train-orm", "train-prm", "ppo-rule"}
    assert ready(done) == ["ppo-prm", "ppo-orm", "verify"]  # PPO (two stages' weight) ties verify + eval-prm
    one = [Job(s, s, f"{out}/{s}", []) for s in ("world", "sample")] + [Job("ppo-rule", "ppo", f"{out}/p", [])]
    order_jobs(one, str(config), 1)
    assert [j.name for j in ready_jobs(one, {j.name for j in one}, 1)] == ["world", "sample", "ppo-rule"]


def test_a_failed_stage_stops_the_ones_beside_it_and_is_named_with_its_log(tmp_path):
    import pytest

    from reward.errors import ShepherdError
    from rl.pipeline import Job, run_jobs

    config, out = mini_experiment(tmp_path)
    jobs = [Job("world", "world", f"{out}/world", ["train.steps=100000"]),  # long: still running when eval fails
            Job("eval", "eval", f"{out}/eval", [f"policy={tmp_path}/missing"])]
    with pytest.raises(ShepherdError, match=rf"(?s)stage eval failed.*{out}/eval.log.*{tmp_path}/missing"):
        run_jobs(jobs, str(config), slots=2)
    assert not (out / "world" / "metrics.json").exists() and (out / "world.log").exists()


def test_report_compares_every_arm_with_the_orm_and_rule_baselines():
    from rl.report import comparisons

    assert comparisons(["ppo-rule", "ppo-prm", "ppo-orm"]) == [
        ("ppo-prm", "ppo-orm"), ("ppo-prm", "ppo-rule"), ("ppo-orm", "ppo-rule")]
    assert comparisons(["ppo-prm-rule", "ppo-prm", "ppo-rule"]) == [("ppo-prm", "ppo-rule"), ("ppo-prm-rule", "ppo-rule")]
    assert comparisons(["ppo-prm", "ppo-prm-r2"]) == []
    assert comparisons(["ppo-rule", "ppo-prm-big", "ppo-orm-big"]) == [  # baselines of another size, by suffix
        ("ppo-prm-big", "ppo-orm-big"), ("ppo-prm-big", "ppo-rule"), ("ppo-orm-big", "ppo-rule")]


def test_report_gives_each_arms_cost_alarm_and_asked_pairs(tmp_path):
    """Seconds and peak memory per update are means over an arm's seeds; a seed whose log shows accuracy
    down while the learned reward held or rose is named with its update; `pairs` adds a - b by seed."""
    from rl.report import main as report_main

    def run(arm: str, seed: int, acc: float, scores: list[float], evals: list[float]) -> str:
        d = tmp_path / arm / f"seed{seed}"
        d.mkdir(parents=True)
        rows = [{"update": u + 1, "reward/score": sc, "seconds": 2.0 + seed, "memory/peak_gb": 0.5 + seed}
                for u, sc in enumerate(scores)]
        for row, e in zip(rows[1::2], evals):
            row["eval/accuracy_t1"] = e
        (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        sft = {"sft_accuracy_t1": 0.5, "sft_accuracy_greedy": 0.6}
        (d / "metrics.json").write_text(json.dumps({"accuracy_t1": acc, "accuracy_greedy": acc, "problems": 100, **sft}))
        return str(d)

    runs = [run("ppo-a", 0, 0.8, [0.1, 0.2, 0.3, 0.4], [0.7, 0.6]),  # reward up, accuracy down: alarm at 4
            run("ppo-a", 1, 0.9, [0.1, 0.2, 0.3, 0.4], [0.7, 0.8]),
            run("ppo-b", 0, 0.6, [0.4, 0.3, 0.2, 0.1], [0.7, 0.6]),  # both down: no alarm
            run("ppo-b", 1, 0.6, [0.4, 0.3, 0.2, 0.1], [0.7, 0.8])]
    report_main([*runs, f"output_dir={tmp_path / 'out'}", "pairs=[ppo-a:ppo-b]"])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| ppo-a | 2.5 | 1.50 | seed0@4 |" in text and "| ppo-b | 2.5 | 1.50 | none |" in text
    assert "ppo-a - ppo-b (accuracy_t1, 2 seed(s)): 0.250 ±" in text
    report_main([runs[0], f"output_dir={tmp_path / 'out'}", "name=seed0"])  # another report in the same folder
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["arms"] == 2 and "- ppo-a:ppo-b" in (tmp_path / "out" / "config.yaml").read_text()
    assert json.loads((tmp_path / "out" / "seed0_metrics.json").read_text())["arms"] == 1
    assert "name: seed0" in (tmp_path / "out" / "seed0_config.yaml").read_text()
    assert (tmp_path / "out" / "seed0_environment.json").is_file() and (tmp_path / "out" / "seed0.md").is_file()
    with pytest.raises(SystemExit):
        report_main([*runs, f"output_dir={tmp_path / 'out2'}", "pairs=[ppo-a:ppo-c]"])


def test_the_papers_recipe_loads_for_every_stage():
    """configs/experiments/gsm8k_mistral7b.yaml (what launch/paper_recipe.sh runs) is valid for each stage."""
    from reward.annotate import AnnotateConfig
    from reward.config import load_config, stage_output_dir
    from reward.eval_prm import EvalPrmConfig
    from reward.sample import SampleConfig
    from reward.train import RewardTrainConfig
    from reward.verify import VerifyConfig
    from rl.pipeline import PipelineConfig

    exp = str(REPO / "configs/experiments/gsm8k_mistral7b.yaml")
    for stage, schema in (("sample", SampleConfig), ("annotate", AnnotateConfig), ("train-prm", RewardTrainConfig),
                          ("train-orm", RewardTrainConfig), ("verify", VerifyConfig), ("eval-prm", EvalPrmConfig),
                          ("pipeline", PipelineConfig)):
        cfg = load_config(schema, stage, exp)
        assert cfg.task.name == "gsm8k" and cfg.output_dir == stage_output_dir(exp, stage), stage
    assert load_config(RewardTrainConfig, "train-orm", exp).kind == "orm"
    assert "zero3" in load_config(RewardTrainConfig, "train-prm", exp).train.deepspeed


def test_prm_round_checks_its_inputs_before_sampling(tmp_path):
    """A missing earlier round or an unknown starting policy fails at once, naming the path or key."""
    import pytest

    from reward.config import load_config
    from reward.errors import ShepherdError
    from rl.prm_round import PrmRoundConfig, run, started_from

    config, out = mini_experiment(tmp_path)
    run_dir = out / "ppo-prm" / "seed0"
    (run_dir / "policy").mkdir(parents=True)
    with pytest.raises(ShepherdError, match="give the completer"):
        started_from(str(run_dir / "policy"))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"policy": "outputs/x/world/policy"}))
    assert started_from(str(run_dir / "policy") + "/") == "outputs/x/world/policy"

    (out / "annotate").mkdir(parents=True)
    (out / "annotate" / "stepwise.jsonl").write_text("{}\n")
    cfg = load_config(PrmRoundConfig, "prm-round", str(config),
                      [f"experiment_file={config}", f"policy={run_dir}/policy", f"earlier_rounds=[{out}/prm-round2]"])
    with pytest.raises(ShepherdError, match=f"{out}/prm-round2/annotate/stepwise.jsonl"):
        run(cfg)
    assert not (out / "prm-round" / "sample").exists()  # nothing sampled before the check


def test_prm_rounds_iterate_the_first_process_reward_arm(tmp_path):
    import pytest

    from reward.config import load_config
    from reward.errors import ShepherdError
    from rl.pipeline import PipelineConfig, pipeline_arms, round_arm

    config, _ = mini_experiment(tmp_path)
    cfg = load_config(PipelineConfig, "pipeline", str(config), [f"experiment_file={config}"])
    assert round_arm(cfg) == "prm"  # arms: prm, orm, rule
    cfg.arms = ["orm", "rule"]
    with pytest.raises(ShepherdError, match="prm_rounds > 1 needs an arm"):
        round_arm(cfg)
    cfg.prm_arm = "missing"
    with pytest.raises(ShepherdError, match=r"unknown arm 'missing' \(key prm_arm\).*arms: orm, prm, rule"):
        round_arm(cfg)
    cfg.arms = ["prm", "nope"]
    with pytest.raises(ShepherdError, match="unknown arm 'nope' in key arms"):
        pipeline_arms(cfg)


def test_an_unknown_pipeline_stage_lists_every_stage_it_can_run(tmp_path):
    """Every stage the CLI has that runs before the PPO arms is named, import-gguf and score included."""
    import pytest

    from reward.config import load_config
    from reward.errors import ShepherdError
    from rl.pipeline import PipelineConfig, run

    experiment = str(REPO / "configs/experiments/arith_tiny.yaml")
    for bad in ("ppo", "nope"):
        cfg = load_config(PipelineConfig, "pipeline", experiment, [f"experiment_file={experiment}", f"stages=[{bad}]",
                                                                   f"output_dir={tmp_path}"])
        with pytest.raises(ShepherdError, match=f"unknown stage '{bad}' in key stages; use some of import-gguf, "
                                                "world, sft, .*score, verify, eval-prm$"):
            run(cfg)
