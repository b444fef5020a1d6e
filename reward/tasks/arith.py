"""The synthetic arithmetic task of the embedded world, with an oracle that knows every step's truth.

Two forms:
- `modular`: single-digit chains under a modulus, `Compute 7 + 8 * 3 - 9 mod 10.` solved left to
  right one step per line (`7 + 8 = 5`). Each step is a small lookup that a tiny reward model can
  learn to check, and a wrong step still reaches the right answer by luck about one time in ten.
- `chain`: multi-digit left chains, `Compute (97 + 80 - 69) * 4.`, intermediates kept in 0-999.

A share of the SFT solutions can apply a fixed wrong rule, so the policy's wrong answers repeat and
majority vote is not always right: `smaller_from_larger` (the classic pupil's subtraction bug: `a - b`
with a < b written and computed as `b - a`; the step's arithmetic is right, its first operand is not
the line above's result: a copy check, which a tiny model learned from exact labels), `swap_sub`
(`a - b` computed as `b - a` but written as `a - b`: a wrong result digit, a lookup the tiny models
here did not learn to check), `drop_carry` (chain form: addition without carries).
"""
from __future__ import annotations

import hashlib
import random
import re

from reward.errors import ShepherdError
from reward.tasks.base import Problem, Task

SPLITS = ("train", "val", "test")
RULES = {"modular": ("none", "smaller_from_larger", "swap_sub"), "chain": ("none", "drop_carry")}
_STEP = re.compile(r"^(-?\d+) ([+\-*]) (-?\d+) = (-?\d+)( ; -?\d+( [+\-*] -?\d+)+)?$")
_ANSWER = re.compile(r"The answer is (-?\d+)")


