"""RL arithmetic on hand-computed cases, and how a rollout's turns become training sequences."""

from __future__ import annotations

import math

import pytest
import torch

from dr_train.chat import IGNORE

# the same import list as dr_train.rl.algorithms, deliberately: each function is tested by its own name
from dr_train.rl.math import (
    clipped_policy_loss,
    clipped_value_loss,
    flat_groups,
    gae,
    group_advantages,
    kl_k3,
    ppo_token_rewards,
)
from dr_train.rl.policy import Turn
from dr_train.rl.rollouts import sequences_of


def test_grpo_normalizes_rewards_within_each_group():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5]), 4)
    # group 1: mean 0.5, population std 0.5; group 2: all equal; group 3: mean 0.125, std sqrt(0.046875)
    std3 = math.sqrt(((0.125**2) * 3 + 0.375**2) / 4)
    expected = [1, -1, -1, 1, 0, 0, 0, 0, -0.125 / std3, -0.125 / std3, -0.125 / std3, 0.375 / std3]
    assert adv.tolist() == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(4), 3)


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    adv, returns = gae(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.2, 0.5, 0.9]))
    assert adv.tolist() == pytest.approx([0.8, 0.5, 0.1])
    assert returns.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_gae_discounts_by_gamma_and_lambda():
    rewards, values = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, 1.0, 1.5])
    gamma, lam = 0.5, 0.5
    # deltas: d2 = 2 - 1.5 = 0.5; d1 = 0 + 0.5·1.5 - 1 = -0.25; d0 = 1 + 0.5·1 - 0.5 = 1
    # A2 = 0.5; A1 = -0.25 + 0.25·0.5 = -0.125; A0 = 1 + 0.25·(-0.125) = 0.96875
    adv, returns = gae(rewards, values, gamma, lam)
    assert adv.tolist() == pytest.approx([0.96875, -0.125, 0.5])
    assert returns.tolist() == pytest.approx([1.46875, 0.875, 2.0])


def test_ppo_rewards_carry_the_kl_penalty_on_every_token_and_the_outcome_on_the_last():
    rewards = ppo_token_rewards(1.0, torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]), kl_coef=0.1)
    assert rewards.tolist() == pytest.approx([-0.05, 0.1 + 1.0])


def test_the_clipped_policy_loss_takes_the_pessimistic_side():
    old = torch.zeros(4)
    logprobs = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, clipped = clipped_policy_loss(logprobs, old, adv, clip=0.2)
    # ratio 1.5, A=1 → min(1.5, 1.2) = 1.2; ratio .5, A=-1 → min(-.5, -.8) = -.8;
    # ratio 1.5, A=-1 → min(-1.5, -1.2) = -1.5 (unclipped); ratio .5, A=1 → min(.5, .8) = .5
    assert loss.tolist() == pytest.approx([-1.2, 0.8, 1.5, -0.5])
    assert clipped.tolist() == [True, True, False, False]


def test_the_k3_kl_estimate():
    kl = kl_k3(torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -2.0, -1.0]))
    assert kl.tolist() == pytest.approx([math.exp(-1) + 1 - 1, 0.0, math.exp(2) - 2 - 1])


def test_the_clipped_value_loss():
    loss = clipped_value_loss(
        torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), 0.2
    )
    # V moved 1.0 but the clipped value stays at 0.2: max(0, 0.64)/2; unmoved: max(1, 1)/2
    assert loss.tolist() == pytest.approx([0.32, 0.5])


def test_turns_that_continue_each_other_become_one_sequence_with_only_samples_as_targets():
    turns = [Turn([1, 2, 3], [10, 11]), Turn([1, 2, 3, 10, 11, 4, 5], [12, 13])]
    [seq] = sequences_of(turns, rollout=0)
    assert seq.input_ids == [1, 2, 3, 10, 11, 4, 5, 12, 13]
    # the prediction at j is of token j + 1; the tool result (4, 5) is context
    assert seq.targets == [IGNORE, IGNORE, 10, 11, IGNORE, IGNORE, 12, 13, IGNORE]


def test_a_rewritten_history_starts_a_new_sequence():
    turns = [Turn([1, 2], [10]), Turn([1, 9, 10, 4], [12])]
    first, second = sequences_of(turns, rollout=3)
    assert (first.input_ids, first.targets) == ([1, 2, 10], [IGNORE, 10, IGNORE])
    assert (second.input_ids, second.targets) == ([1, 9, 10, 4, 12], [IGNORE, IGNORE, IGNORE, 12, IGNORE])
    assert first.rollout == second.rollout == 3


def test_a_group_whose_rewards_are_all_equal_has_exactly_zero_advantage():
    assert group_advantages(torch.full((7,), 0.7), 7).tolist() == [0.0] * 7
    # every group of sizes 2-16 with equal rewards k/n: float32 means off by an ulp made 757 of them
    # non-zero before
    for n in range(2, 17):
        for k in range(n + 1):
            assert not group_advantages(torch.full((n,), k / n), n).any(), (n, k)
    mixed = group_advantages(torch.tensor([0.7, 0.7, 0.7, 0.2, 0.7, 0.7]), 3)
    assert mixed[:3].tolist() == [0.0, 0.0, 0.0] and mixed[3:].abs().sum() > 1


def test_flat_groups_are_those_whose_samples_all_got_one_reward():
    rewards = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.0]
    assert flat_groups(rewards, 3) == {0, 1}
    # exactly the groups GRPO gives zero advantage everywhere
    advantages = group_advantages(torch.tensor(rewards), 3).reshape(3, 3)
    assert [bool((advantages[i] == 0).all()) for i in range(3)] == [True, True, False]
    assert flat_groups([1.0, 0.0], 2) == set()


def test_a_rollout_without_a_reward_leaves_its_group_and_the_rest_compare_among_themselves():
    nan = float("nan")
    # group 0: one of four dropped; the other three compare as a group of three would
    # group 1: only one rewarded sample is left, with nothing to compare it to
    rewards = torch.tensor([1.0, nan, 0.0, 0.0, nan, 1.0, nan, nan])
    advantages = group_advantages(rewards, 4)
    alone = group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3)
    assert torch.allclose(advantages[[0, 2, 3]], alone)
    assert advantages[1] == 0 and not advantages[4:].any()
    assert not torch.isnan(advantages).any()
    assert flat_groups([1.0, None, 0.0, 0.0, None, 1.0, None, None], 4) == {1}
    assert flat_groups([0.5, None, 0.5, None], 2) == {0, 1}  # one reward left in each
    assert flat_groups([0.5, None, 0.5, 0.5], 4) == {0}  # the rewarded ones agree
