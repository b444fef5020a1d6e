"""What every task gives: problems with gold answers, prompts, answer extraction, grading, steps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reward.errors import ShepherdError

STEP_TAG = "ки"  # Math-Shepherd's step tag: every step of a PRM input ends with " ки"
GOOD_TOKEN, BAD_TOKEN = "+", "-"  # the labels that replace the tag in Math-Shepherd training data
# The draw of every held-out set (validation, test): the same problems for every seed, as a benchmark's
# test set is, so runs of different seeds differ in training randomness only and compare pairwise.
HELD_OUT_SEED = 0
QUESTION_FIELD = "{question}"  # where a prompt template (key task.prompt_template) puts the question


def first_error_labels(n_steps: int, first_error: int | None) -> list[int]:
    """The oracle's step labels (a perfect first-error PRM): 1 for each step before the first wrong one,
    0 from it on. The rule of `annotate strategy=oracle` and of PPO's `reward.model=oracle` alike."""
    first = n_steps if first_error is None else first_error
    return [int(k < first) for k in range(n_steps)]


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

    def __init__(self, chat_template: bool = False, prompt_template: str = "") -> None:
        if prompt_template and QUESTION_FIELD not in prompt_template:
            raise ShepherdError(f"task.prompt_template has no '{QUESTION_FIELD}' where the question goes: "
                                f"{prompt_template[:80]!r}")
        self.chat_template = chat_template
        self.prompt_template = prompt_template

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        raise NotImplementedError

    def format_prompt(self, question: str, tokenizer: Any = None) -> str:
        """The text a policy continues. An SFT model continues the prompt it was trained on: the
        `prompt_template` with the question in place, verbatim (e.g. MetaMath's Alpaca prompt); without
        one, the question and a line break. An instruct model (chat_template, when its tokenizer has one)
        gets one user message: the filled `prompt_template` if given, else the task's instruction."""
        filled = self.prompt_template.replace(QUESTION_FIELD, question) if self.prompt_template else None
        if self.chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": self.instruction(question) if filled is None else filled}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return question + "\n" if filled is None else filled

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

    def reference_solution(self, problem: Problem) -> str | None:
        """The data set's own worked solution (GSM8K, MATH), None where there is none."""
        return problem.meta.get("solution") or None

    def first_error(self, problem: Problem, solution: str) -> int | None:
        """The oracle: index of the first wrong step, or None when every step is right."""
        raise NotImplementedError(f"task '{self.name}' has no oracle of step correctness")
