"""Reward placement on a hand-made rollout: every position, for every reward type and shaping, with the
KL penalty, and with a reward model whose tokenizer and step tag differ from the policy's."""
import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from reward.errors import ShepherdError
from reward.prm import score_steps
from rl.rewards import (RewardConfig, Rollout, check_config, empty_steps, oracle_step_scores, rollout_rewards,
                        shape_step_scores, with_kl)
from rl.tokenizer import build_tokenizer

Q = "Compute 3 + 4 * 2 mod 10."
TEXT = "3 + 4 = 7\n7 * 2 = 4\nThe answer is 4"
STEPS = ["3 + 4 = 7", "7 * 2 = 4", "The answer is 4"]
# Policy tokens: 3 | + | 4 | = | 7 | \n | 7 | * | 2 | = | 4 | \n | The answer is | 4 | </s>
N, ENDS, LAST = 15, [4, 10, 13], 14


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def rollout(tok, text=TEXT, steps=STEPS, correct=True, has_answer=True, well_formed=True):
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return Rollout(Q, text, ids, list(steps), correct, has_answer, well_formed)


def cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(RewardConfig), kw)


def expected(step_values, outcome, n=N, ends=ENDS):
    out = [0.0] * n
    for e, v in zip(ends, step_values):
        out[e] += v
    out[n - 1] += outcome
    return out


def test_hand_made_rollout_has_the_tokens_we_think(tok):
    r = rollout(tok)
    assert len(r.token_ids) == N
    assert [tok.decode(r.token_ids[e]) for e in ENDS] == ["7", "4", "4"]


@pytest.mark.parametrize("shaping,values", [
    ("delta", [0.9 - 0.5, 0.6 - 0.9, 0.8 - 0.6]),
    ("clip", [0.0, 0.6 - 0.7, 0.0]),
    ("none", [0.9, 0.6, 0.8]),
])
def test_prm_step_rewards_land_on_each_steps_last_token(tok, shaping, values):
    c = cfg(type="prm", model="x", shaping=shaping, clip_threshold=0.7, rule_weight=0.0)
    rewards, info = rollout_rewards(rollout(tok), c, tok, [0.9, 0.6, 0.8])
    assert rewards == pytest.approx(expected(values, 0.0))
    assert info["score"] == pytest.approx(0.6)  # min: the solution's PRM score


def test_prefix_min_keeps_a_wrong_step_wrong(tok):
    """A PRM that judges steps one at a time scores the step after a wrong one high again; with
    prefix_min the delta rewards never climb back: the wrong step costs, later steps earn nothing."""
    c = cfg(type="prm", model="x", shaping="delta", prefix_min=True)
    rewards, info = rollout_rewards(rollout(tok), c, tok, [0.9, 0.2, 0.8])
    assert rewards == pytest.approx(expected([0.9 - 0.5, 0.2 - 0.9, 0.0], 0.0))
    assert info["score"] == pytest.approx(0.2)


def test_delta_rewards_sum_to_last_minus_base_whatever_the_number_of_steps():
    c = cfg(type="prm", shaping="delta", delta_base=0.5)
    for scores in ([0.9, 0.6, 0.8], [0.9] * 10 + [0.8]):
        assert sum(shape_step_scores(scores, c)) == pytest.approx(0.8 - 0.5)


def test_prm_min_gives_the_soft_minimum(tok):
    c = cfg(type="prm_min", model="x", min_temperature=0.05)
    rewards, _ = rollout_rewards(rollout(tok), c, tok, [0.9, 0.3, 0.8])
    assert sum(rewards) == pytest.approx(0.3, abs=0.01)
    assert rewards[ENDS[1]] == pytest.approx(0.3, abs=0.01)  # the credit sits on the weakest step


