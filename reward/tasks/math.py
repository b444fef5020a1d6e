"""MATH / MATH500: competition problems whose answer is the LaTeX in the last \\boxed{}."""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from reward.errors import ShepherdError
from reward.tasks.base import Problem, Task
from reward.tasks.gsm8k import load_records

VERIFY_TIMEOUT_S = 5.0
_BOX = re.compile(r"\\(?:boxed|fbox)\b( *)")
_ANSWER_IS = "The answer is"
# Light LaTeX normalisation before the exact comparison: (pattern, replacement).
_LIGHT = ((r"\s+", ""), (r"\\left|\\right|\\!|\\,|\\;|\\:", ""), (r"\\[dt]frac", r"\\frac"),
          (r"\^\{?\\circ\}?", ""), (r"^\$+|\$+$", ""), (r"\.+$", ""))


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, nested braces matched; also '\\boxed 5'."""
    found = list(_BOX.finditer(text))
    if not found:
        return None
    i, spaced = found[-1].end(), bool(found[-1].group(1))
    if text[i:i + 1] != "{":  # '\boxed 5': up to the next space or '$'
        return (re.split(r"[\s$]", text[i:], maxsplit=1)[0] or None) if spaced else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None  # unbalanced: the text was cut off inside the box


def light_normalize(answer: str) -> str:
    """The answer with spacing, \\left/\\right, \\dfrac, degrees and a trailing period removed."""
    for pattern, repl in _LIGHT:
        answer = re.sub(pattern, repl, answer)
    return answer


def math_verify_equal(pred: str, gold: str) -> bool:
    """Symbolic equality by math_verify; its own signal time-outs work here, in the worker's main thread."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=2)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=2)
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=3))
    except Exception:
        return False


def serve() -> None:
    """Worker loop: a JSON [pred, gold] per stdin line -> a JSON bool per stdout line."""
    out, sys.stdout = sys.stdout, sys.stderr  # only answers go to the pipe
    import math_verify  # noqa: F401  (imported before 'ready', so start-up is not timed)

    print("ready", file=out, flush=True)
    for line in sys.stdin:
        print(json.dumps(math_verify_equal(*json.loads(line))), file=out, flush=True)


class _Verifier:
    """math_verify in a worker process that is killed and restarted on a time-out.

    A thread cannot stop sympy inside a C-level computation (9^{9^{9^9}} holds the GIL for minutes) and
    signals only work in the main thread; killing a process always works. A plain subprocess, not
    multiprocessing, so that a caller's main module is never re-imported.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen([sys.executable, "-c", "from reward.tasks.math import serve; serve()"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=env)
        if proc.stdout.readline().strip() != "ready":
            raise ShepherdError("the math_verify worker did not start (is math-verify installed?)")
        return proc

    def __call__(self, pred: str, gold: str, timeout: float) -> bool:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            self._proc.stdin.write(json.dumps([pred, gold]) + "\n")
            self._proc.stdin.flush()
            if select.select([self._proc.stdout], [], [], timeout)[0]:
                return json.loads(self._proc.stdout.readline() or "false")
            self._proc.kill()
            self._proc.wait()
            self._proc = None
            return False


_verifier = _Verifier()


class MathTask(Task):
    """MATH problems; answers match exactly after light normalisation, else by math_verify."""

    name = "math"

    def __init__(self, path: str = "", chat_template: bool = False, prompt_template: str = "") -> None:
        super().__init__(chat_template, prompt_template)
        self.path = path

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """The first n problems of the split, in file order (deterministic; `seed` is not needed)."""
        records = load_records(self.path, split, ("problem",), None)
        return [self._problem(split, i, r) for i, r in enumerate(records[:n])]

    def _problem(self, split: str, i: int, r: dict[str, Any]) -> Problem:
        solution = r.get("solution", "")
        gold = r.get("answer") or last_boxed(solution)
        if not gold:
            raise ShepherdError(f"{self._where(split, i)}: no 'answer' field and no \\boxed{{}} in 'solution'")
        meta = {"solution": solution, **{k: r[k] for k in ("subject", "level") if k in r}}
        return Problem(id=str(r.get("unique_id") or f"math-{split}-{i}"), question=r["problem"],
                       gold=str(gold), meta=meta)

    def _where(self, split: str, i: int) -> str:
        """file:line of the i-th record (blank lines skipped as read_jsonl does), or the hub row."""
        path = self.path if os.path.isfile(self.path) else os.path.join(self.path, f"{split}.jsonl")
        try:
            with open(path, encoding="utf-8") as f:
                lines = [n for n, line in enumerate(f, 1) if line.strip()]
            return f"{path}:{lines[i]}"
        except (OSError, IndexError):
            return f"{self.path} ({split}) row {i}"

    def instruction(self, question: str) -> str:
        return ("Solve the following problem step by step, separating steps with a blank line. "
                "Put the final answer in \\boxed{}.\n\n" + question)

    def extract_answer(self, text: str) -> str | None:
        """The last \\boxed{} content, else what follows the last 'The answer is', else None."""
        boxed = last_boxed(text)
        if boxed:
            return boxed
        start = text.rfind(_ANSWER_IS)
        if start < 0:
            return None
        answer = text[start + len(_ANSWER_IS):].strip().split("\n")[0].strip(" :$").rstrip(".").strip("$ ")
        return answer or None

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        """Equal after light normalisation, else equal for math_verify within VERIFY_TIMEOUT_S seconds."""
        if pred is None:
            return False
        if light_normalize(pred) == light_normalize(gold):
            return True
        return _verifier(pred, gold, VERIFY_TIMEOUT_S)

    def split_steps(self, solution: str) -> list[str]:
        """Paragraphs when the solution has blank lines, else non-empty lines."""
        if "\n\n" not in solution.strip():
            return super().split_steps(solution)
        return [p.strip() for p in re.split(r"\n\s*\n", solution.strip()) if p.strip()]

    def join_steps(self, steps: list[str]) -> str:
        """Blank lines between steps, so that `split_steps` gives the same steps back."""
        return "\n\n".join(steps)
