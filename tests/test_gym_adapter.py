"""gym:<id> adapter on real gymnasium MuJoCo envs (Reacher-v5, Pusher-v5): API, determinism, snapshots."""

from __future__ import annotations

import gc
import os
import warnings

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from envs.gym_adapter import GymAdapterEnv, make_gym_env  # noqa: E402

IDS = ["gym:Reacher-v5", "gym:Pusher-v5"]


@pytest.fixture(scope="module", params=IDS)
def env(request):
    e = make_gym_env(request.param)
    yield e
    e.close()


def _actions(env: GymAdapterEnv, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, *env.action_space.shape)).astype(np.float32)


def test_check_env_passes(env):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # -inf/inf proprio bounds and "no spec" are warnings, not failures
        check_env(env, skip_render_check=False)


def test_interface_members(env):
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert (
        obs["proprio"].dtype == np.float32 and obs["proprio"].shape == env.observation_space["proprio"].shape
    )
    assert np.array_equal(obs["image"], env.render())
    assert env.unwrapped is env
    assert env.action_space.low.min() == -1 and env.action_space.high.max() == 1
    assert env.action_spec["units"] == "native" and env.action_spec["frame"] == "env"
    assert env.control_hz == pytest.approx(1.0 / env.inner.dt)
    for key in ("goal_image", "goal_proprio", "goal_task_state", "distance", "is_success"):
        assert key in info
    assert info["goal_image"].shape == (64, 64, 3)
    assert info["goal_proprio"].shape == obs["proprio"].shape
    assert env.task.name.startswith("gym:")
    with pytest.raises(NotImplementedError, match="no scripted expert"):
        env.scripted_action()


def test_defaults_per_env():
    reacher = make_gym_env("gym:Reacher-v5")
    pusher = make_gym_env("gym:Pusher-v5")
    try:
        assert reacher._target_name == "fingertip" and reacher.goal_mode == "actions"
        assert pusher._target_name == "object" and pusher.goal_mode == "relocate"
        assert reacher.task.step_budget == 50 and pusher.task.step_budget == 100  # max_episode_steps
        assert reacher.task.success_threshold == 0.05 and reacher.task.min_start_distance == 0.1
        assert pusher.action_spec["low"] == [-2.0] * 7 and pusher.action_spec["high"] == [2.0] * 7
    finally:
        reacher.close()
        pusher.close()


def test_same_seed_same_episode():
    name = "gym:Reacher-v5"
    a, b = make_gym_env(name), make_gym_env(name)
    try:
        oa, ia = a.reset(seed=7)
        ob, ib = b.reset(seed=7)
        assert np.array_equal(oa["image"], ob["image"]) and np.array_equal(ia["goal_image"], ib["goal_image"])
        assert np.array_equal(ia["goal_task_state"], ib["goal_task_state"])
        for act in _actions(a, 10, seed=1):
            sa, sb = a.step(act), b.step(act)
            assert np.array_equal(sa[0]["image"], sb[0]["image"])
            assert np.array_equal(sa[0]["proprio"], sb[0]["proprio"])
            assert sa[4]["distance"] == sb[4]["distance"]
        _, ic = a.reset(seed=8)
        assert not np.array_equal(ic["goal_task_state"], ia["goal_task_state"])
    finally:
        a.close()
        b.close()


def test_snapshot_restore_same_image_and_future(env):
    env.reset(seed=3)
    acts = _actions(env, 8, seed=2)
    for act in acts[:3]:
        env.step(act)
    snap, image = env.get_snapshot(), env.render()
    assert snap.dtype == np.float64 and snap.ndim == 1
    later = [env.step(act)[0] for act in acts[3:]]
    assert not np.array_equal(env.render(), image)
    env.set_snapshot(snap)
    assert np.array_equal(env.render(), image)
    replay = [env.step(act)[0] for act in acts[3:]]
    for x, y in zip(later, replay, strict=True):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["proprio"], y["proprio"])


def test_snapshot_in_fresh_env_same_image(env):
    env.reset(seed=4)
    for act in _actions(env, 4, seed=3):
        env.step(act)
    snap, image = env.get_snapshot(), env.render()
    fresh = make_gym_env(env.task.name)
    try:
        fresh.set_snapshot(snap)
        assert np.array_equal(fresh.render(), image)
        with pytest.raises(ValueError, match="snapshot must be float64"):
            fresh.set_snapshot(snap[:-1])
    finally:
        fresh.close()


def test_goal_sampling(env):
    goals = []
    for seed in range(4):
        obs, info = env.reset(seed=seed)
        # the start state is restored after making the goal
        assert np.array_equal(obs["image"], env.render())
        assert info["distance"] == pytest.approx(env.distance())
        assert info["distance"] >= env.task.min_start_distance
        assert not info["is_success"]
        assert not np.array_equal(info["goal_image"], obs["image"])
        # the goal image shows the goal state: restoring nothing else, the task body sits at the goal
        assert np.linalg.norm(info["goal_task_state"] - env.task_state()) == pytest.approx(info["distance"])
        goals.append(info["goal_task_state"])
    assert len({tuple(np.round(g, 6)) for g in goals}) == len(goals)


def test_success_when_at_goal():
    env = make_gym_env(
        "gym:Reacher-v5",
        goal_body="target",
        goal_mode="relocate",
        goal_relocate_range=0.05,
        min_start_distance=0.06,
        success_threshold=0.01,
    )
    try:
        _, info = env.reset(seed=0)
        assert env._target_name == "target"
        env.data.qpos[env._relocate_qpos] += info["goal_task_state"][:2] - env.task_state()[:2]
        env.set_snapshot(env.get_snapshot())
        assert env.distance() == pytest.approx(0.0, abs=1e-9)
        assert env._info()["is_success"]
    finally:
        env.close()