def test_orm_and_rule_and_weighted_sum_at_the_last_token(tok):
    rewards, info = rollout_rewards(rollout(tok), cfg(type="orm", model="x"), tok, [0.1, 0.2, 0.7])
    assert rewards == pytest.approx(expected([], 0.7)) and info["score"] == pytest.approx(0.7)
    rewards, _ = rollout_rewards(rollout(tok, correct=False), cfg(type="rule"), tok, None)
    assert rewards == [0.0] * N
    rewards, _ = rollout_rewards(rollout(tok), cfg(type="rule"), tok, None)
    assert rewards == expected([], 1.0)
    c = cfg(type="prm", model="x", shaping="none", process_weight=0.5, rule_weight=2.0)
    rewards, _ = rollout_rewards(rollout(tok), c, tok, [0.9, 0.6, 0.8])
    assert rewards == pytest.approx(expected([0.45, 0.3, 0.4], 2.0))


def test_penalties_for_no_answer_and_broken_format(tok):
    c = cfg(type="rule", no_answer_penalty=-1.0, format_penalty=-0.5)
    text, steps = "3 + 4 = 7\n7 * 2 = 4", STEPS[:2]
    rewards, info = rollout_rewards(rollout(tok, text, steps, False, False, False), c, tok, None)
    assert rewards == expected([], -1.0, n=12, ends=[]) and info["penalty"] == -1.0
    text, steps = "3 + 4 = 7\n7 * 2\nThe answer is 4", ["3 + 4 = 7", "7 * 2", "The answer is 4"]
    rewards, _ = rollout_rewards(rollout(tok, text, steps, True, True, False), c, tok, None)
    assert rewards[-1] == pytest.approx(1.0 - 0.5) and sum(rewards) == pytest.approx(0.5)


