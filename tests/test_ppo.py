"""PPO end to end on the tiny world: one process, 2 gloo ranks under ZeRO-2 and ZeRO-3 through the real
`deepspeed` launcher, resume after a kill, LoRA on the actor, the experiment configs."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from reward.config import load_config
from reward.errors import ShepherdError
from reward.tasks import load_task
from rl.ppo import PPOConfig, check

from .conftest import REPO

EXPERIMENTS = REPO / "configs" / "experiments"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def args(world: Path, out: Path, *extra: str) -> list[str]:
    """A few updates on 8 fixed easy prompts (every update sees the same ones, so reward can rise)."""
    return ["--config", str(EXPERIMENTS / "arith_tiny.yaml"), "arm=rule", f"policy={world / 'policy'}",
            f"output_dir={out}", "task.min_ops=2", "task.max_ops=3", "train_problems=8",
            "ppo.prompts_per_update=8", "ppo.samples_per_prompt=8", "ppo.minibatch_size=32", "ppo.lr=1e-3",
            "ppo.max_new_tokens=32", "eval_every=3", "eval_problems=8", "eval_samples=2",
            "final_eval_problems=8", "final_eval_samples=2", "checkpoint_every=2", *extra]


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def launch(world: Path, out: Path, ranks: int, *extra: str) -> subprocess.Popen:
    if ranks == 1:
        cmd = [sys.executable, "-m", "rl.ppo"]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--module", "rl.ppo"]
    return subprocess.Popen(cmd + args(world, out, *extra), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]


def rises(rows: list[dict]) -> bool:
    """Mean task return of the last two updates above that of the first two (64 rollouts each: one
    update alone is too noisy a baseline; a start at 0.20 then -0.26 once failed a single-update one)."""
    def mean(part: list[dict]) -> float:
        return sum(r["reward/task_return"] for r in part) / len(part)
    return mean(rows[-2:]) > mean(rows[:2]) + 0.05


@pytest.mark.parametrize("ds", ["zero2.json", "zero3.json"])
def test_two_rank_ppo_raises_the_reward_and_saves_a_policy(ds, tiny_world, tmp_path):
    out = tmp_path / "ppo"
    # ZeRO-3 also keeps the best update (a sharded save and restore), evaluated again on the validation problems
    best = ["best_metric=accuracy_greedy", "final_split=val"] if ds == "zero3.json" else []
    finish(launch(tiny_world, out, 2, "ppo.updates=8", "ppo.lr=5e-4", f"deepspeed={REPO / 'configs/deepspeed' / ds}", *best))
    rows = log_rows(out)
    assert [r["update"] for r in rows] == list(range(1, 9))
    assert rises(rows), [r["reward/task_return"] for r in rows]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["updates"] == 8
    for key in ("accuracy_t1", "accuracy_greedy", "sft_accuracy_t1", "final_kl", "final_steps_per_response"):
        assert key in metrics
    assert "eval/accuracy_greedy" in rows[2] and "eval/accuracy_t1" in rows[5]  # eval_every=3
    evals = [r for r in rows if "eval/accuracy_greedy" in r]
    leader = max(evals, key=lambda r: r["eval/accuracy_greedy"])  # max keeps the first of equals, as the run does
    assert metrics["policy_update"] == (leader["update"] if best else 8)
    if best:  # the restored shards are that update's weights: the same problems and seeds give its numbers
        assert (metrics["accuracy_greedy"], metrics["accuracy_t1"]) == (leader["eval/accuracy_greedy"],
                                                                       leader["eval/accuracy_t1"])
    policy = AutoModelForCausalLM.from_pretrained(out / "policy")  # gathered, plain safetensors
    start = AutoModelForCausalLM.from_pretrained(tiny_world / "policy")
    assert not all((a == b).all() for a, b in zip(policy.parameters(), start.parameters()))


def test_two_rank_zero3_ppo_with_a_prm_reward_model(tiny_world, tmp_path):
    """The PRM arm under ZeRO-3 on 2 ranks: four ZeRO-3 engines (actor, critic started from the reward
    model, reference, PRM), every rank scoring its own rollouts, gradient checkpointing on actor and
    critic; the world's policy stands in as the PRM (its vocabulary has the tag and label tokens)."""
    out = tmp_path / "ppo"
    finish(launch(tiny_world, out, 2, "ppo.updates=2", "reward.type=prm", f"reward.model={tiny_world / 'policy'}",
                  "critic_init=reward", "ppo.gradient_checkpointing=true", "eval_every=2",
                  f"deepspeed={REPO / 'configs/deepspeed/zero3.json'}"))
    rows = log_rows(out)
    assert [r["update"] for r in rows] == [1, 2]
    assert 0 < rows[0]["reward/score"] < 1 and rows[0]["response/steps"] > 1
    assert all(r["loss/value_loss"] > 0 and r["loss/value_loss"] == r["loss/value_loss"] for r in rows)
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2


