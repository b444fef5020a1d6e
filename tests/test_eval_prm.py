"""`shepherd eval-prm`: ProcessBench's first-wrong-step metric, threshold choice, both loaders, a run."""
import json
import math
import re

import pytest

from reward.errors import ShepherdError
from reward.eval_prm import (
    THRESHOLDS, choose_threshold, first_error_metrics, load_processbench, main as eval_prm_main,
    predict_first_error, split_cases, take,
)
from reward.io import read_jsonl, write_jsonl_atomic
from reward.tasks import Problem
from reward.tasks.arith import ArithTask

from .conftest import SHARED_DATA

GSM8K = SHARED_DATA / "processbench" / "gsm8k.json"


def test_predict_first_error():
    assert predict_first_error([0.9, 0.4, 0.1], 0.5) == 1
    assert predict_first_error([0.2, 0.9], 0.5) == 0
    assert predict_first_error([0.9, 0.8], 0.5) == -1
    assert predict_first_error([0.5], 0.5) == -1  # below, not at, the threshold is an error
    assert predict_first_error([], 0.5) == -1


def test_metrics_on_hand_made_predictions():
    # erroneous: 2 of 4 found at their step (one flagged too late, one missed); correct: 2 of 3 kept at -1
    m = first_error_metrics([2, 3, -1, 0, -1, -1, 1], [2, 1, 0, 0, -1, -1, -1])
    assert m["acc_erroneous"] == 0.5 and m["acc_correct"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # harmonic mean
    assert (m["solutions"], m["erroneous"], m["correct"]) == (7, 4, 3)
    assert first_error_metrics([0, -1], [0, -1])["f1"] == 1.0
    assert first_error_metrics([-1, 0], [0, -1])["f1"] == 0.0  # both accuracies 0: F1 0, not 0/0


def test_metrics_edge_cases():
    all_correct = first_error_metrics([-1, -1, 2], [-1, -1, -1])
    assert all_correct["acc_correct"] == pytest.approx(2 / 3)
    assert math.isnan(all_correct["acc_erroneous"]) and math.isnan(all_correct["f1"])  # no erroneous ones
    never_flag = first_error_metrics([-1, -1, -1], [0, 1, -1])  # calls everything correct
    assert never_flag["acc_correct"] == 1.0 and never_flag["acc_erroneous"] == 0.0 and never_flag["f1"] == 0.0
    with pytest.raises(ValueError):
        first_error_metrics([0], [0, 1])


def test_threshold_maximises_validation_f1():
    scores = [[0.9, 0.3, 0.8], [0.9, 0.6, 0.7], [0.45, 0.9], [0.8, 0.85]]
    labels = [1, -1, 0, -1]
    t, m = choose_threshold(scores, labels)
    # 0.50, 0.55 and 0.60 all separate perfectly; below 0.50 the 0.45 step passes, above 0.60 the 0.6 fails
    assert t == 0.5 and m["f1"] == 1.0
    for other in THRESHOLDS:
        f1 = first_error_metrics([predict_first_error(s, other) for s in scores], labels)["f1"]
        assert f1 <= m["f1"]
        assert (f1 == 1.0) == (0.5 <= other <= 0.6)
    assert THRESHOLDS[0] == 0.05 and THRESHOLDS[-1] == 0.95 and len(THRESHOLDS) == 19


@pytest.mark.skipif(not GSM8K.is_file(), reason="ProcessBench not in ../shared/data")
def test_processbench_loader_and_metric_on_a_slice():
    raw = json.loads(GSM8K.read_text())
    cases = take(load_processbench(str(GSM8K)), 20, seed=0)
    assert len(cases) == 20 and take(load_processbench(str(GSM8K)), 20, seed=0) == cases  # seeded
    for c in cases:
        r = raw[int(c.group)]  # a ProcessBench record is its own group, named by its index
        assert (c.label, c.steps, c.question) == (r["label"], r["steps"], r["problem"])
    # The file holds its 200 wrong final answers first: a random draw, not the head, has both kinds.
    assert -1 not in {r["label"] for r in raw[:200]}
    assert {c.label == -1 for c in cases} == {True, False}
    val, test = split_cases(cases, 0.5, seed=0)
    assert len(val) == len(test) == 10 and not {id(c) for c in val} & {id(c) for c in test}
    assert split_cases(cases, 0.5, seed=0)[0] == val  # seeded
    # A constant score is either "every step wrong" (predict 0) or "all right" (predict -1).
    labels = [c.label for c in cases]
    high = first_error_metrics([predict_first_error([0.9] * len(c.steps), 0.5) for c in cases], labels)
    low = first_error_metrics([predict_first_error([0.1] * len(c.steps), 0.5) for c in cases], labels)
    assert high["acc_correct"] == 1.0 and high["acc_erroneous"] == 0.0
    assert low["acc_correct"] == 0.0 and low["acc_erroneous"] == sum(x == 0 for x in labels) / sum(x != -1 for x in labels)


def test_processbench_bad_input_names_file_and_record(tmp_path, capsys):
    bad = tmp_path / "pb.json"
    bad.write_text(json.dumps([{"problem": "p", "steps": ["a"], "label": -1}, {"problem": "q", "steps": ["b"]}]))
    with pytest.raises(ShepherdError, match=re.escape(f"{bad}: record 1 has no 'label'")):
        load_processbench(str(bad))
    with pytest.raises(ShepherdError, match="not found"):
        load_processbench(str(tmp_path / "missing.json"))
    with pytest.raises(SystemExit):  # the stage turns it into one line, before loading any model
        eval_prm_main(["source=processbench", f"path={bad}", "model=unused", f"output_dir={tmp_path / 'out'}"])
    assert f"{bad}: record 1" in capsys.readouterr().err


def test_eval_prm_arith_end_to_end(tiny_world, tiny_samples, tmp_path):
    from reward.annotate import main as annotate_main

    annotate_main([f"input={tiny_samples}", f"output_dir={tmp_path / 'ann'}", "n_completions=2",
                   "task.min_ops=3", "task.max_ops=5"])
    stepwise = str(tmp_path / "ann" / "stepwise.jsonl")
    # The briefly trained policy may get every solution wrong, and F1 needs both kinds: add the oracle's
    # right solution of every problem.
    rows, task = read_jsonl(stepwise), ArithTask(min_ops=3, max_ops=5)
    right = {r["problem_id"]: {**r, "id": f"{r['problem_id']}-right", "first_error": None,
                               "completions": task.solve(Problem(r["problem_id"], r["prompt"], r["gold"], r["meta"]))}
             for r in rows}
    write_jsonl_atomic(stepwise, rows + list(right.values()))
    out = tmp_path / "eval"
    # The policy has the tag tokens, so it can stand in for a PRM: the scores mean nothing, the pipeline runs.
    m = eval_prm_main([f"model={tiny_world / 'policy'}", f"input={stepwise}", f"output_dir={out}", "batch_size=8"])
    assert m["threshold"] in THRESHOLDS
    assert m["val_solutions"] + m["test_solutions"] == 32 + 8
    for key in ("val_f1", "test_acc_erroneous", "test_acc_correct", "test_f1"):
        assert m[key] is None or 0.0 <= m[key] <= 1.0  # None: the test split lacks that kind of solution
    assert m["val_f1"] is not None
    assert (out / "eval_prm.md").is_file() and "| test |" in (out / "eval_prm.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["threshold"] == m["threshold"]


def test_arith_loader_reads_annotate_and_sample_records(tmp_path):
    from reward.eval_prm import load_arith

    f = tmp_path / "mixed.jsonl"
    rows = [{"problem_id": "p1", "prompt": "Compute 1 + 2 mod 10.", "completions": ["1 + 2 = 3", "The answer is 3"],
             "first_error": None},
            {"problem_id": "p2", "question": "Compute 2 + 2 mod 10.", "steps": ["2 + 2 = 5", "The answer is 5"],
             "first_error": 0},
            {"problem_id": "p3", "question": "Compute 2 * 2 mod 10.", "steps": ["2 * 2 = 4"], "first_error": 1}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases = load_arith(str(f))
    assert [(c.question, c.label) for c in cases] == [
        ("Compute 1 + 2 mod 10.", -1), ("Compute 2 + 2 mod 10.", 0), ("Compute 2 * 2 mod 10.", 0)]
    f.write_text(json.dumps({**rows[1], "steps": []}) + "\n")
    with pytest.raises(ShepherdError, match=r"mixed.jsonl:1: a record with no steps"):
        load_arith(str(f))
