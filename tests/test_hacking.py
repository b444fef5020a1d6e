"""The hacking guard: the alarm on hand-made evaluation histories, and a PPO run that stops where its
own log says the alarm fired."""
import json

import pytest

from rl.hacking import evaluations, first_alarm, hacking

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


def test_a_log_gives_the_evaluations_the_guard_saw():
    """The learned reward of an evaluation is the mean over the updates since the one before."""
    log = [{"update": 1, "reward/score": 0.2}, {"update": 2, "reward/score": 0.4, "eval/accuracy_t1": 0.7},
           {"update": 3, "reward/score": 0.6}, {"update": 4, "reward/score": 0.8, "eval/accuracy_t1": 0.5},
           {"update": 5, "reward/score": 0.1, "eval/accuracy_t1": 0.6}]
    assert [(u, round(r, 6), a) for u, r, a in evaluations(log)] == [(2, 0.3, 0.7), (4, 0.7, 0.5), (5, 0.1, 0.6)]
    assert first_alarm(log, 1) == 4 and first_alarm(log, 2) is None
    assert first_alarm(log, 1, "accuracy_greedy") is None  # no evaluation of that metric


def test_ppo_stops_where_its_log_shows_the_alarm_and_resumes_stopped(tiny_world, tmp_path):
    """lr 3e-3 wrecks the tiny policy within a few updates; with an evaluation every update, the run must
    stop at the first update whose log shows the alarm (or run all 6 when none does), and a resume of a
    stopped run trains no further update."""
    out = tmp_path / "ppo"
    opts = ("ppo.updates=6", "eval_every=1", "checkpoint_every=6", "ppo.lr=3e-3", "hacking_patience=1",
            "final_split=val")
    finish(launch(tiny_world, out, 1, *opts))
    rows, metrics = log_rows(out), json.loads((out / "metrics.json").read_text())
    fired = first_alarm(rows, 1)  # the report's reading of the log must agree with the run's guard
    assert metrics["stopped_by_hacking_guard"] == fired
    assert [r["update"] for r in rows] == list(range(1, (fired or 6) + 1))
    assert metrics["policy_update"] == (fired or 6)
    if fired:
        assert rows[-1]["hacking/stopped"] == fired
    finish(launch(tiny_world, out, 1, *opts, "resume=true"))
    assert [r["update"] for r in log_rows(out)] == [r["update"] for r in rows]
