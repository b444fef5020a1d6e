"""The hacking guard: the alarm on hand-made evaluation histories, and a PPO run that stops where its
own log says the alarm fired."""
import json

import pytest

from rl.hacking import hacking

from .test_ppo import finish, launch, log_rows


@pytest.mark.parametrize("evals,patience,fires", [
    ([], 1, False),
    ([(0.5, 0.6)], 1, False),  # one evaluation: nothing to compare with
    ([(0.5, 0.6), (0.7, 0.5)], 1, True),  # reward up, accuracy down
    ([(0.5, 0.6), (0.5, 0.5)], 1, True),  # reward held, accuracy down
    ([(0.5, 0.6), (0.4, 0.5)], 1, False),  # both down: a failing policy, not a hacked reward
    ([(0.5, 0.6), (0.7, 0.6)], 1, False),  # accuracy held
    ([(0.5, 0.6), (0.7, 0.5)], 0, False),  # 0: off
    ([(0.5, 0.6), (0.7, 0.5)], 2, False),  # two in a row asked, one seen
    ([(0.5, 0.6), (0.7, 0.5), (0.8, 0.4)], 2, True),
    ([(0.5, 0.6), (0.7, 0.5), (0.8, 0.55), (0.9, 0.5)], 2, False),  # the fall was broken
    ([(0.5, 0.6), (0.7, 0.7), (0.8, 0.5), (0.9, 0.4)], 2, True),  # only the last K count
])
def test_alarm_fires_when_reward_rises_while_accuracy_falls(evals, patience, fires):
    assert hacking(evals, patience) is fires


def test_ppo_stops_where_its_log_shows_the_alarm_and_resumes_stopped(tiny_world, tmp_path):
    """lr 3e-3 wrecks the tiny policy within a few updates; with an evaluation every update, the run must
    stop at the first update whose log shows the alarm (or run all 6 when none does), and a resume of a
    stopped run trains no further update."""
    out = tmp_path / "ppo"
    opts = ("ppo.updates=6", "eval_every=1", "checkpoint_every=6", "ppo.lr=3e-3", "hacking_patience=1",
            "final_split=val")
    finish(launch(tiny_world, out, 1, *opts))
    rows, metrics = log_rows(out), json.loads((out / "metrics.json").read_text())
    evals, fired = [], None
    for row in rows:
        evals.append((row["reward/score"], row["eval/accuracy_t1"]))
        if hacking(evals, 1):
            fired = row["update"]
            break
    assert metrics["stopped_by_hacking_guard"] == fired
    assert [r["update"] for r in rows] == list(range(1, (fired or 6) + 1))
    assert metrics["policy_update"] == (fired or 6)
    if fired:
        assert rows[-1]["hacking/stopped"] == fired
    finish(launch(tiny_world, out, 1, *opts, "resume=true"))
    assert [r["update"] for r in log_rows(out)] == [r["update"] for r in rows]
