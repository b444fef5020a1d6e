"""Critic-free step advantages (`rl.advantages`) against hand computations on small rollout groups."""
import pytest
import torch

from rl.advantages import group_advantages, returns_to_go, token_baseline

# Two samples of one prompt. Sample 0: 5 tokens, steps ending at tokens 1 and 3, the outcome at token 4.
# Sample 1: 3 tokens, one step ending at token 0, the outcome at token 2 (its last), then padding.
REWARDS = torch.tensor([[0.0, 0.5, 0.0, -0.4, 1.0], [0.2, 0.0, 0.0, 0.0, 0.0]])
POSITIONS = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 1, 0, 0]], dtype=torch.float)
MASK = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def test_sum_and_min_returns_from_each_step_on():
    s = returns_to_go(REWARDS, POSITIONS, MASK, "sum")
    assert s[0].tolist() == pytest.approx([1.1, 1.1, 0.6, 0.6, 1.0])
    assert s[1].tolist() == pytest.approx([0.2, 0.0, 0.0, 0.0, 0.0])  # the outcome (0.0 at token 2) counts
    m = returns_to_go(REWARDS, POSITIONS, MASK, "min")
    assert m[0].tolist() == pytest.approx([-0.4, -0.4, -0.4, -0.4, 1.0])  # one bad step bounds those before it
    assert m[1].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0])  # min(0.2, 0.0)


def test_grpo_normalises_by_the_groups_returns_at_reward_positions():
    adv = group_advantages(REWARDS, POSITIONS, MASK, group=2, estimator="grpo", credit="sum")
    at = [1.1, 0.6, 1.0, 0.2, 0.0]  # returns at the five reward positions of the group
    mean, std = sum(at) / 5, (sum((x - sum(at) / 5) ** 2 for x in at) / 5) ** 0.5
    expected0 = [(x - mean) / (std + 1e-6) for x in [1.1, 1.1, 0.6, 0.6, 1.0]]
    expected1 = [(x - mean) / (std + 1e-6) for x in [0.2, 0.0, 0.0]] + [0.0, 0.0]
    assert adv[0].tolist() == pytest.approx(expected0) and adv[1].tolist() == pytest.approx(expected1)


def test_outcome_rewards_give_the_textbook_grpo_and_rloo():
    """ORM / rule: one reward at each last token; GRPO = (r - mean) / std over the group, RLOO = r - mean
    of the others, on every token of the response."""
    rewards = torch.zeros(3, 4)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    last = [3, 1, 2]
    outcome = [1.0, 0.0, 0.5]
    positions = torch.zeros(3, 4)
    for i, (t, r) in enumerate(zip(last, outcome)):
        rewards[i, t], positions[i, t] = r, 1.0
    mean = sum(outcome) / 3
    std = (sum((r - mean) ** 2 for r in outcome) / 3) ** 0.5
    for estimator, expected in (("grpo", [(r - mean) / (std + 1e-6) for r in outcome]),
                                ("rloo", [r - (sum(outcome) - r) / 2 for r in outcome])):
        for credit in ("sum", "min"):
            adv = group_advantages(rewards, positions, mask, 3, estimator, credit)
            for i in range(3):
                assert adv[i, : last[i] + 1].tolist() == pytest.approx([expected[i]] * (last[i] + 1))
                assert adv[i, last[i] + 1:].abs().sum() == 0


def test_rloo_mean_baseline_is_the_other_samples_total_return():
    adv = group_advantages(REWARDS, POSITIONS, MASK, group=2, estimator="rloo", credit="sum")
    assert adv[0].tolist() == pytest.approx([x - 0.2 for x in [1.1, 1.1, 0.6, 0.6, 1.0]])
    assert adv[1].tolist() == pytest.approx([0.2 - 1.1, -1.1, -1.1, 0.0, 0.0])


def test_pure_token_baseline_charges_each_reward_for_the_tokens_it_covers():
    """Others' reward per token: sample 0 sees sample 1's 0.2 over 3 tokens; sample 1 sees 1.1 over 5."""
    based = token_baseline(REWARDS, POSITIONS, MASK, group=2)
    b0, b1 = 0.2 / 3, 1.1 / 5
    assert based[0].tolist() == pytest.approx([0.0, 0.5 - 2 * b0, 0.0, -0.4 - 2 * b0, 1.0 - 1 * b0])
    assert based[1].tolist() == pytest.approx([0.2 - 1 * b1, 0.0, 0.0 - 2 * b1, 0.0, 0.0])
    adv = group_advantages(REWARDS, POSITIONS, MASK, 2, "rloo", "min", baseline="token")
    assert adv[0, 0].item() == pytest.approx(min(0.5 - 2 * b0, -0.4 - 2 * b0, 1.0 - b0))


def test_groups_must_divide_the_batch():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(REWARDS, POSITIONS, MASK, 3, "grpo")
