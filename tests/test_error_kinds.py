"""`shepherd error-kinds`: the first-error classifier on hand-made steps, the PRM flag count, and the
stage end to end on the tiny world."""
from __future__ import annotations

import json

import pytest

from reward.error_kinds import count, group_name, kind, main as error_kinds_main
from reward.errors import ShepherdError
from reward.tasks.arith import ArithTask

from .conftest import REPO


def test_each_kind_of_wrong_step():
    right = "3 - 7 = 6 ; 6 + 2"
    assert kind(right, "7 - 3 = 4 ; 4 + 2") == "taught rule"
    assert kind(right, "3 - 8 = 5 ; 5 + 2") == "operand"
    assert kind(right, "3 - 7 = 5 ; 5 + 2") == "result digit"
    assert kind(right, "3 - 7 = 6 ; 6 + 9") == "restated rest"
    assert kind(right, "3 - 7 is 6") == "format"


def test_count_finds_first_error_and_prm_flag():
    task = ArithTask(form="modular", ops="+-", wrong_rule="smaller_from_larger", carry_rest=True)
    problem = task.problems("test", 1, seed=0)[0]
    steps = task.solve(problem)
    result = task.apply(problem.meta["operands"][0], problem.meta["ops"][0], problem.meta["operands"][1])
    wrong = [steps[0].replace(f"= {result}", f"= {(result + 1) % 10}", 1)] + steps[1:]
    rows = [(steps, [0.9] * len(steps), True), (wrong, [0.3] + [0.9] * (len(steps) - 1), False),
            (wrong, [0.9] * len(steps), False)]
    records = [{"problem_id": problem.id, "question": problem.question, "gold": problem.gold, "meta": problem.meta,
                "solution": task.join_steps(s), "correct": correct, "step_scores": scores} for s, scores, correct in rows]
    n, right, found, flagged = count(task, records, threshold=0.6)
    assert (n, right) == (3, 1)
    assert found == {"result digit": 2} and flagged == {"result digit": 1}


def test_seeds_of_one_arm_pool():
    assert group_name("outputs/x/ppo-prm/seed0/policy") == group_name("outputs/x/ppo-prm/seed2/policy/") == "ppo-prm"
    assert group_name("outputs/x/world/policy") == "world"


def test_stage_on_the_tiny_world(tiny_world, tmp_path):
    """Two seeds' folders of one arm pool into one row; a rerun reads the scored samples it wrote."""
    policy = str(tiny_world / "policy")
    args = ["--config", str(REPO / "configs/experiments/arith_copy.yaml"), f"output_dir={tmp_path}",
            f"prm={policy}", f"policies=[{policy},{policy}]", "num_problems=6", "samples_per_problem=2"]
    metrics = error_kinds_main(args)
    name = group_name(policy)
    rows = [line for line in (tmp_path / "error_kinds.md").read_text().splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1 and rows[0].startswith(f"| {name} | 24 |")
    assert 0 <= metrics[f"{name}/accuracy"] <= 1
    shares = [metrics[f"{name}/{k}"] for k in ("taught_rule", "operand", "restated_rest", "result_digit",
                                                "missing_step", "format")]
    assert sum(shares) == pytest.approx(1 - metrics[f"{name}/accuracy"], abs=0.2)  # right answers can hide wrong steps
    scored = [json.loads(x) for x in next((tmp_path / "samples").iterdir()).read_text().splitlines()]
    assert len(scored) == 12 and all(len(r["step_scores"]) == len(r["steps"]) for r in scored)
    again = error_kinds_main(args)  # the samples are read back, not drawn again
    assert {k: v for k, v in again.items() if k != "stage_seconds"} == {k: v for k, v in metrics.items() if k != "stage_seconds"}


def test_needs_an_oracle_and_folders(tmp_path):
    with pytest.raises(ShepherdError, match="key policies"):
        from reward.config import load_config
        from reward.error_kinds import ErrorKindsConfig, run
        run(load_config(ErrorKindsConfig, "error-kinds", None, [f"output_dir={tmp_path}", "prm=x",
                                                               f"policies=[{tmp_path}/missing]"]))