def test_kl_penalty_every_token_and_clipping(tok):
    c = cfg(type="rule", kl_coef=0.1, kl_estimator="k1")
    task = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    logp = torch.tensor([[-1.0, -0.5, -0.2, -3.0]])
    ref = torch.tensor([[-1.5, -0.5, -0.1, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    total, kl = with_kl(task, logp, ref, mask, c)
    assert kl[0].tolist() == pytest.approx([0.5, 0.0, -0.1, 0.0])
    assert total[0].tolist() == pytest.approx([-0.05, 0.0, 1.01, 0.0])
    rewards, _ = rollout_rewards(rollout(tok), cfg(type="prm", model="x", shaping="none", clip=0.5), tok, [0.9, 0.2, 0.8])
    assert max(rewards) == 0.5


def test_bad_reward_config_is_one_clear_error():
    with pytest.raises(ShepherdError, match="reward.type"):
        check_config(cfg(type="prm_sum"), True)
    with pytest.raises(ShepherdError, match="reward.model"):
        check_config(cfg(type="prm", model=""), True)
    with pytest.raises(ShepherdError, match="reward.shaping"):
        check_config(cfg(shaping="centred", model="x"), True)
    with pytest.raises(ShepherdError, match="task.name=arith"):
        check_config(cfg(type="prm", model="oracle"), False)
    check_config(cfg(type="prm", model="oracle"), True)


def test_oracle_step_scores_are_a_perfect_first_error_prm(tok):
    """model=oracle: 1 before the oracle's first wrong step, 0 from it on, then the usual shaping."""
    wrong = Rollout(Q, TEXT, rollout(tok).token_ids, STEPS, False, True, True, first_error=1)
    assert oracle_step_scores(wrong) == [1.0, 0.0, 0.0]
    assert oracle_step_scores(rollout(tok)) == [1.0, 1.0, 1.0]  # first_error None: every step right
    stopped = Rollout(Q, TEXT, rollout(tok).token_ids, STEPS, False, False, False, first_error=3)
    assert oracle_step_scores(stopped) == [1.0, 1.0, 1.0]  # the missing next step is not a written step
    rewards, info = rollout_rewards(wrong, cfg(type="prm", model="oracle"), tok, oracle_step_scores(wrong))
    assert rewards == pytest.approx(expected([0.5, -1.0, 0.0], 0.0)) and info["score"] == 0.0


def char_tokenizer():
    """A different tokenizer: one token per character, and its own step tag '<step>'."""
    chars = sorted(set("Compute The answer is mod 0123456789+-*=.()\n"))
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", " <step>"] + chars)}
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex(r" <step>|."), behavior="isolated")
    t.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_reward_model_with_another_tokenizer_and_tag(tok):
    prm_tok = char_tokenizer()
    assert prm_tok(" <step>", add_special_tokens=False)["input_ids"] == [4]
    torch.manual_seed(0)
    prm = LlamaForCausalLM(LlamaConfig(vocab_size=len(prm_tok), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)).eval()
    scores = score_steps(prm, prm_tok, [(Q, STEPS)], tag="<step>")[0]
    assert len(scores) == 3 and len(set(scores)) == 3  # a random model: three different step scores
    with pytest.raises(ShepherdError, match="single token"):
        score_steps(prm, prm_tok, [(Q, STEPS)])  # the policy's tag is not this PRM's
    r = rollout(tok)
    rewards, _ = rollout_rewards(r, cfg(type="prm", model="x", shaping="none"), tok, scores)
    assert rewards == pytest.approx(expected(scores, 0.0))
    # the same text under a tokenizer with other boundaries still lands each reward at its step's end
    text_tok = char_tokenizer()
    char_ids = text_tok(TEXT, add_special_tokens=False)["input_ids"]
    char_rollout = Rollout(Q, TEXT, char_ids, STEPS, True, True, True)
    rewards, _ = rollout_rewards(char_rollout, cfg(type="prm", model="x", shaping="none"), text_tok, scores)
    ends = [TEXT.index(s) + len(s) - 1 for s in STEPS]
    assert rewards == pytest.approx(expected(scores, 0.0, n=len(TEXT), ends=ends))


def test_a_rollout_without_steps_gets_no_process_score(tok):
    """An empty rollout has nothing for the PRM to score: its logged score is 0, whatever the rule says."""
    r = Rollout(Q, "", [tok.eos_token_id], [], True, False, False)
    rewards, info = rollout_rewards(r, cfg(type="prm", model="x", no_answer_penalty=-1.0), tok, [])
    assert rewards == [-1.0] and info["score"] == 0.0


@pytest.mark.parametrize("text,separator,count", [
    (TEXT, "\n", 0),
    (TEXT + "\n\n", "\n", 0),  # trailing breaks before EOS end the response, they pad nothing
    ("3 + 4 = 7\n\n\n7 * 2 = 4\nThe answer is 4", "\n", 2),
    ("3 + 4 = 7\n  \t\n7 * 2 = 4\n \nThe answer is 4", "\n", 2),  # whitespace-only lines
    ("\n3 + 4 = 7\nThe answer is 4", "\n", 1),
    ("a b\n\nc d\n\nThe answer is 4", "\n\n", 0),  # paragraphs: one blank line is the separator
    ("a b\n\n\n\nc d\n\n\nThe answer is 4", "\n\n", 1),
    ("\n\na b\n\nThe answer is 4", "\n\n", 1),
])
def test_empty_steps_are_the_breaks_beyond_one_separator(text, separator, count):
    assert empty_steps(text, separator) == count


def test_empty_step_penalty_lands_at_the_last_token_per_empty_step(tok):
    """Two empty lines cost 2 x the penalty at the last token; every step reward stays where it was."""
    c = cfg(type="prm", model="x", shaping="none", empty_step_penalty=-0.25)
    clean, _ = rollout_rewards(rollout(tok), c, tok, [0.9, 0.6, 0.8])
    padded = rollout(tok)
    padded.empty_steps = 2
    rewards, info = rollout_rewards(padded, c, tok, [0.9, 0.6, 0.8])
    assert rewards[:-1] == clean[:-1]
    assert rewards[-1] == pytest.approx(clean[-1] - 0.5) and info["penalty"] == pytest.approx(-0.5)
    off, _ = rollout_rewards(padded, cfg(type="prm", model="x", shaping="none"), tok, [0.9, 0.6, 0.8])
    assert off == clean  # the default charges nothing