def test_resume_after_a_kill_finishes_the_same_run(tiny_world, tmp_path):
    """Killed after its fourth checkpoint, resumed: same number of updates, and the same numbers as a
    run never interrupted (data order, sampling seeds, optimiser and RNG all come back), the best
    update kept by `best_metric` before the kill included."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    opts = ("ppo.updates=5", "checkpoint_every=1", "best_metric=accuracy_t1")  # evaluations at updates 3 and 5
    finish(launch(tiny_world, whole, 1, *opts))
    proc = launch(tiny_world, killed, 1, *opts)
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["update"] >= 4:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode != 0, "the run finished before it could be killed"
    assert not (killed / "metrics.json").exists()
    finish(launch(tiny_world, killed, 1, *opts, "resume=true"))
    a, b = log_rows(whole), log_rows(killed)
    assert [r["update"] for r in b] == [1, 2, 3, 4, 5]
    for key in ("reward/task_return", "kl/per_response", "loss/value_loss", "response/length"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-3, abs=1e-4), key
    ma, mb = (json.loads((out / "metrics.json").read_text()) for out in (whole, killed))
    assert mb["updates"] == 5 and mb["policy_update"] == ma["policy_update"]
    assert mb["accuracy_t1"] == pytest.approx(ma["accuracy_t1"], abs=1e-4)


def test_best_metric_keeps_the_best_updates_policy(tiny_world, tmp_path):
    """With best_metric, the final policy is the update with the highest validation accuracy: the final
    evaluation on the same problems and seeds reproduces that update's numbers, and the saved policy
    holds the weights of that update's kept checkpoint."""
    out = tmp_path / "ppo"
    finish(launch(tiny_world, out, 1, "ppo.updates=4", "eval_every=1", "checkpoint_every=4", "ppo.lr=3e-3",
                  "best_metric=accuracy_t1", "final_split=val"))
    rows, metrics = log_rows(out), json.loads((out / "metrics.json").read_text())
    values = [r["eval/accuracy_t1"] for r in rows]
    chosen = rows[values.index(max(values))]
    assert metrics["policy_update"] == chosen["update"], values
    assert chosen["update"] < 4, values  # lr 3e-3 wrecks the policy after update 1: the restore path runs
    assert metrics["accuracy_t1"] == chosen["eval/accuracy_t1"]
    assert metrics["accuracy_greedy"] == chosen["eval/accuracy_greedy"]
    assert metrics["final_kl"] == chosen["kl/per_response"]
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("best_"))
    assert kept == [f"best_{chosen['update']:05d}"]  # earlier leaders were removed at the checkpoint
    saved = torch.load(out / "checkpoints" / kept[0] / "actor" / "mp_rank_00_model_states.pt", weights_only=False)
    policy = AutoModelForCausalLM.from_pretrained(out / "policy")
    for name, weight in policy.state_dict().items():
        assert torch.equal(weight, saved["module"][name].to(weight.dtype)), name


