"""Collection policies: determinism under a seed, bounds, exploration breadth, contact, coverage report."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.policies import coverage_report, make_policy


def _actions(env_id: str, name: str, seed: int, steps: int = 15) -> np.ndarray:
    env = envs.make_env(env_id, render_goal=False)
    obs, _ = env.reset(seed=seed)
    pol = make_policy(name, env, seed)
    pol.reset()
    out = []
    for _ in range(steps):
        a = pol(obs)
        out.append(a)
        obs, *_ = env.step(a)
    return np.stack(out)


@pytest.mark.parametrize("name", ["random", "explore", "explore-gripper", "scripted"])
def test_policy_deterministic_and_in_bounds(name):
    a, b = _actions("ArmPush-v0", name, 3), _actions("ArmPush-v0", name, 3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (15, 4)
    assert np.all(np.abs(a) <= 1.0)
    if name != "scripted":
        assert not np.array_equal(a, _actions("ArmPush-v0", name, 4))


def test_explore_is_temporally_correlated_unlike_random():
    def lag1(a):
        x = a[:, :3]
        return np.mean([np.corrcoef(x[:-1, i], x[1:, i])[0, 1] for i in range(3)])

    explore = _actions("ArmReach-v0", "explore", 0, steps=40)
    random = _actions("ArmReach-v0", "random", 0, steps=40)
    assert lag1(explore) > 0.4 > lag1(random)


def test_unknown_policy_lists_choices():
    env = envs.make_env("ArmReach-v0", render_goal=False)
    with pytest.raises(ValueError, match="random, explore, explore-gripper, scripted"):
        make_policy("greedy", env, 0)


def test_explore_gripper_pushes_with_the_hand_anywhere_between_open_and_closed():
    flip = _actions("ArmPush-v0", "explore", 0, steps=300)[:, 3]
    free = _actions("ArmPush-v0", "explore-gripper", 0, steps=300)[:, 3]
    assert np.mean(np.abs(flip) == 1.0) > 0.95  # explore: the command sits at a bound
    assert np.mean(np.abs(free) < 0.5) > 0.3 and free.min() < -0.8 and free.max() > 0.8
    env = envs.make_env("ArmPush-v0", render_goal=False)
    policy = make_policy("explore-gripper", env, 0)
    policy.scripted, policy.steps_left, policy.gripper_per_step, policy.gripper = True, 10, False, -0.3
    obs, _ = env.reset(seed=0)
    assert policy(obs)[3] == np.float32(-0.3)  # the expert's push with its hand half open
    with pytest.raises(ValueError, match="not our arm"):
        make_policy("explore-gripper", envs.make_env("gym:Reacher-v5"), 0)


def test_coverage_report_explore_moves_block_and_covers_workspace():
    rep = coverage_report("ArmPickPlace-v0", "explore", episodes=3, steps=60, seed=0)
    assert rep["workspace_coverage"] > 0.1
    assert rep["block_moved_step_fraction"] > 0.02
    still = coverage_report("ArmPickPlace-v0", "random", episodes=1, steps=5, seed=0)
    assert still["workspace_coverage"] < rep["workspace_coverage"]


def test_coverage_report_validates():
    with pytest.raises(ValueError, match="episodes and cells must be >= 1"):
        coverage_report("ArmReach-v0", episodes=0)


@pytest.mark.parametrize("name", ["random", "explore"])
def test_policies_act_in_the_action_space_of_third_party_envs(name):
    env = envs.make_env("gym:Reacher-v5")
    policy = make_policy(name, env, seed=3)
    obs, _ = env.reset(seed=3)
    actions = []
    for _ in range(12):
        a = policy(obs)
        assert a.shape == env.action_space.shape and env.action_space.contains(a)
        actions.append(a)
        obs, *_ = env.step(a)
    if name == "explore":  # temporally correlated: consecutive actions closer than independent draws
        steps = np.linalg.norm(np.diff(actions, axis=0), axis=1).mean()
        assert steps < 0.8
    env.close()
