"""Our arm tasks: gymnasium conformity, determinism, snapshots, scripted experts, input validation."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from tests.block_scene import block_scene, red_centroid, red_mask, render_block_at

IDS = ["ArmReach-v0", "ArmPush-v0", "ArmPickPlace-v0"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rollout(env_id: str, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [steps+1,H,W,3], proprio [steps+1,P] and the final snapshot for seeded random actions."""
    env = envs.make_env(env_id)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    images, proprio = [obs["image"]], [obs["proprio"]]
    for _ in range(steps):
        obs, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        images.append(obs["image"])
        proprio.append(obs["proprio"])
    return np.stack(images), np.stack(proprio), env.unwrapped.get_snapshot()


@pytest.mark.parametrize("env_id", IDS)
def test_check_env(env_id):
    check_env(envs.make_env(env_id), skip_render_check=False)


@pytest.mark.parametrize("env_id", IDS)
def test_reset_info_and_spaces(env_id):
    env = envs.make_env(env_id)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["goal_image"].shape == (64, 64, 3) and info["goal_image"].dtype == np.uint8
    assert info["goal_proprio"].shape == obs["proprio"].shape
    assert info["distance"] >= env.task.min_start_distance
    assert not info["is_success"]
    assert not np.array_equal(info["goal_image"], obs["image"])
    assert env.task.name == env_id and env.control_hz == pytest.approx(10.0)
    assert len(env.action_spec["low"]) == 4 == len(env.action_spec["high"])
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert set(info) >= {"distance", "is_success", "task_state"} and not terminated and not truncated
    assert reward == pytest.approx(-info["distance"])


@pytest.mark.parametrize("env_id", IDS)
def test_determinism_same_process(env_id):
    a, b = _rollout(env_id, 7, 5), _rollout(env_id, 7, 5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = _rollout(env_id, 8, 5)
    assert not np.array_equal(a[1], c[1])


def test_determinism_across_processes():
    code = (
        "import numpy as np, sys; sys.path.insert(0, '.'); from tests.test_envs import _rollout; "
        "imgs, prop, snap = _rollout('ArmReach-v0', 3, 4); "
        "sys.stdout.write(str(int(imgs.astype(np.int64).sum())) + ' ' + prop.tobytes().hex()[:64] + ' ' "
        "+ snap.tobytes().hex())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    imgs, prop, snap = _rollout("ArmReach-v0", 3, 4)
    expected = f"{int(imgs.astype(np.int64).sum())} {prop.tobytes().hex()[:64]} {snap.tobytes().hex()}"
    assert out.stdout == expected


@pytest.mark.parametrize("env_id", IDS)
def test_snapshot_restore_reproduces_image_and_future(env_id):
    env = envs.make_env(env_id)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(3):
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    snap, image = env.get_snapshot(), env.render()
    actions = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
    first = [env.step(a)[0]["image"] for a in actions]
    env.set_snapshot(snap)
    np.testing.assert_array_equal(env.render(), image)
    second = [env.step(a)[0]["image"] for a in actions]
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="snapshot must have shape"):
        env.set_snapshot(snap[:-1])


@pytest.mark.parametrize("env_id", IDS)
def test_scripted_reaches_goal(env_id):
    env = envs.make_env(env_id, render_goal=False)
    for seed in range(3):
        env.reset(seed=100 + seed)
        for _ in range(env.task.step_budget):
            *_, info = env.step(env.scripted_action())
            if info["is_success"]:
                break
        assert info["is_success"], f"seed {100 + seed}: final distance {info['distance']:.3f} m"


@pytest.mark.parametrize("env_id", IDS)
def test_random_actions_rarely_succeed(env_id):
    env = envs.make_env(env_id, render_goal=False)
    successes = 0
    for seed in range(6):
        env.reset(seed=200 + seed)
        rng = np.random.default_rng(seed)
        for _ in range(env.task.step_budget):
            *_, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        successes += info["is_success"]
    assert successes <= 1


def test_unknown_id_lists_known_ones():
    with pytest.raises(ValueError, match="ArmReach-v0.*ArmPush-v0.*ArmPickPlace-v0"):
        envs.make_env("ArmDance-v0")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=3), "image_size must be between"),
        (dict(image_size="64"), "image_size must be an int"),
        (dict(camera="top"), "camera must be one of"),
        (dict(camera="table+top"), "camera must be one of"),
        (dict(camera="table+table"), "distinct ones"),
        (dict(camera="table+workspace", image_size=63), "divisible by 2"),
        (dict(camera="table+workspace", view_layout="stacked"), "view_layout must be one of"),
        (dict(camera="table+wrist", camera_offset=(0.01, 0, 0)), "apply to"),
        (dict(render_goal="yes"), "render_goal must be True or False"),
        (dict(imagesize=64), "unknown kwargs.*accepted"),
        (dict(camera_offset=(0, 0)), "camera_offset must be 3"),
        (dict(camera_turn_deg=45), "camera_turn_deg must be"),
        (dict(camera="wrist", camera_offset=(0.01, 0, 0)), "apply to"),
        (dict(block_rgba=(0, 0, 1, 1)), "has no block"),
        (dict(goal_region="far"), "goal_region must be one of"),
    ],
)
def test_bad_kwargs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        envs.make_env("ArmReach-v0", **kwargs)


