"""What every task gives: problems with gold answers, prompts, answer extraction, grading, steps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STEP_TAG = "ки"  # Math-Shepherd's step tag: every step of a PRM input ends with " ки"
GOOD_TOKEN, BAD_TOKEN = "+", "-"  # the labels that replace the tag in Math-Shepherd training data


@dataclass
class Problem:
    id: str
    question: str
    gold: str
    meta: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base task: subclasses set `name` and implement `problems`, `extract_answer`, `is_equivalent`."""

    name = "base"
    has_oracle = False

    def __init__(self, chat_template: bool = False) -> None:
        self.chat_template = chat_template

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        raise NotImplementedError

    def format_prompt(self, question: str, tokenizer: Any = None) -> str:
        """The text a policy continues; a chat template for instruct models when configured."""
        if self.chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": self.instruction(question)}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return question + "\n"

    def instruction(self, question: str) -> str:
        return question

    def extract_answer(self, text: str) -> str | None:
        raise NotImplementedError

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        raise NotImplementedError

    def is_correct(self, solution: str, gold: str) -> bool:
        return self.is_equivalent(self.extract_answer(solution), gold)

    def is_well_formed(self, solution: str) -> bool:
        """Format, not truth: the solution ends with an answer the grader can read."""
        return self.extract_answer(solution) is not None

    def grade(self, problem: Problem, solution: str) -> dict[str, Any]:
        """Everything later stages need to know about one solution, computed in one place."""
        answer = self.extract_answer(solution)
        record = {"answer": answer, "correct": self.is_equivalent(answer, problem.gold),
                  "well_formed": self.is_well_formed(solution), "steps": self.split_steps(solution)}
        if self.has_oracle:
            record["first_error"] = self.first_error(problem, solution)
        return record

    def split_steps(self, solution: str) -> list[str]:
        """Steps are non-empty lines (Math-Shepherd writes one step per line)."""
        return [line.strip() for line in solution.strip().split("\n") if line.strip()]

    def join_steps(self, steps: list[str]) -> str:
        return "\n".join(steps)

    def first_error(self, problem: Problem, solution: str) -> int | None:
        """The oracle: index of the first wrong step, or None when every step is right."""
        raise NotImplementedError(f"task '{self.name}' has no oracle of step correctness")


def tag_steps(question: str, steps: list[str], tag: str = STEP_TAG) -> str:
    """Math-Shepherd PRM input: the question, then every step followed by ' ки', one per line."""
    return question + "\n" + "".join(f"{s} {tag}\n" for s in steps)