def split_of(question: str) -> str:
    """Splits by a hash of the question text, so train and test can never share a problem."""
    bucket = int(hashlib.sha1(question.encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < 10 else "val" if bucket < 15 else "train"


def _drop_carry(a: int, b: int) -> int:
    if a < 0 or b < 0:  # a chain already off track can go negative; the rule is about carries only
        return a + b
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


class ArithTask(Task):
    name = "arith"
    has_oracle = True

    def __init__(self, form: str = "modular", min_ops: int = 4, max_ops: int = 7, modulus: int = 10,
                 operand_max: int = 99, ops: str = "+-*", wrong_rule: str = "none",
                 wrong_rule_share: float = 0.0, carry_rest: bool = False, prompt_template: str = "") -> None:
        super().__init__(chat_template=False, prompt_template=prompt_template)
        if form not in RULES:
            raise ShepherdError(f"unknown arith form '{form}' (key task.form); use one of {', '.join(RULES)}")
        if wrong_rule not in RULES[form]:
            raise ShepherdError(
                f"wrong rule '{wrong_rule}' does not apply to form '{form}' (key task.wrong_rule); "
                f"use one of {', '.join(RULES[form])}")
        if not 1 <= min_ops <= max_ops:
            raise ShepherdError(f"need 1 <= task.min_ops <= task.max_ops, got {min_ops}, {max_ops}")
        if not ops or set(ops) - set("+-*"):
            raise ShepherdError(f"task.ops must be made of '+', '-', '*', got '{ops}'")
        self.form, self.min_ops, self.max_ops = form, min_ops, max_ops
        self.modulus, self.operand_max, self.ops = modulus, operand_max, ops
        self.wrong_rule, self.wrong_rule_share = wrong_rule, wrong_rule_share
        self.carry_rest = carry_rest

    # --- arithmetic -------------------------------------------------------------------------
    @staticmethod
    def written_operands(a: int, op: str, b: int, rule: str = "none") -> tuple[int, int]:
        """The operands in the order a step writes them: `smaller_from_larger` puts the larger first."""
        if rule == "smaller_from_larger" and op == "-" and a < b:
            return b, a
        return a, b

    def apply(self, a: int, op: str, b: int, rule: str = "none") -> int:
        """One step's result; `rule` is the systematic mistake, where it applies."""
        if rule == "swap_sub" and op == "-":
            a, b = b, a
        if rule == "drop_carry" and op == "+":
            return _drop_carry(a, b)
        r = a + b if op == "+" else a - b if op == "-" else a * b
        return r % self.modulus if self.form == "modular" else r

    def _sample_chain(self, rng: random.Random) -> tuple[list[int], list[str]]:
        n = rng.randint(self.min_ops, self.max_ops)
        if self.form == "modular":
            return [rng.randrange(self.modulus) for _ in range(n + 1)], [rng.choice(self.ops) for _ in range(n)]
        operands, ops = [rng.randint(1, self.operand_max)], []
        value = operands[0]
        while len(ops) < n:  # keep every intermediate in 0-999
            op = rng.choice(self.ops)
            b = rng.randint(2, 9) if op == "*" else rng.randint(1, self.operand_max)
            r = self.apply(value, op, b)
            if 0 <= r <= 999:
                operands.append(b)
                ops.append(op)
                value = r
        return operands, ops

    def question(self, operands: list[int], ops: list[str]) -> str:
        expr, low = str(operands[0]), False
        for op, b in zip(ops, operands[1:]):
            if op == "*" and low and self.form == "chain":
                expr = f"({expr})"
            expr, low = f"{expr} {op} {b}", op in "+-"
        suffix = f" mod {self.modulus}" if self.form == "modular" else ""
        return f"Compute {expr}{suffix}."

    def reference_solution(self, problem: Problem) -> str | None:
        return self.join_steps(self.solve(problem))

    def solve(self, problem: Problem, rule: str = "none") -> list[str]:
        """The solution's steps, right or (with `rule`) systematically wrong."""
        operands, ops = problem.meta["operands"], problem.meta["ops"]
        steps, value = [], operands[0]
        for k, (op, b) in enumerate(zip(ops, operands[1:])):
            x, y = self.written_operands(value, op, b, rule)
            r = self.apply(x, op, y, rule)
            rest = "".join(f" {o} {n}" for o, n in zip(ops[k + 1:], operands[k + 2:]))
            # carry_rest: each step restates what is left to compute, so checking a step needs only the
            # line above it (no retrieval from the problem text).
            steps.append(f"{x} {op} {y} = {r}" + (f" ; {r}{rest}" if self.carry_rest and rest else ""))
            value = r
        return steps + [f"The answer is {value}"]

    def sft_solution(self, problem: Problem, rng: random.Random) -> str:
        """A training solution: the wrong rule with probability `wrong_rule_share`, else the right one."""
        use_rule = self.wrong_rule != "none" and rng.random() < self.wrong_rule_share
        return self.join_steps(self.solve(problem, self.wrong_rule if use_rule else "none"))

    # --- problems ---------------------------------------------------------------------------
    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        if split not in SPLITS:
            raise ShepherdError(f"unknown split '{split}' for arith; use one of {', '.join(SPLITS)}")
        if n is None:
            raise ShepherdError("arith is generated: give the number of problems (num_problems)")
        rng = random.Random(f"arith-{self.form}-{split}-{seed}")
        out: list[Problem] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 10000:
                raise ShepherdError(f"arith: cannot draw {n} distinct '{split}' problems with these knobs")
            operands, ops = self._sample_chain(rng)
            q = self.question(operands, ops)
            if split_of(q) != split or (split != "train" and q in seen):
                continue
            seen.add(q)
            value = operands[0]
            for op, b in zip(ops, operands[1:]):
                value = self.apply(value, op, b)
            out.append(Problem(id=f"arith-{split}-{seed}-{len(out)}", question=q, gold=str(value),
                               meta={"operands": operands, "ops": ops}))
        return out

    # --- grading ----------------------------------------------------------------------------
    def extract_answer(self, text: str) -> str | None:
        found = _ANSWER.findall(text)
        return found[-1] if found else None

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return pred is not None and pred.strip().lstrip("+") == gold.strip()

    def first_error(self, problem: Problem, solution: str) -> int | None:
        """Index of the first step that differs from the right solution; None if all are right.

        A solution that stops early (no answer line) gets index len(steps): every step it wrote may
        be right, but the step that should come next is missing.
        """
        right = self.solve(problem)
        steps = self.split_steps(solution)
        for k, step in enumerate(steps):
            if k >= len(right) or step != right[k]:
                return k
        return None if len(steps) == len(right) else len(steps)

    def is_well_formed(self, solution: str) -> bool:
        """Every step is `a op b = c` and the last is the answer line (format, not truth)."""
        steps = self.split_steps(solution)
        return bool(steps) and _ANSWER.fullmatch(steps[-1]) is not None and all(_STEP.match(s) for s in steps[:-1])
