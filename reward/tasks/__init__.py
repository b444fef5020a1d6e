"""Tasks: problems + gold answers + answer extraction + equality check + step splitting."""
from __future__ import annotations

from typing import Any

from reward.errors import ShepherdError
from reward.tasks.base import BAD_TOKEN, GOOD_TOKEN, HELD_OUT_SEED, STEP_TAG, Problem, Task, first_error_labels

TASKS = ("arith", "gsm8k", "math")


def load_task(cfg: Any) -> Task:
    """A task from a TaskConfig (or anything with some of its attributes, or just a name); whatever is
    not given takes TaskConfig's default, so `load_task("arith")` is the world a config file gets."""
    from reward.config import TaskConfig

    source = TaskConfig(name=cfg) if isinstance(cfg, str) else cfg
    defaults, name = TaskConfig(), source.name

    def get(key: str) -> Any:
        return getattr(source, key, getattr(defaults, key))
    if name == "arith":
        from reward.tasks.arith import ArithTask

        return ArithTask(form=get("form"), min_ops=get("min_ops"), max_ops=get("max_ops"), modulus=get("modulus"),
                         operand_max=get("operand_max"), ops=get("ops"), wrong_rule=get("wrong_rule"),
                         wrong_rule_share=get("wrong_rule_share"), carry_rest=get("carry_rest"),
                         prompt_template=get("prompt_template"))
    if name == "gsm8k":
        from reward.tasks.gsm8k import GSM8KTask

        return GSM8KTask(path=get("path"), chat_template=get("chat_template"), max_gold_steps=get("max_gold_steps"),
                         prompt_template=get("prompt_template"))
    if name == "math":
        from reward.tasks.math import MathTask

        return MathTask(path=get("path"), chat_template=get("chat_template"), prompt_template=get("prompt_template"))
    raise ShepherdError(f"unknown task '{name}' (key task.name); known tasks: {', '.join(TASKS)}")


__all__ = ["load_task", "Task", "Problem", "STEP_TAG", "HELD_OUT_SEED", "GOOD_TOKEN", "BAD_TOKEN", "TASKS", "first_error_labels"]