def test_prm_reward_lora_actor_one_process(tiny_world, tmp_path):
    """The PRM arm on one process with LoRA on the actor (reference = adapters off), the world's policy
    standing in as a reward model (its vocabulary has the tag and label tokens)."""
    out = tmp_path / "ppo"
    finish(launch(tiny_world, out, 1, "ppo.updates=2", "reward.type=prm", f"reward.model={tiny_world / 'policy'}",
                  "lora.enabled=true", "lora.r=4"))
    rows = log_rows(out)
    assert len(rows) == 2 and rows[1]["kl/per_response"] != 0.0  # the adapters moved away from the reference
    assert rows[0]["kl/per_response"] == pytest.approx(0.0, abs=1e-5)  # before any update: policy == reference
    assert 0 < rows[0]["reward/score"] < 1 and rows[0]["response/steps"] > 1
    merged = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert not any("lora" in name for name, _ in merged.named_parameters())


@pytest.mark.parametrize("experiment", ["arith_tiny", "arith_chain", "arith_copy", "gsm8k_mistral7b"])
@pytest.mark.parametrize("arm", ["prm", "orm", "rule"])
def test_experiment_configs_load_and_validate(experiment, arm):
    if experiment.startswith("gsm8k") and arm == "rule":
        pytest.skip("the paper recipe has no rule arm")
    cfg = load_config(PPOConfig, "ppo", str(EXPERIMENTS / f"{experiment}.yaml"), [f"arm={arm}"])
    check(cfg, 8 if experiment.startswith("gsm8k") else 1, load_task(cfg.task))
    assert cfg.reward.type == arm and cfg.output_dir == f"outputs/{experiment}/ppo-{arm}"
    if experiment.startswith("arith"):  # an arm's paths follow its experiment (`${experiment}` in the shared base)
        assert cfg.experiment == experiment and cfg.policy == f"outputs/{experiment}/world/policy"
        assert cfg.task.form == ("chain" if "chain" in experiment else "modular")
        assert cfg.task.carry_rest == ("copy" in experiment)  # restated rests: longer solutions, more new tokens
        assert cfg.ppo.max_new_tokens == (160 if "copy" in experiment else 96)
        assert cfg.reward.prefix_min == (experiment == "arith_copy" and arm == "prm")  # first-error labels
    if experiment.startswith("gsm8k"):
        assert cfg.task.name == "gsm8k" and "zero3" in cfg.deepspeed and cfg.reward.kl_coef == 0.04


def test_bad_ppo_config_is_one_clear_error(tmp_path):
    with pytest.raises(ShepherdError, match="ppo.prompts_per_update"):
        check(load_config(PPOConfig, "ppo", None, ["policy=x", "reward.type=rule", "ppo.prompts_per_update=3"]), 2,
              load_task("arith"))
    with pytest.raises(ShepherdError, match="reward.model"):
        check(load_config(PPOConfig, "ppo", None, ["policy=x", "reward.type=orm"]), 1, load_task("arith"))
    oracle = load_config(PPOConfig, "ppo", str(EXPERIMENTS / "arith_copy.yaml"), ["arm=prm-oracle"])
    check(oracle, 1, load_task(oracle.task))  # the diagnostic arm: the PRM arm with the oracle's step labels
    assert oracle.reward.model == "oracle" and oracle.output_dir == "outputs/arith_copy/ppo-prm-oracle"
    with pytest.raises(ShepherdError, match="task.name=arith"):
        check(oracle, 1, load_task("gsm8k"))
    with pytest.raises(ShepherdError, match="critic_init=reward"):
        check(load_config(PPOConfig, "ppo", str(EXPERIMENTS / "arith_copy.yaml"), ["arm=prm-oracle", "critic_init=reward"]),
              1, load_task("arith"))
    with pytest.raises(ShepherdError, match="key best_metric"):
        check(load_config(PPOConfig, "ppo", None, ["policy=x", "reward.type=rule", "best_metric=reward"]), 1,
              load_task("arith"))
    with pytest.raises(ShepherdError, match="unknown config key 'ppo.learning_rate'"):
        load_config(PPOConfig, "ppo", None, ["ppo.learning_rate=1"])


