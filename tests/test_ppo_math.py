"""PPO math against hand computations: GAE (sparse and dense rewards, masks), the clipped losses,
whitening, the KL estimators."""
import math

import pytest
import torch

from rl.losses import gae, kl_estimate, masked_mean, policy_loss, value_loss, whiten


def test_gae_sparse_reward_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.9)
    # deltas: 0.6-0.5=0.1, 0.7-0.6=0.1, 1-0.7=0.3 (the state after the last token is terminal)
    expected = [0.1 + 0.9 * (0.1 + 0.9 * 0.3), 0.1 + 0.9 * 0.3, 0.3]
    assert adv[0].tolist() == pytest.approx(expected)
    assert ret[0].tolist() == pytest.approx([a + v for a, v in zip(expected, [0.5, 0.6, 0.7])])


def test_gae_dense_rewards_with_lambda_one_are_discounted_returns():
    rewards = torch.tensor([[0.2, -0.1, 0.5]])
    adv, ret = gae(rewards, torch.zeros(1, 3), torch.ones(1, 3), gamma=0.9, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.2 + 0.9 * (-0.1) + 0.81 * 0.5, -0.1 + 0.9 * 0.5, 0.5])
    assert ret[0].tolist() == pytest.approx(adv[0].tolist())


def test_gae_ignores_everything_past_a_response_end():
    rewards = torch.tensor([[1.0, 7.0, 7.0], [0.0, 0.0, 1.0]])
    values = torch.tensor([[0.4, 9.0, 9.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert adv[0].tolist() == pytest.approx([0.6, 0.0, 0.0])  # 1 - 0.4, nothing bootstrapped from padding
    assert ret[0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert adv[1].tolist() == pytest.approx([0.95 ** 2, 0.95, 1.0])


@pytest.mark.parametrize("ratio,adv,expected", [(1.5, 1.0, -1.2), (0.5, 1.0, -0.5), (0.5, -1.0, 0.8),
                                                (1.5, -1.0, 1.5), (1.1, 1.0, -1.1)])
def test_clipped_policy_loss(ratio, adv, expected):
    old = torch.zeros(1, 1)
    loss, stats = policy_loss(torch.full((1, 1), math.log(ratio)), old, torch.full((1, 1), adv), torch.ones(1, 1), 0.2)
    assert float(loss) == pytest.approx(expected)
    assert float(stats["clip_fraction"]) == (1.0 if abs(ratio - 1) > 0.2 else 0.0)
    assert float(stats["approx_kl"]) == pytest.approx((ratio - 1) - math.log(ratio), rel=1e-4)


def test_policy_loss_is_a_mean_over_real_tokens_only():
    logp = torch.tensor([[0.0, 5.0]])
    loss, _ = policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1.0, 0.0]]), 0.2)
    assert float(loss) == pytest.approx(-1.0)


def test_clipped_value_loss():
    ones = torch.ones(1, 1)
    # moved from 0 to 1 but clipped to 0.2: the clipped error (0.8^2) is the larger one
    assert float(value_loss(ones, 0 * ones, ones, ones, 0.2)) == pytest.approx(0.5 * 0.64)
    # inside the clip range both terms agree
    assert float(value_loss(0.1 * ones, 0 * ones, ones, ones, 0.2)) == pytest.approx(0.5 * 0.81)
    # a move towards the return that is clipped never helps: max of the two errors
    assert float(value_loss(2 * ones, 1.5 * ones, 3 * ones, ones, 0.2)) == pytest.approx(0.5 * 1.3 ** 2)


def test_whiten_and_kl_estimators():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    assert float(masked_mean(w, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(masked_mean(w ** 2, mask)) == pytest.approx(1.0, abs=1e-4)
    assert float(w[0, 3]) == 0.0
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0])
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([1.0, -1.0])
    k3 = kl_estimate(logp, ref, "k3")
    assert k3.tolist() == pytest.approx([math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1])
    assert (k3 >= 0).all()
