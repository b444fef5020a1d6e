"""Slip samples: one step of a sample forced wrong, the rest the policy's; annotate and the ORM keep only
those whose answer the slip made wrong; verify never takes them as candidates."""
import random

from reward.annotate import read_solutions
from reward.io import read_jsonl
from reward.sample import main as sample_main
from reward.slips import slip_step
from reward.tasks.arith import ArithTask
from reward.train import read_examples


def test_slip_step_changes_one_digit_or_one_token():
    """A number slip is the step up to a number with one digit changed (the policy writes the rest of the
    line); a token slip is the whole line with one token dropped or a span repeated."""
    rng = random.Random(0)
    step = "17 - 4 = 3 ; 3 + 9 + 5"
    kinds = set()
    for _ in range(300):
        wrong = slip_step(step, rng)
        assert wrong is not None
        if not wrong.endswith("\n"):
            head = step[: len(wrong)]
            diff = [(x, y) for x, y in zip(head, wrong) if x != y]
            assert len(diff) == 1 and diff[0][0].isdigit() and diff[0][1].isdigit()
            assert wrong[-1].isdigit() and (len(wrong) == len(step) or not step[len(wrong)].isdigit())
            kinds.add("number")
            continue
        a, b = step.split(" "), wrong[:-1].split(" ")
        if len(b) == len(a) - 1:
            kinds.add("drop")
        else:
            assert len(a) < len(b) <= len(a) + 2
            kinds.add("repeat")
    assert kinds == {"number", "drop", "repeat"}
    assert slip_step("answer", rng) is None  # no number and one token: nothing to slip
    assert slip_step("12", rng) in {f"{a}{b}" for a in "0123456789" for b in "0123456789"} - {"12"}


def test_sample_stage_slips(tiny_world, tmp_path):
    args = [f"policy={tiny_world / 'policy'}", "num_problems=8", "samples_per_problem=4", "generation.batch_size=16",
            "split=train", "seed=3", "task.min_ops=3", "task.max_ops=5"]
    plain = sample_main(args + [f"output_dir={tmp_path / 'plain'}"])
    metrics = sample_main(args + [f"output_dir={tmp_path / 'slips'}", "slips_per_problem=2"])
    records = read_jsonl(str(tmp_path / "slips" / "samples.jsonl"))
    slips = [r for r in records if r.get("slip")]
    own = [r for r in records if not r.get("slip")]
    assert len(slips) == 16 and metrics["slips"] == 16
    # The policy's own samples and accuracy are those of a run without slips (same seeds).
    assert [r["solution"] for r in own] == [r["solution"] for r in read_jsonl(str(tmp_path / "plain" / "samples.jsonl"))]
    assert metrics["accuracy"] == plain["accuracy"] and metrics["samples"] == plain["samples"]
    by_id = {r["id"]: r for r in own}
    task = ArithTask(min_ops=3, max_ops=5)
    for r in slips:
        base, k = by_id[r["slip_of"]], r["slip_step"]
        assert r["problem_id"] == base["problem_id"] and r["steps"][:k] == base["steps"][:k]
        assert r["steps"][k] != base["steps"][k]  # the forced slip, then the policy's own continuation
        assert r["correct"] == task.is_correct(r["solution"], r["gold"])
    # Most forced slips are wrong steps (the oracle), and most make the answer wrong.
    assert sum(r["first_error"] is not None and r["first_error"] <= r["slip_step"] for r in slips) >= 12
    assert metrics["slip_answer_wrong"] >= 0.5

    # Annotate and the ORM skip the slips whose answer is still right; verify does not read slips at all.
    path = str(tmp_path / "slips" / "samples.jsonl")
    sols, skipped = read_solutions(path, task)
    right_slips = sum(r["correct"] for r in slips)
    assert skipped["skipped_slip_answer_right"] == right_slips
    assert len(sols) == len(records) - right_slips - skipped["skipped_no_steps"]
    assert len(read_examples(path, "orm", "he")) == len(sols)