def test_gradient_checkpointing_saves_memory_not_math(random_policy, tmp_path):
    """ppo.gradient_checkpointing (actor, critic) and train.gradient_checkpointing (reward models, SFT):
    checkpointing is on, the gradients are those of the model without it, and no deprecated transformers
    name is used (5.2x renamed gradient to activation checkpointing; v6 drops the old names)."""
    from reward.training import TrainConfig, training_arguments
    from rl.ppo import checkpointed, load_critic

    def is_on(model):
        if hasattr(model, "is_activation_checkpointing"):
            return model.is_activation_checkpointing
        return model.is_gradient_checkpointing

    ids = torch.randint(5, 20, (2, 12))
    grads = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for on in (False, True):
            model = checkpointed(AutoModelForCausalLM.from_pretrained(random_policy), on).train()
            assert bool(is_on(model)) == on
            model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        assert is_on(checkpointed(load_critic(random_policy), True))
        assert training_arguments(TrainConfig(gradient_checkpointing=True), str(tmp_path), 0).gradient_checkpointing
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("advantage", ["grpo", "rloo"])
def test_critic_free_ppo_builds_no_critic_and_raises_the_reward(advantage, tiny_world, tmp_path):
    """ppo.advantage=grpo|rloo: one process, the rule reward; no critic engine is built or checkpointed,
    and the task return rises as with GAE."""
    out = tmp_path / "ppo"
    finish(launch(tiny_world, out, 1, "ppo.updates=8", "ppo.lr=5e-4", f"ppo.advantage={advantage}",
                  *(["ppo.baseline=token"] if advantage == "rloo" else ["ppo.credit=min", "ppo.mask_separator=true"])))
    rows = log_rows(out)
    assert [r["update"] for r in rows] == list(range(1, 9))
    assert rises(rows), [r["reward/task_return"] for r in rows]
    assert all(r["loss/value_loss"] == 0 for r in rows)  # no value loss: no critic
    peaks = [r["memory/peak_gb"] for r in rows]
    assert peaks == sorted(peaks) and peaks[0] > 0.1  # a running peak, models included
    saved = [p.name for p in (out / "checkpoints" / "update_00008").iterdir()]
    assert "actor" in saved and "critic" not in saved


def test_critic_free_estimators_need_groups(tmp_path):
    with pytest.raises(ShepherdError, match="samples_per_prompt >= 2"):
        check(load_config(PPOConfig, "ppo", None, ["policy=x", "reward.type=rule", "ppo.advantage=grpo",
                                                   "ppo.samples_per_prompt=1"]), 1, load_task("arith"))
    with pytest.raises(ShepherdError, match="key ppo.credit"):
        check(load_config(PPOConfig, "ppo", None, ["policy=x", "reward.type=rule", "ppo.credit=max"]), 1,
              load_task("arith"))


def test_separator_tokens_are_the_step_breaks(tiny_world):
    """ppo.mask_separator: the line breaks between steps, and nothing else, leave the policy loss."""
    from transformers import AutoTokenizer

    from rl.ppo import separator_tokens

    tok = AutoTokenizer.from_pretrained(tiny_world / "policy")
    text = "3 + 4 = 7\n7 * 2 = 4\nThe answer is 4"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    flags = separator_tokens(torch.tensor([ids + [tok.pad_token_id]]), tok)[0].tolist()
    assert sum(flags) == 2 and all(tok.decode([t]).strip() == "" for t, f in zip(ids, flags) if f)
    assert tok.decode([t for t, f in zip(ids, flags) if not f]).replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_one_rank_trains_at_stage_0_and_several_keep_their_zero_stage():
    """ZeRO-1/2 partition nothing on one rank: the engine runs stage 0 (no gradient buckets, no
    all-reduce of a group of one); two ranks keep the file's stage, and ZeRO-3 is kept everywhere."""
    from rl.engines import ds_config, zero_stage

    zero2, zero3 = str(REPO / "configs/deepspeed/zero2.json"), str(REPO / "configs/deepspeed/zero3.json")
    assert zero_stage(ds_config(zero2, 16, 1.0, world=1, train=True)) == 0
    assert zero_stage(ds_config(zero2, 16, 1.0, world=2, train=True)) == 2
    assert zero_stage(ds_config(zero2, 16, 1.0, world=2, train=False)) == 0
    assert zero_stage(ds_config(zero3, 16, 1.0, world=1, train=True)) == 3
    assert ds_config(zero2, 16, 1.0, world=2, train=True)["train_batch_size"] == 32