def test_action_mapping():
    env = make_gym_env("gym:Pusher-v5")
    try:
        low, high = np.array(env.action_spec["low"]), np.array(env.action_spec["high"])
        assert np.allclose(env.denormalize_action(-np.ones(7)), low)
        assert np.allclose(env.denormalize_action(np.ones(7)), high)
        assert np.allclose(env.denormalize_action(np.zeros(7)), (low + high) / 2)
        a = _actions(env, 1, seed=5)[0]
        assert np.allclose(env.normalize_action(env.denormalize_action(a)), a, atol=1e-6)
        assert np.allclose(env.denormalize_action(np.full(7, 3.0)), high)  # clipped
        env.reset(seed=0)
        env.step(a)
        assert np.allclose(env.data.ctrl, env.denormalize_action(a), atol=1e-6)  # native torque applied
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(3))
        with pytest.raises(ValueError, match="finite"):
            env.step(np.full(7, np.nan))
    finally:
        env.close()


def test_truncates_at_step_budget():
    env = make_gym_env("gym:Reacher-v5", step_budget=3, image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["image"].shape == (32, 32, 3)
        flags = [env.step(np.zeros(2))[2:4] for _ in range(3)]
        assert flags == [(False, False), (False, False), (False, True)]
    finally:
        env.close()


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ("Reacher-v5", {}, "gym:<id>"),
        ("gym:", {}, "gym:<id>"),
        ("gym:NoSuchEnv-v0", {}, r"NameNotFound.*gym:<id>"),
        ("gym:no_such_module_xyz:Foo-v0", {}, r"No module named 'no_such_module_xyz'.*gym:<module>:<id>"),
        ("gym:CartPole-v1", {}, "width"),
        ("gym:Reacher-v5", {"frobnicate": 1}, "frobnicate"),
        ("gym:Reacher-v5", {"width": 10}, "image_size"),
        ("gym:Reacher-v5", {"goal_body": "nope"}, r"no body named 'nope'.*fingertip"),
        ("gym:Reacher-v5", {"goal_body": "target", "goal_site": "x"}, "not both"),
        ("gym:Reacher-v5", {"goal_mode": "relocate"}, "slide joints"),
        ("gym:Reacher-v5", {"goal_mode": "teleport"}, "goal_mode must be one of"),
        ("gym:Reacher-v5", {"success_threshold": -1}, "success_threshold"),
        ("gym:Reacher-v5", {"min_start_distance": 0.01}, "min_start_distance"),
        ("gym:Reacher-v5", {"image_size": 3}, "image_size"),
        ("gym:Reacher-v5", {"step_budget": 0}, "step_budget"),
        ("gym:Reacher-v5", {"shadows": "no"}, "shadows"),
    ],
)
def test_bad_input_clear_errors(spec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_gym_env(spec, **kwargs)


def test_step_before_reset_is_an_error():
    env = make_gym_env("gym:Reacher-v5")
    try:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(2))
    finally:
        env.close()


def test_shadows_off_renders_nearly_the_same_image():
    with_shadows, without = make_gym_env("gym:Pusher-v5"), make_gym_env("gym:Pusher-v5", shadows=False)
    try:
        a, _ = with_shadows.reset(seed=1)
        b, _ = without.reset(seed=1)
        assert without.model.vis.quality.shadowsize == 0
        diff = np.abs(a["image"].astype(np.int16) - b["image"].astype(np.int16))
        assert 0 < diff.mean() < 3.0
    finally:
        with_shadows.close()
        without.close()


def _uniform_policy(name: str, env, seed: int):
    """Stand-in for envs.policies.make_policy (the policy is not under test): seeded uniform actions."""
    rng = np.random.default_rng(seed)

    class Uniform:
        def reset(self, info=None) -> None:
            pass

        def __call__(self, obs) -> np.ndarray:
            return rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)

    return Uniform()


@pytest.mark.parametrize("spec", IDS)
def test_collect_store_round_trip(tmp_path, spec):
    from planner.collect import CollectConfig, collect
    from planner.preprocess import Preprocessing, preprocess_image
    from planner.store import TrajectoryStore

    # Known issue (docs/ENVIRONMENTS.md): when unclosed MuJoCo envs of earlier tests are garbage-collected
    # in the middle of this one, gymnasium's renderer can draw black frames; collect them first.
    gc.collect()
    cfg = CollectConfig(env=spec, episodes=2, out=tmp_path / "store", steps=4, policy="random")
    report = collect(cfg, make_policy=_uniform_policy, progress=False)
    assert report.total == 2
    store = TrajectoryStore.open(tmp_path / "store")
    rule = Preprocessing.from_dict(store.meta.preprocessing)
    fresh = make_gym_env(spec)
    try:
        assert store.meta.action_spec["low"] == fresh.action_spec["low"]
        for episode in store.iter_episodes():
            assert episode.snapshots.shape == (5, fresh.get_snapshot().size)
            for t in (0, 4):
                fresh.set_snapshot(episode.snapshots[t])
                assert np.array_equal(preprocess_image(fresh.render(), rule), episode.images[t])
                assert np.allclose(fresh.task_state(), episode.task_state[t], atol=1e-6)
            # the stored goal is reproducible from the episode seed
            _, info = fresh.reset(seed=episode.seed)
            assert np.array_equal(preprocess_image(info["goal_image"], rule), episode.goal_image)
    finally:
        fresh.close()
