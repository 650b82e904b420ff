"""`planner collect --policy planner`: the MPC planner collects its own episodes (planner.planner_policy)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.checkpoint import checkpoint_name
from planner.collect import CollectConfig, CollectError, collect
from planner.planner_policy import PlannerPolicySpec, make_planner_policy
from planner.store import TrajectoryStore
from tests.tiny_checkpoint import save_tiny_reach_model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_tiny_reach_model(tmp_path_factory.mktemp("ckpt") / "tiny", goal_energy_threshold=None)


def planner_cfg(out, ckpt, **kw) -> CollectConfig:
    base = dict(env="ArmReach-v0", env_kwargs='{"image_size": 32}', episodes=2, out=out, steps=4,
                image_size=32, policy="planner", checkpoint=ckpt, planner_noise=0.1)
    return CollectConfig(**{**base, **kw})


def test_planner_collects_deterministic_labelled_episodes(tiny_ckpt, tmp_path):
    collect(planner_cfg(tmp_path / "a", tiny_ckpt), progress=False)
    collect(planner_cfg(tmp_path / "b", tiny_ckpt), progress=False)
    a, b = TrajectoryStore.open(tmp_path / "a"), TrajectoryStore.open(tmp_path / "b")
    assert a.meta.policy == f"planner ({checkpoint_name(tiny_ckpt)}, noise 0.1)"
    assert len(a) == 2
    for i in a.indices():
        ea, eb = a.read(i), b.read(i)
        assert ea.actions.shape == (4, 4) and ea.images.shape == (5, 32, 32, 3)
        np.testing.assert_array_equal(ea.actions, eb.actions)  # seeded: same episodes again
        assert np.all(np.abs(ea.actions) <= 1.0)
    # a resumed collection must plan with the same checkpoint and noise
    with pytest.raises(CollectError, match="policy"):
        collect(planner_cfg(tmp_path / "a", tiny_ckpt, planner_noise=0.2, episodes=3, resume=True),
                progress=False)


def test_without_noise_the_policy_executes_the_planners_first_action(tiny_ckpt):
    import envs
    from planner.mpc import pad_history
    from planner.preprocess import preprocess_image

    env = envs.make_env("ArmReach-v0", image_size=32)
    obs, info = env.reset(seed=3)
    pi = make_planner_policy(PlannerPolicySpec(tiny_ckpt, noise=0.0), "planner", env, seed=5)
    pi.reset(info)
    action = pi(obs)
    agent, rule = pi.agent, pi.rule
    zero = agent.action_spec.to_native(np.zeros(4, np.float32))
    imgs, prev = pad_history([preprocess_image(obs["image"], rule)], [], 2, zero)
    goal = agent.encode_goal(preprocess_image(info["goal_image"], rule))[None]
    plan = agent.plan(imgs[None], prev[None], goal, None, seed=5)
    np.testing.assert_allclose(action, np.clip(plan.actions_normalized[0][0], -1, 1), atol=1e-6)
    with pytest.raises(ValueError, match="goal image"):
        pi.reset({})
    env.close()


def test_the_policy_holds_each_stages_action_dims(tiny_ckpt):
    """Reset info `stage_fixed_dims` (here the grip held from the first stage on) reaches the planner:
    without noise every executed gripper command is closed; with nothing held it is searched."""
    import envs

    env = envs.make_env("ArmReach-v0", image_size=32)
    obs, info = env.reset(seed=3)
    pi = make_planner_policy(PlannerPolicySpec(tiny_ckpt, noise=0.0), "planner", env, seed=5)
    pi.reset({**info, "stage_fixed_dims": [{3: 1.0}]})
    assert pi(obs)[3] == 1.0
    pi.reset(info)
    assert pi(obs)[3] != 1.0
    env.close()


def test_planner_policy_requests_are_checked(tiny_ckpt, tmp_path):
    with pytest.raises(CollectError, match="needs --checkpoint"):
        collect(planner_cfg(tmp_path / "x", None), progress=False)
    with pytest.raises(CollectError, match="--policy planner only"):
        collect(planner_cfg(tmp_path / "x", tiny_ckpt, policy="explore"), progress=False)
    with pytest.raises(CollectError, match="--planner-noise"):
        collect(planner_cfg(tmp_path / "x", tiny_ckpt, planner_noise=-0.1), progress=False)
    with pytest.raises(CollectError, match="--checkpoint"):
        collect(planner_cfg(tmp_path / "x", tmp_path / "missing"), progress=False)