def test_chunked_forwards_in_length_order_equal_one_whole_batch_forward(random_policy):
    """in_chunks takes rows in length order and cuts each chunk to its own longest row: the log-probs
    and values of the real response tokens are those of one forward over the whole padded batch, in the
    batch's order; a minibatch (`rows`) is cut to its longest row."""
    from rl.ppo import actor_forward, critic_forward, in_chunks, load_critic, make_batch, rows

    torch.manual_seed(0)
    lengths = [(3, 9), (5, 2), (2, 14), (4, 6), (6, 1), (3, 11), (2, 4)]
    b = make_batch([torch.randint(5, 20, (p,)).tolist() for p, _ in lengths],
                   [torch.randint(5, 20, (r,)).tolist() for _, r in lengths], 0, torch.device("cpu"))
    actor, critic = AutoModelForCausalLM.from_pretrained(random_policy).eval(), load_critic(random_policy).eval()
    for fn in (lambda x: actor_forward(actor, x, 0.7)[0], lambda x: critic_forward(critic, x)):
        with torch.no_grad():
            whole = fn(b)
        chunked = in_chunks(fn, b, 3)
        assert chunked.shape == whole.shape
        assert torch.allclose(chunked * b.mask, whole * b.mask, atol=1e-5)
    mb = rows(b, torch.tensor([1, 4, 6]))
    assert mb.ids.shape[1] == 7 and mb.tokens.shape == (3, b.tokens.shape[1])


def test_micro_batches_accumulate_to_the_whole_minibatch_step(tiny_world, tmp_path):
    """ppo.micro_batch_size: a minibatch of 32 as 4 forward/backward passes of 8 in length order, one
    optimiser step; the update equals the one-pass run's (same rollouts, losses, saved weights) up to
    float rounding, and a minibatch that does not split is one clear error."""
    runs = {}
    for micro in (0, 8):
        out = tmp_path / f"micro{micro}"
        finish(launch(tiny_world, out, 1, "ppo.updates=2", f"ppo.micro_batch_size={micro}", "eval_every=1000"))
        runs[micro] = (log_rows(out), AutoModelForCausalLM.from_pretrained(out / "policy").state_dict())
    (whole, w_weights), (parts, p_weights) = runs[0], runs[8]
    for a, b in zip(whole, parts):
        assert a["reward/task_return"] == b["reward/task_return"]  # update 2 sampled from the same weights
        assert a["loss/policy_loss"] == pytest.approx(b["loss/policy_loss"], abs=1e-4)
        assert a["loss/value_loss"] == pytest.approx(b["loss/value_loss"], rel=1e-3)
    moved = max((w_weights[k] - p_weights[k]).abs().max() for k in w_weights)
    assert moved < 1e-4
    with pytest.raises(ShepherdError, match="ppo.micro_batch_size"):
        check(load_config(PPOConfig, "ppo", None, ["policy=x", "reward.type=rule", "ppo.prompts_per_update=6",
                                                   "ppo.samples_per_prompt=4", "ppo.minibatch_size=16",
                                                   "ppo.micro_batch_size=4"]), 1, load_task("arith"))


def test_one_cpu_process_joins_without_building_the_shared_memory_op():
    """A world of one on CPU skips DeepSpeed's shared-memory all-reduce op (a C++ build of 30-40 s at the
    first run of every environment, for collectives one rank never makes); its collectives still work."""
    code = ("import torch, deepspeed.comm.comm as c\n"
            "from reward.distributed import all_reduce_sum, init_distributed\n"
            "print(init_distributed(), c.cdb.shm_comm_op, all_reduce_sum(torch.tensor([2.0])).tolist())")
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(0, 1, device(type='cpu')) None [2.0]"
