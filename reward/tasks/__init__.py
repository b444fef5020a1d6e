"""Tasks: problems + gold answers + answer extraction + equality check + step splitting."""
from __future__ import annotations

from typing import Any

from reward.errors import ShepherdError
from reward.tasks.base import BAD_TOKEN, GOOD_TOKEN, STEP_TAG, Problem, Task, first_error_labels

TASKS = ("arith", "gsm8k", "math")


def load_task(cfg: Any) -> Task:
    """A task from a TaskConfig (or anything with its attributes, or just a name)."""
    name = cfg if isinstance(cfg, str) else cfg.name
    get = (lambda k, d: d) if isinstance(cfg, str) else (lambda k, d: getattr(cfg, k, d))
    if name == "arith":
        from reward.tasks.arith import ArithTask

        return ArithTask(
            form=get("form", "modular"), min_ops=get("min_ops", 4), max_ops=get("max_ops", 7),
            modulus=get("modulus", 10), operand_max=get("operand_max", 99), ops=get("ops", "+-*"),
            wrong_rule=get("wrong_rule", "none"), wrong_rule_share=get("wrong_rule_share", 0.0),
            carry_rest=get("carry_rest", False), prompt_template=get("prompt_template", ""),
        )
    if name == "gsm8k":
        from reward.tasks.gsm8k import GSM8KTask

        return GSM8KTask(path=get("path", ""), chat_template=get("chat_template", False),
                         max_gold_steps=get("max_gold_steps", 0), prompt_template=get("prompt_template", ""))
    if name == "math":
        from reward.tasks.math import MathTask

        return MathTask(path=get("path", ""), chat_template=get("chat_template", False),
                        prompt_template=get("prompt_template", ""))
    raise ShepherdError(f"unknown task '{name}' (key task.name); known tasks: {', '.join(TASKS)}")


__all__ = ["load_task", "Task", "Problem", "STEP_TAG", "GOOD_TOKEN", "BAD_TOKEN", "TASKS", "first_error_labels"]
