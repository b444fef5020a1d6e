"""The arith task: splits, both forms, systematic mistakes, the oracle, and the world's tokenizer."""
import random

import pytest

from reward.errors import ShepherdError
from reward.tasks import load_task
from reward.tasks.arith import ArithTask


def test_splits_are_disjoint_and_seeded():
    task = ArithTask(min_ops=2, max_ops=3)
    test = task.problems("test", 300, seed=0)
    train = task.problems("train", 3000, seed=0)
    assert not {p.question for p in test} & {p.question for p in train}
    assert [p.question for p in task.problems("test", 300, seed=0)] == [p.question for p in test]
    assert [p.question for p in task.problems("test", 300, seed=1)] != [p.question for p in test]
    assert len({p.question for p in test}) == 300  # held-out problems are distinct


def test_modular_problem_text_and_solution():
    task = ArithTask(form="modular", min_ops=3, max_ops=3)
    p = task.problems("test", 1)[0]
    a, b, c, d = p.meta["operands"]
    o1, o2, o3 = p.meta["ops"]
    assert p.question == f"Compute {a} {o1} {b} {o2} {c} {o3} {d} mod 10."
    steps = task.solve(p)
    assert len(steps) == 4 and steps[-1] == f"The answer is {p.gold}"
    value = a
    for op, x, step in zip((o1, o2, o3), (b, c, d), steps):
        new = {"+": value + x, "-": value - x, "*": value * x}[op] % 10
        assert step == f"{value} {op} {x} = {new}"
        value = new
    assert str(value) == p.gold


def test_chain_form_parentheses_and_range():
    task = ArithTask(form="chain", min_ops=2, max_ops=5, wrong_rule="none")
    p = next(p for p in task.problems("train", 500) if "(" in p.question)
    assert p.question.startswith("Compute (")
    for p in task.problems("train", 200):
        values = [int(s.split(" = ")[1]) for s in task.solve(p)[:-1]]
        assert all(0 <= v <= 999 for v in values)


def test_oracle_first_error():
    task = ArithTask(form="modular", min_ops=4, max_ops=4)
    p = task.problems("test", 1)[0]
    right = task.solve(p)
    assert task.first_error(p, "\n".join(right)) is None
    wrong = list(right)
    a, op, b, _, c = wrong[2].split(" ")
    wrong[2] = f"{a} {op} {b} = {(int(c) + 1) % 10}"
    assert task.first_error(p, "\n".join(wrong)) == 2
    assert task.first_error(p, "\n".join(right[:2])) == 2  # stopped early: the missing step
    assert task.first_error(p, "\n".join(right[:1] + right[2:])) == 1  # skipped a step
    assert task.first_error(p, "\n".join(right + ["The answer is 3"])) == len(right)  # extra step
    assert task.first_error(p, "garbage") == 0


def test_swap_sub_rule_is_systematic_and_caught_by_oracle():
    task = ArithTask(form="modular", min_ops=4, max_ops=6, wrong_rule="swap_sub", wrong_rule_share=1.0)
    hits = 0
    for p in task.problems("train", 200):
        sol = task.sft_solution(p, random.Random(0))
        ops = p.meta["ops"]
        first_sub = ops.index("-") if "-" in ops else None
        err = task.first_error(p, sol)
        swapped_changes = first_sub is not None and task.apply(0, "-", 0) == 0 and \
            task.solve(p, "swap_sub")[first_sub] != task.solve(p)[first_sub]
        if swapped_changes:
            assert err == first_sub
            hits += 1
        elif first_sub is None:
            assert err is None
    assert hits > 50
    # The same problem always gets the same wrong answer from the rule: mistakes repeat.
    p = next(p for p in task.problems("train", 50) if task.first_error(p, task.sft_solution(p, random.Random(0))) is not None)
    assert len({task.sft_solution(p, random.Random(s)) for s in range(5)}) == 1


def test_smaller_from_larger_rule_writes_the_larger_operand_first():
    task = ArithTask(form="modular", wrong_rule="smaller_from_larger", wrong_rule_share=1.0)
    seen = 0
    for p in task.problems("train", 100):
        right, wrong = task.solve(p), task.solve(p, "smaller_from_larger")
        k = task.first_error(p, task.join_steps(wrong))
        if k is None:
            assert right == wrong
            continue
        seen += 1
        a, op, b, _, r = wrong[k].split()
        assert op == "-" and int(a) > int(b) and int(r) == int(a) - int(b)  # right arithmetic, operands swapped
        assert right[k].split()[:3] == [b, "-", a]  # the right step subtracts the larger from the smaller
    assert seen > 30
    assert task.written_operands(3, "-", 8, "smaller_from_larger") == (8, 3)
    assert task.written_operands(8, "-", 3, "smaller_from_larger") == (8, 3)
    assert task.written_operands(3, "+", 8, "smaller_from_larger") == (3, 8)


