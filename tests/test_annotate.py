"""Math-Shepherd annotation: HE/SE, prefix sharing, strategies, both formats, resume after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from reward.annotate import main as annotate_main, read_solutions
from reward.completion import Completer, StepCounts, labels_of
from reward.formats import tag_ids
from reward.errors import ShepherdError
from reward.io import read_jsonl
from reward.labels import from_math_shepherd, hard_estimate, soft_estimate, to_math_shepherd
from reward.tasks import load_task

from .conftest import REPO

ARITH = ["task.min_ops=3", "task.max_ops=5"]


def _annotate(samples, out, *extra):
    return annotate_main([f"input={samples}", f"output_dir={out}", *ARITH, *extra])


def test_he_se_on_hand_made_counts():
    assert [hard_estimate(k) for k in (0, 1, 8)] == [0, 1, 1]
    assert soft_estimate(3, 8) == 0.375 and soft_estimate(0, 4) == 0.0
    with pytest.raises(ValueError):
        soft_estimate(0, 0)

    class Sol:  # the parts of a Solution that labels_of reads
        correct = False
    counts = StepCounts(n_correct=[8, 3, 0, -1, 0], n_total=[8, 8, 8, 0, 0])
    he, se = labels_of(Sol(), counts)
    assert he == [1, 1, 0, 1, 0, 0]  # the last label is the solution's own (wrong) answer
    assert se == [1.0, 0.375, 0.0, 1.0, 0.0, 0.0]


def test_formats_round_trip():
    rec = {"prompt": "Compute 1 + 2 mod 10.", "completions": ["1 + 2 = 3", "3 * 2 = 6", "The answer is 6"],
           "labels": [True, False, False], "soft_labels": [0.75, 0.5, 0.0]}
    ms = to_math_shepherd(rec)
    assert ms["input"] == "Compute 1 + 2 mod 10.\n1 + 2 = 3 ки\n3 * 2 = 6 ки\nThe answer is 6 ки\n"
    assert ms["label"] == "Compute 1 + 2 mod 10.\n1 + 2 = 3 +\n3 * 2 = 6 -\nThe answer is 6 -\n"
    back = from_math_shepherd(ms)
    assert back == {"prompt": rec["prompt"], "completions": rec["completions"], "labels": rec["labels"]}
    assert from_math_shepherd(to_math_shepherd(rec, "se", 0.4))["labels"] == [True, True, False]
    with pytest.raises(ShepherdError):
        to_math_shepherd({**rec, "labels": [True]})


def test_full_annotation_outputs(tiny_samples, tmp_path):
    m = _annotate(tiny_samples, tmp_path, "n_completions=4")
    rows = read_jsonl(str(tmp_path / "stepwise.jsonl"))
    assert len(rows) == 32 == m["solutions"]
    for r in rows:
        k = len(r["completions"])
        assert len(r["labels"]) == len(r["soft_labels"]) == len(r["n_correct"]) == len(r["n_total"]) == k
        assert r["n_total"][:-1] == [4] * (k - 1) and r["n_total"][-1] == 1
        assert r["labels"][-1] == r["correct"]
        assert r["labels"] == [c > 0 for c in r["n_correct"]]
        assert r["soft_labels"][:-1] == [round(c / 4, 4) for c in r["n_correct"][:-1]]
    ms = read_jsonl(str(tmp_path / "math_shepherd.jsonl"))
    assert [from_math_shepherd(x)["labels"] for x in ms] == [r["labels"] for r in rows]
    assert m["completions_generated"] <= sum(len(r["completions"]) - 1 for r in rows) * 4
    assert m["steps"] == sum(len(r["labels"]) for r in rows)


def test_prefix_sharing_fewer_completions_same_labels(tiny_world, tiny_samples, tmp_path):
    """Greedy completions make labels deterministic: sharing must change the cost, not the labels."""
    lines = tiny_samples.read_text().splitlines()
    doubled = tmp_path / "doubled.jsonl"  # every solution twice: every prefix has a twin
    doubled.write_text("".join(line + "\n" + line.replace('"id": "', '"id": "twin-', 1) + "\n" for line in lines))
    common = ["temperature=0", "n_completions=1", f"completer={tiny_world / 'policy'}"]
    shared = _annotate(doubled, tmp_path / "shared", *common)
    separate = _annotate(doubled, tmp_path / "separate", *common, "share_prefixes=false")
    a = read_jsonl(str(tmp_path / "shared" / "stepwise.jsonl"))
    b = read_jsonl(str(tmp_path / "separate" / "stepwise.jsonl"))
    assert len(a) == len(b) == 64
    assert [r["n_correct"] for r in a] == [r["n_correct"] for r in b]
    assert shared["completions_generated"] * 2 <= separate["completions_generated"]
    assert separate["completions_generated"] == sum(len(r["completions"]) - 1 for r in b)


def test_early_stop_invariants(tiny_samples, tmp_path):
    full = _annotate(tiny_samples, tmp_path / "full", "n_completions=4")
    es = _annotate(tiny_samples, tmp_path / "es", "n_completions=4", "strategy=early_stop", "early_stop_round=2")
    assert es["completions_generated"] < full["completions_generated"]
    for r in read_jsonl(str(tmp_path / "es" / "stepwise.jsonl")):
        sampled = list(zip(r["n_correct"][:-1], r["n_total"][:-1]))
        zero = next((k for k, (c, t) in enumerate(sampled) if t > 0 and c == 0), None)
        for k, (c, t) in enumerate(sampled):
            if zero is not None and k > zero:
                assert t == 0 and not r["labels"][k]  # labelled 0 without sampling
            else:
                assert t in (2, 4) and (c == 0 or c <= 2)  # stopped at the first round with a success
                assert r["labels"][k] == (c > 0)
    assert 0.0 <= es["early_stop_assumption_wrong"] <= 1.0


def test_binary_search_finds_the_first_failure(tiny_world, tiny_samples, tmp_path):
    """With greedy completions, where full HE labels are monotone, bisection must find the same labels."""
    common = ["temperature=0", "n_completions=1", f"completer={tiny_world / 'policy'}"]
    full = _annotate(tiny_samples, tmp_path / "full", *common)
    bs = _annotate(tiny_samples, tmp_path / "bs", *common, "strategy=binary_search")
    assert bs["completions_generated"] < full["completions_generated"]
    checked = 0
    for f, b in zip(read_jsonl(str(tmp_path / "full" / "stepwise.jsonl")), read_jsonl(str(tmp_path / "bs" / "stepwise.jsonl"))):
        he = f["labels"][:-1]
        if he == sorted(he, reverse=True):  # monotone: 1..1 0..0
            assert b["labels"] == f["labels"]
            checked += 1
        labels = b["labels"][:-1]
        assert labels == sorted(labels, reverse=True)  # bisection always yields monotone labels
    assert checked >= 16


def test_oracle_strategy_labels_up_to_the_first_error_without_a_model(tiny_samples, tmp_path, capsys):
    """No completer is loaded (the one named does not exist) and each label follows the oracle."""
    m = _annotate(tiny_samples, tmp_path / "or", "strategy=oracle", f"completer={tmp_path / 'no-model'}")
    assert m["completions_generated"] == 0
    rows = read_jsonl(str(tmp_path / "or" / "stepwise.jsonl"))
    assert len(rows) == 32 and any(any(r["labels"][:-1]) for r in rows) and not all(all(r["labels"]) for r in rows)
    for r in rows:
        k = len(r["completions"])
        first = k if r["first_error"] is None else r["first_error"]
        assert r["labels"] == [i < first for i in range(k - 1)] + [r["correct"]]
        assert r["n_total"] == [0] * (k - 1) + [1]
    with pytest.raises(SystemExit):  # a task without an oracle: one clear error, exit code 2
        _annotate(tiny_samples, tmp_path / "gsm", "strategy=oracle", "task.name=gsm8k")
    assert "strategy oracle needs a task with an oracle" in capsys.readouterr().err


def test_resume_after_sigkill_equals_uninterrupted(tiny_samples, tmp_path):
    args = [f"input={tiny_samples}", *ARITH, "n_completions=4", "chunk_solutions=4"]
    _annotate(tiny_samples, tmp_path / "whole", "n_completions=4", "chunk_solutions=4")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "reward.annotate", f"output_dir={killed}", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = killed / "stepwise.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and out.read_text().count("\n") >= 8):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out.read_text().count("\n")
    assert 0 < partial < 32, "the kill should land in the middle of the run"
    _annotate(tiny_samples, killed, "n_completions=4", "chunk_solutions=4")
    whole = read_jsonl(str(tmp_path / "whole" / "stepwise.jsonl"))
    resumed = read_jsonl(str(out))
    assert len({r["id"] for r in resumed}) == len(resumed) == 32
    assert resumed == whole
    assert (killed / "math_shepherd.jsonl").read_text() == (tmp_path / "whole" / "math_shepherd.jsonl").read_text()


def test_audit_table(tiny_samples, tmp_path):
    m = _annotate(tiny_samples, tmp_path, "n_completions=2", "audit=true", "audit_ns=[1,2,4]")
    table = (tmp_path / "audit.md").read_text()
    for row in ("| full | 1 |", "| full | 2 |", "| full | 4 |", "| early_stop | 2 |", "| binary_search | 2 |"):
        assert row in table
    rows = (tmp_path / "audit.csv").read_text().splitlines()
    spent = [int(r.split(",")[2]) for r in rows[1:4]]
    assert spent[1] == 2 * spent[0] and spent[2] == 4 * spent[0]
    assert 0.0 <= m["audit_he_step_accuracy"] <= 1.0 and m["audit_solutions"] == 32


def test_step_tag_must_be_encodable(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert tag_ids(fast) == []
    with pytest.raises(ShepherdError, match="completer's tokenizer cannot encode the step tag"):
        Completer(SimpleNamespace(tokenizer=fast), load_task("arith"), 1.0, True)


def test_bad_solutions_are_counted_skips(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"id": "a", "question": "Compute 1 + 2 mod 10.", "gold": "3", "steps": []}) + "\n"
                 + json.dumps({"id": "b", "question": "Compute 1 + 2 mod 10.", "steps": ["1 + 2 = 3"]}) + "\n"
                 + json.dumps({"id": "c", "question": "Compute 1 + 2 mod 10.", "gold": "3",
                               "steps": ["1 + 2 = 3", "The answer is 3"]}) + "\n"
                 + "".join(json.dumps({"id": f"slip{ok}", "question": "Compute 1 + 2 mod 10.", "gold": "3", "slip": True,
                                       "correct": ok, "steps": ["1 + 2 = 4", f"The answer is {3 if ok else 4}"]}) + "\n"
                           for ok in (True, False)))
    sols, skipped = read_solutions(str(f), load_task("arith"))
    assert [s.id for s in sols] == ["c", "slipFalse"] and sols[0].correct and not sols[1].correct
    assert skipped == {"skipped_no_steps": 1, "skipped_no_gold": 1, "skipped_slip_answer_right": 1}
    f.write_text('{"id": "a", "gold": "3"}\n')
    with pytest.raises(ShepherdError, match=f"{f}:1: missing field 'question'"):
        read_solutions(str(f), load_task("arith"))
