"""GSM8K: grade-school word problems whose answer is one number (the text after '####')."""
from __future__ import annotations

import os
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

from reward.errors import ShepherdError
from reward.io import read_jsonl
from reward.tasks.base import Problem, Task

# A number as written in text: optional sign, thousands commas, decimals ("-1,234.50", ".5").
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
# What `is_equivalent` reads exactly: a plain decimal or a fraction a/b (no exponents, so no huge powers).
_EXACT = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_MARKERS = ("The answer is", "####", "\\boxed{")


def looks_local(path: str) -> bool:
    """A path meant as a local file or folder, as opposed to a hub id like 'openai/gsm8k'."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path


def load_records(path: str, split: str, required: tuple[str, ...], hub_config: str | None) -> list[dict]:
    """Records of one split from a jsonl file, a folder holding `<split>.jsonl`, or a `datasets` hub id."""
    if not path:
        raise ShepherdError("no data given for this task (key task.path): a jsonl file, a folder or a hub id")
    if os.path.isfile(path) or path.endswith((".jsonl", ".json")):
        return read_jsonl(path, required)
    if os.path.isdir(path) or looks_local(path):
        return read_jsonl(os.path.join(path, f"{split}.jsonl"), required)
    try:
        import datasets

        args = (path, hub_config) if hub_config else (path,)
        records = [dict(r) for r in datasets.load_dataset(*args, split=split)]
    except Exception as e:  # offline, unknown id, unknown split: all one message naming the id
        raise ShepherdError(f"could not load dataset '{path}' split '{split}' (key task.path): {e}") from None
    for i, r in enumerate(records):
        for key in required:
            if key not in r:
                raise ShepherdError(f"{path} ({split}) row {i}: missing field '{key}'")
    return records


def normalize_number(text: str) -> str:
    """Canonical form of a numeric answer: '$1,000.00' -> '1000', '0.50' -> '0.5', '50%' -> '50'."""
    s = re.sub(r"[\s$,%]", "", text).rstrip(".")
    if not _EXACT.fullmatch(s) or "/" in s:
        return s
    d = Decimal(s)
    return str(int(d)) if d == d.to_integral_value() else format(d.normalize(), "f")


def clean_solution(answer: str) -> str:
    """The reference solution without calculator annotations, ending with 'The answer is x'."""
    text = re.sub(r"<<[^>]*>>", "", answer)
    return re.sub(r"\s*####\s*(.*?)\s*$", r"\nThe answer is \1", text.strip())


class GSM8KTask(Task):
    """GSM8K problems; answers are numbers compared exactly as fractions."""

    name = "gsm8k"

    def __init__(self, path: str = "", chat_template: bool = False, max_gold_steps: int = 0,
                 prompt_template: str = "") -> None:
        super().__init__(chat_template, prompt_template)
        self.path = path
        if max_gold_steps < 0:
            raise ShepherdError(f"task.max_gold_steps must be 0 (all problems) or positive, not {max_gold_steps}")
        self.max_gold_steps = max_gold_steps

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """The first n problems of the split, in file order (deterministic; `seed` is not needed); with
        `max_gold_steps`, the first n whose reference solution has at most that many steps. Ids keep the
        problem's line in the file, so they mean the same problem with or without the filter."""
        records = load_records(self.path, split, ("question", "answer"), "main")
        problems = [self._problem(split, i, r) for i, r in enumerate(records)]
        if self.max_gold_steps:
            problems = [p for p in problems if self.gold_steps(p) <= self.max_gold_steps]
        return problems[:n]

    def gold_steps(self, problem: Problem) -> int:
        """Steps of the reference solution, not counting its final 'The answer is' line."""
        return len(self.split_steps(problem.meta["solution"])) - 1

    @staticmethod
    def _problem(split: str, i: int, r: dict[str, Any]) -> Problem:
        gold = normalize_number(r["answer"].split("####")[-1])
        return Problem(id=f"gsm8k-{split}-{i}", question=r["question"], gold=gold,
                       meta={"solution": clean_solution(r["answer"])})

    def instruction(self, question: str) -> str:
        return ("Solve the following problem step by step, writing one step per line. "
                'End with a line "The answer is N", where N is the final number.\n\n' + question)

    def extract_answer(self, text: str) -> str | None:
        """The number after the last 'The answer is' / '####' / '\\boxed{', else the last number in the text."""
        start, marker = max((text.rfind(m), m) for m in _MARKERS)
        if start >= 0:
            found = _NUMBER.search(text, start + len(marker))
            if found:
                return normalize_number(found.group())
        numbers = _NUMBER.findall(text)
        return normalize_number(numbers[-1]) if numbers else None

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        """Exact equality of the two numbers as fractions (string equality when either is not a number)."""
        if pred is None:
            return False
        a, b = normalize_number(pred), normalize_number(gold)
        if _EXACT.fullmatch(a) and _EXACT.fullmatch(b):
            try:
                return Fraction(a) == Fraction(b)
            except (ValueError, ZeroDivisionError):
                return False
        return a == b