def test_drop_carry_rule():
    task = ArithTask(form="chain", min_ops=1, max_ops=1, wrong_rule="drop_carry")
    assert task.apply(176, "+", 90, "drop_carry") == 166
    assert task.apply(123, "+", 456, "drop_carry") == 579  # no carry, no change
    assert task.apply(8, "-", 41, "drop_carry") == -33


def test_lucky_right_answers_exist_in_modular_form():
    """A wrong step still reaches the right answer about one time in ten under mod 10."""
    task = ArithTask(form="modular", min_ops=4, max_ops=4)
    rng = random.Random(0)
    lucky = wrong = 0
    for p in task.problems("train", 2000):
        steps = task.solve(p)
        k = rng.randrange(4)
        a, op, b, _, c = steps[k].split(" ")
        steps[k] = f"{a} {op} {b} = {(int(c) + rng.randint(1, 9)) % 10}"
        # carry the wrong value forward correctly
        value = (int(c) + 0)
        value = int(steps[k].split(" = ")[1])
        for j in range(k + 1, 4):
            _, op2, b2 = steps[j].split(" = ")[0].split(" ")
            new = task.apply(value, op2, int(b2))
            steps[j] = f"{value} {op2} {b2} = {new}"
            value = new
        steps[-1] = f"The answer is {value}"
        wrong += 1
        lucky += task.is_correct("\n".join(steps), p.gold)
    assert 0.04 < lucky / wrong < 0.25


def test_extract_and_grade():
    task = load_task("arith")
    assert task.extract_answer("1 + 2 = 3\nThe answer is 3") == "3"
    assert task.extract_answer("no answer") is None
    assert task.is_equivalent("3", "3") and not task.is_equivalent(None, "3") and not task.is_equivalent("4", "3")
    p = task.problems("test", 1)[0]
    g = task.grade(p, "\n".join(task.solve(p)))
    assert g["correct"] and g["well_formed"] and g["first_error"] is None and len(g["steps"]) == len(task.solve(p))


@pytest.mark.parametrize("kwargs, key", [
    (dict(form="nope"), "task.form"),
    (dict(form="modular", wrong_rule="drop_carry"), "task.wrong_rule"),
    (dict(min_ops=5, max_ops=2), "task.min_ops"),
    (dict(ops="+/"), "task.ops"),
])
def test_bad_knobs(kwargs, key):
    with pytest.raises(ShepherdError, match=key):
        ArithTask(**kwargs)


def test_world_tokenizer_round_trip_and_offline_reload(tmp_path):
    from transformers import AutoTokenizer

    from rl.world import build_tokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    task = ArithTask(form="chain", min_ops=3, max_ops=5, wrong_rule="drop_carry", wrong_rule_share=0.5)
    for p in task.problems("train", 50) + ArithTask().problems("train", 50):
        text = p.question + "\n" + "\n".join(task.solve(p) if "mod" not in p.question else ArithTask().solve(p))
        ids = again(text)["input_ids"]
        assert ids[0] == again.bos_token_id and again.unk_token_id not in ids
        assert again.decode(ids, skip_special_tokens=True) == text
    tagged = again("7 + 8 = 5 ки\n")["input_ids"]
    assert again.convert_tokens_to_ids(" ки") in tagged
    for t in ("+", "-", " ки"):
        assert again.convert_tokens_to_ids(t) != again.unk_token_id


def test_carry_rest_steps_restate_what_is_left():
    task = ArithTask(form="modular", min_ops=3, max_ops=3, carry_rest=True, wrong_rule="swap_sub")
    p = task.problems("test", 1)[0]
    a, b, c, d = p.meta["operands"]
    o1, o2, o3 = p.meta["ops"]
    steps = task.solve(p)
    r1 = int(steps[0].split(" = ")[1].split(" ; ")[0])
    assert steps[0] == f"{a} {o1} {b} = {r1} ; {r1} {o2} {c} {o3} {d}"
    assert " ; " not in steps[2] and steps[3] == f"The answer is {p.gold}"
    text = "\n".join(steps)
    assert task.first_error(p, text) is None and task.is_well_formed(text)
    wrong = list(steps)
    wrong[1] = wrong[1].replace(" ; ", " ; 9", 1) if not wrong[1].split(" ; ")[1].startswith("9") else wrong[1].replace(" ; 9", " ; 8", 1)
    assert task.first_error(p, "\n".join(wrong)) == 1  # a miscopied rest is a wrong step

    from rl.world import build_tokenizer

    tok = build_tokenizer()
    ids = tok(p.question + "\n" + text)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids, skip_special_tokens=True) == p.question + "\n" + text


def test_load_task_defaults_are_the_config_defaults():
    """A task by name, a partial object and the default TaskConfig give the same world."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from reward.config import TaskConfig

    by_name, partial = load_task("arith"), load_task(SimpleNamespace(name="arith", min_ops=4))
    configured = load_task(OmegaConf.structured(TaskConfig()))
    for task in (by_name, partial):
        assert (task.wrong_rule, task.wrong_rule_share, task.ops) == (configured.wrong_rule, configured.wrong_rule_share,
                                                                      configured.ops)
    assert configured.wrong_rule == TaskConfig.wrong_rule != "none"
