"""Stages on several ranks: sample and annotate share their chunks over data-parallel ranks (same records
as one process, a killed run resumes whole), and the pipeline starts training stages under the
deepspeed launcher (no GPU here: gloo ranks)."""
import json
import subprocess

import pytest
import yaml

from reward.errors import ShepherdError
from reward.io import read_jsonl
from reward.shards import ChunkedJsonl
from rl.pipeline import stage_command

from .conftest import REPO

CHUNKS = [["a", "b"], ["c", "d"], ["e", "f"], ["g"]]


def _records(chunk: int) -> list[dict]:
    return [{"id": i, "chunk": chunk, "text": f"{i}-{chunk}"} for i in CHUNKS[chunk]]


def _write(path, records, torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn)


def test_chunks_left_by_killed_ranks_are_kept_whole_and_merged_in_order(tmp_path, monkeypatch):
    """What two killed ranks left (whole chunks out of order, a partial chunk, a torn line), resumed by one
    process: the whole chunks are kept, only the missing ones are done, the output is in chunk order."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    path = tmp_path / "out.jsonl"
    _write(path, _records(0))  # merged by an earlier run
    _write(tmp_path / "out.jsonl.rank0", _records(3) + _records(2)[:1], torn='{"id": "f", "ch')
    _write(tmp_path / "out.jsonl.rank1", _records(2)[1:] + _records(0))  # chunk 2 split over files: not whole
    out = ChunkedJsonl(str(path), CHUNKS)
    assert out.todo() == [1, 2]
    assert not list(tmp_path.glob("out.jsonl.rank*"))
    for c in (1, 2):
        out.append(_records(c))
    assert out.finish() == [r for c in range(4) for r in _records(c)] == read_jsonl(str(path))


def test_the_launch_keys_choose_the_command(tmp_path):
    """num_gpus > 1 starts the stages that train or sample under the deepspeed launcher, with the stage's
    module and preset; other stages, and one GPU, stay one process."""
    cmd, _ = stage_command("train-orm", "x.yaml", "out", ["a=1"], num_gpus=4)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"] and cmd[cmd.index("--num_gpus") + 1] == "4"
    assert cmd[cmd.index("--module") + 1:] == ["reward.train", "--config", "x.yaml", "output_dir=out", "a=1", "kind=orm"]
    assert stage_command("verify", "x.yaml", "out", [], num_gpus=4)[0][1:4] == ["-m", "rl.cli", "verify"]
    assert stage_command("sample", "x.yaml", "out", [], num_gpus=1)[0][1:4] == ["-m", "rl.cli", "sample"]
    with pytest.raises(ShepherdError, match="key hostfile"):
        stage_command("ppo", "x.yaml", "out", [], hostfile=str(tmp_path / "missing"))


def _experiment(tmp_path, policy) -> str:
    config = tmp_path / "dp.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": "dp", "seed": 3, "task": {"name": "arith", "min_ops": 3, "max_ops": 5},
        "sample": {"policy": str(policy), "num_problems": 12, "samples_per_problem": 4, "generation": {"batch_size": 8}},
        "annotate": {"n_completions": 2, "chunk_solutions": 8},
        "train_prm": {"init": str(policy), "val_share": 0.25,
                      "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "logging_steps": 1,
                                "deepspeed": str(REPO / "configs/deepspeed/zero2.json")}},
    }))
    return str(config)


def _run(stage: str, config: str, out, extra: list[str], num_gpus: int) -> None:
    cmd, env = stage_command(stage, config, str(out), extra, num_gpus)
    env = {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # one thread in both runs: same float sums
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_ranks_sample_and_annotate_the_same_records_as_one_process(tiny_world, tmp_path):
    config = _experiment(tmp_path, tiny_world / "policy")
    for out, gpus in ((tmp_path / "one", 0), (tmp_path / "two", 2)):
        _run("sample", config, out / "sample", [], gpus)
    one = (tmp_path / "one" / "sample" / "samples.jsonl").read_text()
    assert one.count("\n") == 48 and (tmp_path / "two" / "sample" / "samples.jsonl").read_text() == one
    assert not list((tmp_path / "two" / "sample").glob("*.rank*"))

    samples = [f"input={tmp_path / 'one' / 'sample' / 'samples.jsonl'}"]
    _run("annotate", config, tmp_path / "one" / "annotate", samples, 0)
    whole = (tmp_path / "one" / "annotate" / "stepwise.jsonl").read_text().splitlines(keepends=True)
    assert len(whole) == 48  # 6 chunks of 8 solutions

    # Two ranks killed mid-run: rank 1 finished chunk 1, rank 0 chunk 0 and half of chunk 2 (torn line).
    killed = tmp_path / "two" / "annotate"
    killed.mkdir(parents=True)
    (killed / "stepwise.jsonl.rank0").write_text("".join(whole[:8] + whole[16:20]) + whole[20][:30])
    (killed / "stepwise.jsonl.rank1").write_text("".join(whole[8:16]))
    _run("annotate", config, killed, samples, 2)
    assert (killed / "stepwise.jsonl").read_text() == "".join(whole)
    assert (killed / "math_shepherd.jsonl").read_text() == (tmp_path / "one" / "annotate" / "math_shepherd.jsonl").read_text()
    two, one = (json.loads((d / "annotate" / "metrics.json").read_text()) for d in (tmp_path / "two", tmp_path / "one"))
    assert 0 < two["completions_generated"] < one["completions_generated"]  # chunks 0 and 1 were not redone


def test_pipeline_trains_the_prm_on_two_deepspeed_ranks(tiny_world, tmp_path):
    config = _experiment(tmp_path, tiny_world / "policy")
    exp = yaml.safe_load(open(config))
    out = tmp_path / "outputs"
    exp["annotate"]["input"] = f"{out}/sample/samples.jsonl"
    exp["train_prm"]["data"] = f"{out}/annotate/stepwise.jsonl"
    exp["pipeline"] = {"output_dir": f"{out}/report", "stages": ["sample", "annotate", "train-prm"], "report": False,
                       "num_gpus": 2}
    for stage in ("sample", "annotate", "train_prm"):
        exp[stage]["output_dir"] = f"{out}/{stage.replace('_', '-')}"
    open(config, "w").write(yaml.safe_dump(exp))
    _run("pipeline", config, out / "report", [], 0)
    metrics = json.loads((out / "train-prm" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["train_steps"] == 2
    assert len(read_jsonl(str(out / "annotate" / "stepwise.jsonl"))) == 48