@pytest.mark.parametrize(
    "action, match",
    [(np.zeros(3), r"shape \(4,\)"), (np.zeros((1, 4)), r"shape \(4,\)"), ([0, np.nan, 0, 0], "finite")],
)
def test_bad_actions(action, match):
    env = envs.make_env("ArmReach-v0", render_goal=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_wrist_camera_and_size():
    env = envs.make_env("ArmReach-v0", camera="wrist", image_size=32)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (32, 32, 3) == info["goal_image"].shape
    assert obs["image"].std() > 5  # not a blank frame


def test_block_tasks_default_to_the_closer_table_camera():
    """The table view shows the 5 cm block over more pixels than the workspace view (it is what the block
    models are trained on); reach keeps the workspace view its checkpoint was trained with."""
    assert envs.make_env("ArmReach-v0").unwrapped.camera == "workspace"
    red = {}
    for camera in ("table", "workspace"):
        env = envs.make_env("ArmPush-v0", camera=camera)
        assert env.unwrapped.camera == camera
        obs, _ = env.reset(seed=3)
        red[camera] = int(red_mask(obs["image"]).sum())
    assert envs.make_env("ArmPush-v0").unwrapped.camera == "table"
    assert red["table"] >= 1.5 * red["workspace"] > 0


def test_table_high_camera_mistakes_a_lift_for_a_smaller_move_than_the_table_camera():
    """A block lifted 10 cm lands, in one image, where some table position would: a read-out linear in the
    image (the block probe) takes the lift for a horizontal move. From the steeper `table_high` view that
    phantom move is under half as long as from the `table` view (measured in units of a real 5 cm move)."""
    phantom = {}
    for camera in ("table", "table_high"):
        env = block_scene(camera)
        at = [red_centroid(render_block_at(env, xyz))
              for xyz in ((0.40, -0.10, 0.025), (0.40, -0.05, 0.025), (0.40, -0.10, 0.125))]
        move, lift = at[1] - at[0], at[2] - at[0]
        phantom[camera] = float(np.linalg.norm(lift) / np.linalg.norm(move))
    assert phantom["table_high"] < 0.5 * phantom["table"], phantom


def test_side_by_side_camera_is_each_view_squeezed_into_half_the_columns():
    """camera="table+workspace": one square image, the table view's columns averaged in pairs on the left,
    the workspace view's on the right; goal images alike; offsets move both views."""
    both = envs.make_env("ArmPickPlace-v0", camera="table+workspace")
    obs, info = both.reset(seed=5)
    assert both.unwrapped.views == ("table", "workspace")
    assert obs["image"].shape == (64, 64, 3) == info["goal_image"].shape
    for half, camera in ((slice(0, 32), "table"), (slice(32, 64), "workspace")):
        single, _ = envs.make_env("ArmPickPlace-v0", camera=camera).reset(seed=5)
        squeezed = single["image"].reshape(64, 32, 2, 3).astype(float).mean(axis=2)
        assert np.abs(obs["image"][:, half].astype(float) - squeezed).max() <= 0.5
    moved_env = envs.make_env("ArmPickPlace-v0", camera="table+workspace", camera_offset=(0.02, 0, 0))
    moved, _ = moved_env.reset(seed=5)
    for half in (slice(0, 32), slice(32, 64)):
        assert not np.array_equal(moved["image"][:, half], obs["image"][:, half])


def test_wide_layout_puts_whole_views_side_by_side():
    """view_layout="wide": an S x 2S image, each half the camera's own whole render; goal images alike; a
    store made with it records the two views in its preprocessing rule."""
    from envs.arm import image_views

    kwargs = dict(camera="table+workspace", view_layout="wide", image_size=32)
    wide = envs.make_env("ArmPickPlace-v0", **kwargs)
    obs, info = wide.reset(seed=5)
    assert obs["image"].shape == (32, 64, 3) == info["goal_image"].shape
    assert wide.observation_space["image"].shape == (32, 64, 3)
    for half, camera in ((slice(0, 32), "table"), (slice(32, 64), "workspace")):
        single, single_info = envs.make_env("ArmPickPlace-v0", camera=camera, image_size=32).reset(seed=5)
        np.testing.assert_array_equal(obs["image"][:, half], single["image"])
        np.testing.assert_array_equal(info["goal_image"][:, half], single_info["goal_image"])
    assert image_views(kwargs) == 2
    assert image_views({"camera": "table+workspace"}) == 1  # squeezed into one square
    assert image_views({"camera": "table", "view_layout": "wide"}) == 1
    assert image_views({}) == 1
    # an odd side is fine: nothing is squeezed
    odd, _ = envs.make_env("ArmPickPlace-v0", **{**kwargs, "image_size": 33}).reset(seed=0)
    assert odd["image"].shape == (33, 66, 3)


def test_contact_sheet_rows_show_the_chosen_camera():
    from envs.contact_sheet import GAP, sheet

    grid = sheet("ArmPickPlace-v0", 1, 32, camera="table+workspace")
    assert grid.shape == (32 + GAP, 3 * (32 + GAP), 3)
    start, _ = envs.make_env("ArmPickPlace-v0", image_size=32, camera="table+workspace").reset(seed=0)
    np.testing.assert_array_equal(grid[:32, :32], start["image"])
    wide = sheet("ArmPickPlace-v0", 1, 32, camera="table+workspace", view_layout="wide")
    assert wide.shape == (32 + GAP, 2 * (64 + GAP) + 32 + GAP, 3)
    start, info = envs.make_env("ArmPickPlace-v0", image_size=32, camera="table+workspace",
                                view_layout="wide").reset(seed=0)
    np.testing.assert_array_equal(wide[:32, :64], start["image"])
    np.testing.assert_array_equal(wide[:32, 64 + GAP : 128 + GAP], info["goal_image"])


def test_image_camera_names_the_view_a_store_was_rendered_from():
    assert envs.image_camera("ArmPickPlace-v0", {}) == "table"
    assert envs.image_camera("ArmReach-v0", {"image_size": 32}) == "workspace"
    assert envs.image_camera("ArmPickPlace-v0", {"camera": "table+workspace"}) == "table+workspace"
    assert envs.image_camera("gym:Pusher-v5", {}) is None


def test_pick_place_subgoals_pregrasp_grasp_lift_then_goal():
    env = envs.make_env("ArmPickPlace-v0")
    obs, info = env.reset(seed=4)
    assert len(info["subgoal_images"]) == 3
    assert all(im.shape == obs["image"].shape and im.dtype == np.uint8 for im in info["subgoal_images"])
    u = env.unwrapped
    block = u.task_state().copy()
    pre, grasp, lift = u._subgoal_snapshots()
    u.set_snapshot(pre)
    assert not u.holding() and u.ee_position()[2] > block[2] + 0.04 and u.gripper_opening() > 0.07
    u.set_snapshot(grasp)
    assert u.holding()
    np.testing.assert_allclose(u.task_state(), block, atol=1e-6)
    u.set_snapshot(lift)
    assert u.holding() and u.task_state()[2] == pytest.approx(u.goal_task_state[2])
    # sub-goals draw nothing from the episode rng and leave the start state as it was
    again, _ = envs.make_env("ArmPickPlace-v0").reset(seed=4)
    np.testing.assert_array_equal(again["image"], obs["image"])
    assert envs.make_env("ArmReach-v0").reset(seed=0)[1]["subgoal_images"] == []


def test_pick_place_holds_the_grip_from_the_lift_on():
    """Reset info `stage_fixed_dims`, one entry per stage (sub-goals, then the goal): pick-and-place holds
    the gripper command closed from the lift on; push and reach hold nothing."""
    from envs.arm import GRIPPER_DIM

    _, info = envs.make_env("ArmPickPlace-v0", render_goal=False).reset(seed=4)
    assert info["stage_fixed_dims"] == [{}, {}, {GRIPPER_DIM: 1.0}, {GRIPPER_DIM: 1.0}]
    assert envs.make_env("ArmPush-v0", render_goal=False).reset(seed=4)[1]["stage_fixed_dims"] == [{}] * 4
    assert envs.make_env("ArmReach-v0", render_goal=False).reset(seed=0)[1]["stage_fixed_dims"] == [{}]


def test_push_subgoals_above_behind_then_halfway():
    from envs.push import PUSH_HEIGHT_M, TRAVEL_HEIGHT_M

    env = envs.make_env("ArmPush-v0")
    obs, info = env.reset(seed=4)
    assert len(info["subgoal_images"]) == 3
    u = env.unwrapped
    block = u.task_state().copy()
    above, behind, half = u._subgoal_snapshots()
    u.set_snapshot(above)
    assert u.ee_position()[2] == pytest.approx(TRAVEL_HEIGHT_M, abs=2e-3)
    np.testing.assert_allclose(u.task_state(), block, atol=1e-6)
    u.set_snapshot(behind)
    assert u.ee_position()[2] == pytest.approx(PUSH_HEIGHT_M, abs=2e-3)
    to_goal = u.goal_task_state[:2] - block[:2]
    assert (u.ee_position()[:2] - block[:2]) @ to_goal < 0  # behind the block, seen from the goal
    u.set_snapshot(half)
    np.testing.assert_allclose(u.task_state()[:2], (block[:2] + u.goal_task_state[:2]) / 2, atol=1e-6)
    # reset info carries each sub-goal's true state; subgoal_distance is 0 there and > 0 at the start
    half_state = (info["subgoal_proprio"][2], info["subgoal_task_states"][2])
    assert u.subgoal_distance(*half_state) == pytest.approx(0, abs=1e-5)
    np.testing.assert_allclose(info["subgoal_task_states"][2], u.task_state(), atol=1e-9)
    u.set_snapshot(above)
    np.testing.assert_allclose(info["subgoal_proprio"][0], u._proprio(), atol=1e-6)
    again, _ = envs.make_env("ArmPush-v0").reset(seed=4)
    np.testing.assert_array_equal(again["image"], obs["image"])


def test_push_subgoal_spacing_places_evenly_spaced_block_subgoals():
    """`subgoal_spacing` replaces the halfway point by n - 1 evenly spaced block sub-goals, n = ceil(push
    / spacing), each with the hand behind the block; the episode itself (start, goal, rng) is unchanged."""
    plain, info0 = envs.make_env("ArmPush-v0", render_goal=False).reset(seed=4)
    env = envs.make_env("ArmPush-v0", render_goal=False, subgoal_spacing=0.04)
    obs, info = env.reset(seed=4)
    np.testing.assert_array_equal(obs["image"], plain["image"])
    np.testing.assert_array_equal(info["goal_task_state"], info0["goal_task_state"])
    start, goal = env.unwrapped.task_state()[:2], info["goal_task_state"][:2]
    n = int(np.ceil(np.linalg.norm(goal - start) / 0.04))
    assert len(info["subgoal_task_states"]) == 2 + (n - 1) and len(info["stage_fixed_dims"]) == n + 2
    for k, state in enumerate(info["subgoal_task_states"][2:], start=1):
        np.testing.assert_allclose(state[:2], start + k / n * (goal - start), atol=1e-6)
        hand = info["subgoal_proprio"][k + 1][:2]
        assert (hand - state[:2]) @ (goal - start) < 0  # the hand behind the block
    steps = np.diff(np.array([s[:2] for s in info["subgoal_task_states"][1:]] + [goal]), axis=0)
    assert np.linalg.norm(steps, axis=1).max() <= 0.04 + 1e-9
    with pytest.raises(ValueError, match="subgoal_spacing must be None or metres"):
        envs.make_env("ArmPush-v0", subgoal_spacing=0.5)
    with pytest.raises(ValueError, match="unknown kwargs"):
        envs.make_env("ArmReach-v0", subgoal_spacing=0.05)


def test_generalization_kwargs_shifted_reach_goals_and_block_colour():
    from envs.reach import REACH_HIGH, REACH_LOW

    env = envs.make_env("ArmReach-v0", goal_region="shifted", render_goal=False)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        g = info["goal_task_state"]
        assert np.any(g < REACH_LOW) or np.any(g > REACH_HIGH)
    with pytest.raises(ValueError, match="only its training goal region"):
        envs.make_env("ArmPush-v0", goal_region="shifted")
    with pytest.raises(ValueError, match="block_rgba must be 4 numbers"):
        envs.make_env("ArmPush-v0", block_rgba=(0, 0, 2, 1))
    red, _ = envs.make_env("ArmPush-v0").reset(seed=1)
    blue, _ = envs.make_env("ArmPush-v0", block_rgba=(0.1, 0.3, 0.9, 1.0)).reset(seed=1)
    changed = np.any(red["image"] != blue["image"], axis=-1)
    assert 10 < changed.sum() < 200  # the block's pixels, nothing else
    np.testing.assert_array_equal(red["proprio"], blue["proprio"])


def test_block_scale_range_draws_each_push_episodes_block_and_nothing_else():
    """Training-data randomization: each episode's block is the nominal one times U(range), deterministic
    in the seed, resting on the table and pushed like any other; the task's evaluations drop the kwarg."""
    from envs.arm import BLOCK_HALF, BLOCK_SCALE_LIMITS

    env = envs.make_env("ArmPush-v0", render_goal=False, block_scale_range=(0.7, 1.4))
    geom = env.unwrapped.model.geom("block").id
    halves = []
    for seed in range(6):
        env.reset(seed=seed)
        half = env.unwrapped.block_half
        halves.append(half)
        assert 0.7 * BLOCK_HALF <= half <= 1.4 * BLOCK_HALF
        np.testing.assert_allclose(env.unwrapped.model.geom_size[geom], half)
        for _ in range(5):  # at rest on the table, not sunk into it nor dropped onto it
            env.step(np.array([0, 0, 1, 0], np.float32))
        assert env.unwrapped.block_position()[2] == pytest.approx(half, abs=1e-3)
    assert len(set(np.round(halves, 6))) == 6
    env.reset(seed=3)
    assert env.unwrapped.block_half == halves[3]
    for seed in range(3):  # the expert still pushes the biggest block home
        big = envs.make_env("ArmPush-v0", render_goal=False, block_scale_range=(1.38, 1.4))
        big.reset(seed=seed)
        for _ in range(100):
            *_, info = big.step(big.unwrapped.scripted_action())
            if info["is_success"]:
                break
        assert info["is_success"]
    plain = envs.make_env("ArmPush-v0", render_goal=False)
    plain.reset(seed=3)
    assert plain.unwrapped.block_half == BLOCK_HALF
    np.testing.assert_allclose(plain.unwrapped.model.geom_size[geom], BLOCK_HALF)
    lo, hi = BLOCK_SCALE_LIMITS
    for bad in ((lo - 0.1, 1.0), (1.2, 1.1), (1.0, hi + 0.1), (1.0,), (float("nan"), 1.0)):
        with pytest.raises(ValueError, match="block_scale_range must be"):
            envs.make_env("ArmPush-v0", block_scale_range=bad)
    for env_id in ("ArmReach-v0", "ArmPickPlace-v0"):
        with pytest.raises(ValueError, match="keeps its block's size"):
            envs.make_env(env_id, block_scale_range=(0.9, 1.1))
    kwargs = {"image_size": 64, "block_scale_range": [0.7, 1.4]}
    assert envs.task_kwargs(kwargs) == {"image_size": 64}
    assert kwargs["block_scale_range"] == [0.7, 1.4]


def test_gymnasium_make_registered():
    import gymnasium

    env = gymnasium.make("ArmReach-v0")
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", IDS)
def test_scripted_success_rate_at_least_95_percent(env_id):
    env = envs.make_env(env_id, render_goal=False)
    successes = 0
    for seed in range(60):
        env.reset(seed=5000 + seed)
        for _ in range(env.task.step_budget):
            *_, info = env.step(env.scripted_action())
        successes += info["is_success"]
    assert successes >= 57, f"{env_id}: scripted success {successes}/60 at the end of the budget"


def test_pick_place_goal_holds_block_and_push_goal_rests_behind():
    from envs.push import PUSH_REST_BEHIND_M

    pick = envs.make_env("ArmPickPlace-v0", render_goal=False)
    pick.reset(seed=4)
    pick.set_snapshot(pick._goal_state)
    assert pick.holding() and pick.task_state()[2] >= 0.08
    push = envs.make_env("ArmPush-v0", render_goal=False)
    push.reset(seed=4)
    start = push.task_state()[:2]
    push.set_snapshot(push._goal_state)
    direction = (push.goal_task_state[:2] - start) / np.linalg.norm(push.goal_task_state[:2] - start)
    rest = push.goal_task_state[:2] - PUSH_REST_BEHIND_M * direction
    np.testing.assert_allclose(push.ee_position()[:2], rest, atol=2e-3)


@pytest.mark.parametrize("env_id", IDS)
def test_physics_sane_under_random_actions(env_id):
    """Joint limits hold, the end effector stays near the workspace box, nothing explodes or jitters."""
    from envs.arm import WORKSPACE_HIGH, WORKSPACE_LOW

    env = envs.make_env(env_id, render_goal=False)
    env.reset(seed=11)
    rng = np.random.default_rng(11)
    for _ in range(40):
        env.simulate(rng.uniform(-1, 1, 4))
        q = env.data.qpos[env._qadr]
        assert np.all(q >= env._qlow - 1e-3) and np.all(q <= env._qhigh + 1e-3)
        ee = env.ee_position()
        assert np.all(ee > WORKSPACE_LOW - 0.015) and np.all(ee < WORKSPACE_HIGH + 0.015)
        assert np.abs(env.data.qvel).max() < 5.0
        if env.has_block:
            assert env.block_position()[2] > 0.02
    for _ in range(10):
        env.simulate(np.array([0.0, 0.0, 0.0, -1.0]))
    assert np.abs(env.data.qvel[:4]).max() < 1e-3  # at rest: no jitter


def test_gym_ids_are_delegated_to_the_adapter():
    env = envs.make_env("gym:Reacher-v5", image_size=32)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (32, 32, 3) and "goal_image" in info


@pytest.mark.parametrize("moved_kwargs", [dict(camera_offset=(0.02, 0.0, -0.02)), dict(camera_turn_deg=3.0)])
def test_camera_offset_and_turn_change_the_view_only(moved_kwargs):
    base = envs.make_env("ArmPush-v0")
    moved = envs.make_env("ArmPush-v0", **moved_kwargs)
    (a, ia), (b, ib) = base.reset(seed=2), moved.reset(seed=2)
    assert not np.array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["proprio"], b["proprio"])
    assert ia["distance"] == ib["distance"]
