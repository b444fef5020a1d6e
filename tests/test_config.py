"""Configs: typed defaults, experiment sections, dotted overrides, strict keys with a suggestion."""
import pytest
from omegaconf import OmegaConf

from reward.config import load_config, stage_output_dir
from reward.errors import ShepherdError
from reward.sample import SampleConfig
from rl.ppo import PPOConfig
from rl.world import WorldConfig


def test_defaults_section_and_overrides(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("experiment: e1\nseed: 3\ntask: {form: chain}\nsample: {num_problems: 7, policy: p}\n"
                 "world: {eval_problems: 9}\n")
    cfg = load_config(SampleConfig, "sample", str(f), ["temperature=0.5", "generation.batch_size=8"])
    assert (cfg.num_problems, cfg.policy, cfg.temperature, cfg.seed) == (7, "p", 0.5, 3)
    assert cfg.task.form == "chain" and cfg.task.name == "arith"  # shared key merged over defaults
    assert cfg.generation.batch_size == 8
    assert cfg.output_dir == "outputs/e1/sample"  # default output folder per experiment and stage
    world = load_config(WorldConfig, "world", str(f))
    assert world.eval_problems == 9 and world.output_dir == "outputs/e1/world"


@pytest.mark.parametrize("override, named, suggested", [
    ("num_problem=3", "num_problem", "num_problems"),
    ("generation.batchsize=3", "generation.batchsize", "batch_size"),
])
def test_unknown_override_names_key_and_closest(override, named, suggested):
    with pytest.raises(ShepherdError) as e:
        load_config(SampleConfig, "sample", None, [override])
    assert named in str(e.value) and suggested in str(e.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("sample:\n  temprature: 0.3\n")
    with pytest.raises(ShepherdError, match=r"temprature.*exp.yaml|exp.yaml.*temprature") as e:
        load_config(SampleConfig, "sample", str(f))
    assert "temperature" in str(e.value)
    f.write_text("experimnt: x\n")
    with pytest.raises(ShepherdError, match="experimnt"):
        load_config(SampleConfig, "sample", str(f))


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ShepherdError, match="num_problems"):
        load_config(SampleConfig, "sample", None, ["num_problems=many"])
    with pytest.raises(ShepherdError, match="key=value"):
        load_config(SampleConfig, "sample", None, ["num_problems"])
    with pytest.raises(ShepherdError, match="not found"):
        load_config(SampleConfig, "sample", str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("experiment", ["arith_tiny", "arith_chain", "arith_copy"])
def test_experiment_loads_for_every_stage(experiment):
    """A key misspelt in any stage section of a shipped experiment fails here, not an hour into a pipeline."""
    from reward.annotate import AnnotateConfig
    from reward.eval_prm import EvalPrmConfig
    from reward.train import RewardTrainConfig
    from reward.verify import VerifyConfig
    from rl.evaluate import EvalConfig
    from rl.pipeline import PipelineConfig

    file = f"configs/experiments/{experiment}.yaml"
    schemas = [(WorldConfig, "world"), (SampleConfig, "sample"), (EvalConfig, "eval"), (AnnotateConfig, "annotate"),
               (RewardTrainConfig, "train-prm"), (RewardTrainConfig, "train-orm"), (VerifyConfig, "verify"),
               (EvalPrmConfig, "eval-prm")]
    for schema, stage in schemas:
        cfg = load_config(schema, stage, file)
        assert OmegaConf.is_config(cfg) and cfg.output_dir == f"outputs/{experiment}/{stage}"
    assert load_config(PipelineConfig, "pipeline", file).arms in ([], ["prm", "orm", "rule"])
    for arm in ("prm", "orm", "rule"):
        cfg = load_config(PPOConfig, "ppo", file, [f"arm={arm}"])
        assert cfg.reward.type == arm and cfg.output_dir == f"outputs/{experiment}/ppo-{arm}"


def test_big_prm_arm_swaps_the_verifier_and_keeps_the_policy():
    """arith_copy_big.yaml: its world, labels and PRM chain into each other, and the PPO arm it
    runs is the PRM arm's (same policy, samples, reward placement) with the reward model and its KL
    coefficient changed, reported beside the rule arm and an ORM arm of the same size."""
    from reward.annotate import AnnotateConfig
    from reward.train import RewardTrainConfig
    from reward.tasks import load_task
    from rl.pipeline import PipelineConfig
    from rl.ppo import check

    file, base = "configs/experiments/arith_copy_big.yaml", "configs/experiments/arith_copy.yaml"
    world, small = load_config(WorldConfig, "world", file), load_config(WorldConfig, "world", base)
    ann, prm = load_config(AnnotateConfig, "annotate", file), load_config(RewardTrainConfig, "train-prm", file)
    ppo, ppo_base = load_config(PPOConfig, "ppo", file, ["arm=prm-big"]), load_config(PPOConfig, "ppo", base, ["arm=prm"])
    assert world.output_dir != small.output_dir and world.model.num_layers > small.model.num_layers
    assert ann.completer == prm.init == f"{world.output_dir}/policy"
    assert ann.input == load_config(AnnotateConfig, "annotate", base).input
    assert prm.data == f"{ann.output_dir}/stepwise.jsonl" and ppo.reward.model == f"{prm.output_dir}/model"
    assert ppo.policy == ppo_base.policy == f"{small.output_dir}/policy"
    differs = {k for k in ppo.reward if ppo.reward[k] != ppo_base.reward[k]}
    assert differs == {"model", "kl_coef"} and ppo.reward.kl_coef > ppo_base.reward.kl_coef and ppo.ppo == ppo_base.ppo
    assert load_config(PipelineConfig, "pipeline", file).arms == ["rule", "prm-big", "orm-big"]
    assert stage_output_dir(file, "ppo", "rule") == stage_output_dir(base, "ppo", "rule")  # the same rule runs
    # the equal-size ORM arm: an ORM from world-big on the same samples, every PPO knob as in the PRM arm
    orm, orm_arm = load_config(RewardTrainConfig, "train-orm", file), load_config(PPOConfig, "ppo", file, ["arm=orm-big"])
    assert orm.kind == "orm" and orm.init == prm.init and orm.data == prm.data
    assert orm_arm.reward.type == "orm" and orm_arm.reward.model == f"{orm.output_dir}/model"
    assert orm_arm.ppo == ppo.ppo and orm_arm.policy == ppo.policy and orm_arm.output_dir != ppo.output_dir
    check(orm_arm, 1, load_task(orm_arm.task))


def test_arms_are_override_sets_of_the_ppo_section(tmp_path):
    """An arm goes over the ppo section (its `extends` chain first), command-line overrides over the arm;
    each arm writes its own folder; a wrong name, a cycle or an arm on another stage is one clear error."""
    base = tmp_path / "base.yaml"
    base.write_text("experiment: x\nppo:\n  output_dir: outputs/x/ppo-section\n  reward: {kl_coef: 0.02}\n"
                    "arms:\n  prm: {reward: {type: prm, model: m, shaping: delta}}\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("base: base.yaml\narms:\n  oracle: {extends: prm, reward: {model: oracle}}\n"
                   "  loop: {extends: loop}\n  own: {output_dir: 'out/${experiment}-own'}\n")
    oracle = load_config(PPOConfig, "ppo", str(exp), ["arm=oracle"])
    assert (oracle.reward.type, oracle.reward.model, oracle.reward.shaping, oracle.reward.kl_coef) == ("prm", "oracle", "delta", 0.02)
    assert oracle.output_dir == "outputs/x/ppo-oracle" == stage_output_dir(str(exp), "ppo", "oracle")
    assert load_config(PPOConfig, "ppo", str(exp), ["arm=own"]).output_dir == "out/x-own" == stage_output_dir(str(exp), "ppo", "own")
    assert load_config(PPOConfig, "ppo", str(exp), ["arm=prm", "reward.model=n", "output_dir=o"]).reward.model == "n"
    assert load_config(PPOConfig, "ppo", str(exp)).output_dir == "outputs/x/ppo-section"  # no arm: the section
    with pytest.raises(ShepherdError, match="unknown arm 'orm'.*arms: prm, oracle, loop, own"):
        load_config(PPOConfig, "ppo", str(exp), ["arm=orm"])
    with pytest.raises(ShepherdError, match="arm 'loop'.*extends itself"):
        load_config(PPOConfig, "ppo", str(exp), ["arm=loop"])
    with pytest.raises(ShepherdError, match="stage sample has no arms"):
        load_config(SampleConfig, "sample", str(exp), ["arm=prm"])
    (tmp_path / "bad.yaml").write_text("arms:\n  prm: {reward: {typo: 1}}\n")
    with pytest.raises(ShepherdError, match="reward.typo.*arm 'prm'"):
        load_config(PPOConfig, "ppo", str(tmp_path / "bad.yaml"), ["arm=prm"])
