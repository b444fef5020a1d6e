"""The hacking check's first-error classifier (docs/results/arith_error_kinds.py) on hand-made steps."""
from __future__ import annotations

import importlib.util
import json

from omegaconf import OmegaConf

from reward.tasks.arith import ArithTask
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("arith_error_kinds", REPO / "docs" / "results" / "arith_error_kinds.py")
kinds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kinds)


def test_each_kind_of_wrong_step():
    right = "3 - 7 = 6 ; 6 + 2"
    assert kinds.kind(right, "7 - 3 = 4 ; 4 + 2") == "taught rule"
    assert kinds.kind(right, "3 - 8 = 5 ; 5 + 2") == "operand"
    assert kinds.kind(right, "3 - 7 = 5 ; 5 + 2") == "result digit"
    assert kinds.kind(right, "3 - 7 = 6 ; 6 + 9") == "restated rest"
    assert kinds.kind(right, "3 - 7 is 6") == "format"


def test_count_finds_first_error_and_prm_flag(tmp_path):
    task = ArithTask(form="modular", ops="+-", wrong_rule="smaller_from_larger", carry_rest=True)
    problem = task.problems("test", 1, seed=0)[0]
    steps = task.solve(problem)
    result = task.apply(problem.meta["operands"][0], problem.meta["ops"][0], problem.meta["operands"][1])
    wrong = [steps[0].replace(f"= {result}", f"= {(result + 1) % 10}", 1)] + steps[1:]
    rows = [(steps, [0.9] * len(steps), True), (wrong, [0.3] + [0.9] * (len(steps) - 1), False),
            (wrong, [0.9] * len(steps), False)]
    OmegaConf.save({"task": {"name": "arith", "ops": "+-", "wrong_rule": "smaller_from_larger", "carry_rest": True}},
                   tmp_path / "config.yaml")
    (tmp_path / "scores").mkdir()
    with open(tmp_path / "scores" / "scores.jsonl", "w") as f:
        for s, scores, correct in rows:
            f.write(json.dumps({"problem_id": problem.id, "question": problem.question, "gold": problem.gold,
                                "meta": problem.meta, "solution": task.join_steps(s), "correct": correct,
                                "step_scores": scores}) + "\n")
    n, right, found, flagged = kinds.count(str(tmp_path), threshold=0.6)
    assert (n, right) == (3, 1)
    assert found == {"result digit": 2} and flagged == {"result digit": 1}
