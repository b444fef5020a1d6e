"""Slip samples: solutions of the policy with one step forced wrong, then continued by the policy.

Why: best-of-N at large N picks the rare slips a policy makes (a miscopied number, a wrong digit, a
dropped or repeated token) that are too rare among its own samples for a PRM to learn from: in the demo
world under 1% of them, about 100 examples in 8,192 solutions. A slip sample takes one of a problem's
samples, changes one step the way such slips look (a number replaced, a token dropped or repeated) and
lets the policy write the rest from there, so the solution after the slip is the policy's own. Its
steps are labelled like any sample's, by Monte-Carlo completions (annotate): the slip says where to
look, the completions say whether it was wrong. Task-agnostic (steps that hold numbers), so it works on
GSM8K text too. A library did not fit: this is the method's data, drawn from our own generator.
"""
from __future__ import annotations

import random
import re
from typing import Any

from reward.completion import continue_after
from reward.generation import Generator
from reward.tasks import Problem, Task

NUMBER = re.compile(r"\d+")
SLIP_KINDS = ("number", "number", "number", "drop", "repeat")  # numbers: about 3 in 4 rare slips here


def slip_step(step: str, rng: random.Random) -> str | None:
    """The start of `step` with one slip, for the policy to continue: a number with one digit changed and
    cut right after it (the policy then writes what follows from the wrong number, as it would after a
    slip of its own: a wrong operand gets its own result), or the whole step with a token dropped or
    repeated, ending the line. None where the step takes no slip (no number and under two tokens)."""
    numbers = list(NUMBER.finditer(step))
    tokens = step.split(" ")
    kinds = [k for k in SLIP_KINDS if (k == "number" and numbers) or (k != "number" and len(tokens) >= 2)]
    if not kinds:
        return None
    kind = rng.choice(kinds)
    if kind == "number":
        m = rng.choice(numbers)
        i = m.start() + rng.randrange(len(m.group()))
        digit = rng.choice([d for d in "0123456789" if d != step[i]])
        return step[:i] + digit + step[i + 1: m.end()]
    i = rng.randrange(len(tokens))
    if kind == "drop":
        return " ".join(tokens[:i] + tokens[i + 1:]) + "\n"
    j = min(i + 2, len(tokens))  # repeat a span of up to two tokens
    return " ".join(tokens[:j] + tokens[i:j] + tokens[j:]) + "\n"


def slip_solutions(generator: Generator, task: Task, problems: list[Problem], groups: list[list[dict[str, Any]]],
                   per_problem: int, temperature: float, seed: int) -> list[list[tuple[str, bool, dict[str, Any]]]]:
    """Per problem, `per_problem` slip solutions (text, finished, provenance: the sample it came from and
    `slip_step`, the index of the forced step) made from the problem's graded sample records `groups`,
    continued in one batched generation call. Where no sample has a step to change, the text is empty
    (a fixed count per problem keeps the sample stage's chunks checkable on resume)."""
    rng = random.Random(seed)
    out: list[list[tuple[str, bool, dict[str, Any]]]] = [[] for _ in problems]
    heads: list[tuple[int, int, str]] = []  # (problem index, slot in out[i], solution head)
    for i, group in enumerate(groups):
        bases = [r for r in group if r["steps"]]
        for _ in range(per_problem):
            origin: dict[str, Any] = {"slip_of": None, "slip_step": None}  # kept where no step takes a slip
            for _attempt in range(16 if bases else 0):
                base = rng.choice(bases)
                k = rng.randrange(len(base["steps"]))
                wrong = slip_step(base["steps"][k], rng)
                if wrong is not None:
                    origin = {"slip_of": base["id"], "slip_step": k}
                    before = task.join_steps(base["steps"][:k]) + "\n" if k else ""
                    heads.append((i, len(out[i]), before + wrong))
                    break
            out[i].append(("", True, origin))
    tok = generator.tokenizer
    prompts = [continue_after(task.format_prompt(problems[i].question, tok)) + head for i, _, head in heads]
    rests = generator.generate(prompts, n=1, temperature=temperature, seed=seed) if prompts else []
    for (i, j, head), (rest,) in zip(heads, rests):
        out[i][j] = (head + rest.text, rest.finished, out[i][j][2])
    return out


def skipped_slip(record: dict[str, Any]) -> bool:
    """A slip sample whose answer is still right: the forced step changed nothing the outcome checks, or
    was no error at all, and Monte-Carlo labels would call every step of it right. Annotate and the ORM
    skip it, so the slips add wrong-answer solutions only."""
    return bool(record.get("slip")) and bool(record.get("correct"))
