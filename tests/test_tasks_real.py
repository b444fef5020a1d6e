"""GSM8K and MATH tasks on real records from the shared data, plus their error messages and grading."""
from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from reward.errors import ShepherdError
from reward.tasks import load_task
from reward.tasks.gsm8k import normalize_number
from reward.tasks.math import VERIFY_TIMEOUT_S, _verifier

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def task(name: str, path: Path | str):
    return load_task(SimpleNamespace(name=name, path=str(path), chat_template=False))


@pytest.fixture(scope="module")
def gsm8k():
    if not (DATA / "gsm8k").is_dir():
        pytest.skip(f"no GSM8K data at {DATA / 'gsm8k'}")
    return task("gsm8k", DATA / "gsm8k")


@pytest.fixture(scope="module")
def math_task():
    if not (DATA / "math").is_dir():
        pytest.skip(f"no MATH500 data at {DATA / 'math'}")
    return task("math", DATA / "math")


# --- GSM8K -------------------------------------------------------------------------------------------

def test_gsm8k_test_split(gsm8k):
    first = gsm8k.problems("test", n=3)
    assert len(first) == 3
    assert first[0].id == "gsm8k-test-0"
    assert first[0].question.startswith("Janet")
    assert first[0].gold == "18"
    assert "<<" not in first[0].meta["solution"] and "####" not in first[0].meta["solution"]
    assert first[0].meta["solution"].endswith("The answer is 18")
    assert gsm8k.problems("test", n=3) == first  # deterministic


def test_gsm8k_reference_solutions_round_trip(gsm8k):
    problems = gsm8k.problems("train", n=200)
    assert len(problems) == 200
    for p in problems:
        assert "<<" not in p.meta["solution"], p.id
        assert gsm8k.extract_answer(p.meta["solution"]) == p.gold, p.id
        assert gsm8k.is_correct(p.meta["solution"], p.gold), p.id
        assert len(gsm8k.split_steps(p.meta["solution"])) >= 2, p.id


@pytest.mark.parametrize("raw, norm", [
    ("1,000", "1000"), ("$5", "5"), ("5.00", "5"), ("-3", "-3"), ("0.50", "0.5"), ("50%", "50"),
    ("$1,234.50.", "1234.5"), (" 7 ", "7"),
])
def test_gsm8k_normalisation(raw, norm):
    assert normalize_number(raw) == norm


@pytest.mark.parametrize("text, answer", [
    ("2 + 3 = 5\nThe answer is $1,000.", "1000"),
    ("The answer is 4, not 5. The answer is 5.00", "5"),
    ("so 12 - 15 = -3\n#### -3", "-3"),
    ("Hence \\boxed{0.50}", "0.5"),
    ("She has 3 apples and 4 pears, 7 fruits.", "7"),
    ("The answer is unknown, but 42 came up", "42"),
    ("no digits here", None),
])
def test_gsm8k_extract_answer(text, answer):
    assert load_task("gsm8k").extract_answer(text) == answer


def test_gsm8k_equivalence():
    t = load_task("gsm8k")
    assert t.is_equivalent("5.00", "5") and t.is_equivalent("1,000", "1000") and t.is_equivalent("1/2", "0.5")
    assert not t.is_equivalent("5.01", "5") and not t.is_equivalent(None, "5") and not t.is_equivalent("x", "5")


def test_gsm8k_bad_input(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(ShepherdError, match=re.escape(f"{bad}:2")):
        task("gsm8k", bad).problems("test")
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(ShepherdError, match=re.escape(f"{bad}:2: missing field 'answer'")):
        task("gsm8k", bad).problems("test")
    with pytest.raises(ShepherdError, match="missing.jsonl"):
        task("gsm8k", tmp_path / "missing.jsonl").problems("test")
    with pytest.raises(ShepherdError, match="test.jsonl"):  # a folder without the split's file
        task("gsm8k", tmp_path).problems("test")
    with pytest.raises(ShepherdError, match="task.path"):
        task("gsm8k", "").problems("test")
    with pytest.raises(ShepherdError, match="nobody/no-such-dataset"):  # a hub id, offline or unknown
        task("gsm8k", "nobody/no-such-dataset").problems("test")
    with pytest.raises(ShepherdError, match="nope.*task.name"):
        load_task("nope")


# --- MATH --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answer", [
    ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("first \\boxed{1}, finally \\boxed{\\sqrt{\\frac{a}{b^{2}}}}", "\\sqrt{\\frac{a}{b^{2}}}"),
    ("\\fbox{x^{2}+1}", "x^{2}+1"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("$\\boxed 5$", "5"),
    ("cut off \\boxed{\\frac{1}{2", None),
    ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("nothing to see", None),
])
def test_math_extract_answer(text, answer):
    assert load_task("math").extract_answer(text) == answer


def test_math500_gold_matches_own_solution(math_task):
    problems = math_task.problems("test", n=100)
    assert len(problems) == 100
    assert problems[0].id == "test/precalculus/807.json"
    failures = [(p.id, p.gold, math_task.extract_answer(p.meta["solution"])) for p in problems
                if not math_task.is_correct(p.meta["solution"], p.gold)]
    assert len(failures) <= 5, failures


@pytest.mark.parametrize("pred, gold", [
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{1}{2}", "\\frac12"), ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("90^\\circ", "90"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"), ("2\\sqrt{2}", "\\sqrt{8}"),
])
def test_math_equivalent(pred, gold):
    assert load_task("math").is_equivalent(pred, gold)


@pytest.mark.parametrize("pred, gold", [("\\frac{1}{3}", "0.5"), ("x+1", "x-1"), (None, "1")])
def test_math_not_equivalent(pred, gold):
    assert not load_task("math").is_equivalent(pred, gold)


def test_math_pathological_input_times_out():
    t = load_task("math")
    start = time.monotonic()
    assert not t.is_equivalent("9^{9^{9^{9}}}", "1")
    assert time.monotonic() - start < VERIFY_TIMEOUT_S + 5
    assert t.is_equivalent("\\frac{2}{4}", "0.5")  # the grader still works afterwards


def test_math_verifier_worker_is_killed_on_time_out():
    start = time.monotonic()
    assert not _verifier("9^{9^{9^{9}}}", "1", 0.3)  # shorter than math_verify's own time-outs
    assert time.monotonic() - start < 2 and _verifier._proc is None
    assert _verifier("\\frac{2}{4}", "0.5", VERIFY_TIMEOUT_S)  # a fresh worker


def test_math_steps():
    t = load_task("math")
    assert t.split_steps("a\nb\n\nc\n\n\nd") == ["a\nb", "c", "d"]
    assert t.split_steps("a\nb\n") == ["a", "b"]
    steps = ["x = 1\ny = 2", "so 3"]
    assert t.split_steps(t.join_steps(steps)) == steps


def test_math_bad_input(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"problem": "p", "answer": "1"}\n\n{"problem": "p", "solution": "no box"}\n')
    with pytest.raises(ShepherdError, match=re.escape(f"{bad}:3")):
        task("math", tmp_path).problems("test")
    bad.write_text('{"solution": "\\\\boxed{1}"}\n')
    with pytest.raises(ShepherdError, match=re.escape(f"{bad}:1: missing field 'problem'")):
        task("math", bad).problems("test")
    p = task("math", tmp_path / "test.jsonl")
    bad.write_text('{"problem": "p", "solution": "so \\\\boxed{\\\\frac{1}{2}}"}\n')
    assert p.problems("test")[0].gold == "\\frac{1}{2}" and p.problems("test")[0].id == "math-test-0"
