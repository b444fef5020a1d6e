"""Files: jsonl reading with errors that name file and line, atomic writes, append-only jsonl."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable, Iterator

from omegaconf import DictConfig, OmegaConf

from reward.errors import ShepherdError


def read_jsonl(path: str, required: tuple[str, ...] = ()) -> list[dict]:
    """All records of a jsonl file; a broken line or a missing field names the file and line."""
    return list(iter_jsonl(path, required))


def iter_jsonl(path: str, required: tuple[str, ...] = ()) -> Iterator[dict]:
    if not os.path.isfile(path):
        raise ShepherdError(f"data file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ShepherdError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ShepherdError(f"{path}:{lineno}: expected a JSON object")
            for key in required:
                if key not in record:
                    raise ShepherdError(f"{path}:{lineno}: missing field '{key}'")
            yield record


def read_jsonl_resumable(path: str) -> list[dict]:
    """Records of an append-only file, dropping a torn last line left by a killed writer."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # torn tail from a kill: drop it, it will be redone
                break
            raise ShepherdError(f"{path}:{i + 1}: not valid JSON") from None
    # Rewrite without the torn tail so that appends start on a clean line.
    if len(records) != len(lines):
        write_jsonl_atomic(path, records)
    return records


def append_jsonl(path: str, records: Iterable[dict]) -> None:
    """Append records and flush them to disk (a killed run loses at most a torn last line)."""
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: str, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl_atomic(path: str, records: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json(path: str, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_stage_config(cfg: DictConfig, prefix: str = "") -> None:
    """The resolved config beside the stage's outputs (`prefix`: see stage_main's `sidecar`)."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    write_atomic(os.path.join(cfg.output_dir, f"{prefix}config.yaml"), OmegaConf.to_yaml(cfg, resolve=True))


def save_metrics(cfg: DictConfig, metrics: dict[str, Any], prefix: str = "") -> None:
    """A flat metrics.json of the stage's figures."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
    write_json(os.path.join(cfg.output_dir, f"{prefix}metrics.json"), flat)
