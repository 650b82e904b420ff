"""ArmPush-v0: push the block across the table to a target xy; task_state = block position.

Goal image: the block at the goal, and the arm resting beside it as at the end of a push: end effector
PUSH_REST_BEHIND_M behind the block centre along the push direction (start -> goal), PUSH_HEIGHT_M above
the table, gripper closed.

Sub-goal images (reset info "subgoal_images", in order, like pick-and-place's): the hand above the push
start point (TRAVEL_HEIGHT_M), the hand lowered behind the block (the push start), and the block pushed
halfway to the goal with the hand behind it. Each is a short reach for the arm, and moving the hand from
one to the next along the push line is what pushes the block. `subgoal_spacing` (metres; env kwarg)
replaces the single halfway point by evenly spaced ones at most that far apart along the push (a 20 cm
push with 0.05: a quarter, half and three quarters); None keeps the halfway point alone.
"""

from __future__ import annotations

import numpy as np

from envs.arm import ArmEnv, move_toward, sample_in_box
from envs.task import TaskSpec

BLOCK_LOW = np.array([0.28, -0.15])
BLOCK_HIGH = np.array([0.48, 0.15])
"""Region (xy, metres) for the block's start and goal positions."""
MAX_PUSH_M = 0.22
"""Goal at most this far from the block's start."""
ARM_START_LOW = np.array([0.22, -0.20, 0.12])
ARM_START_HIGH = np.array([0.54, 0.20, 0.28])
"""Start end-effector box: above the block, so the start state has no contact."""
PUSH_REST_BEHIND_M = 0.045
PUSH_HEIGHT_M = 0.03
TRAVEL_HEIGHT_M = 0.09
SUBGOAL_SPACING_RANGE = (0.02, 0.25)
"""Allowed `subgoal_spacing` (metres): 2 cm (many short stages) to one stage for the longest push."""


def sample_block_and_goal(rng: np.random.Generator, min_dist: float, max_dist: float):
    """(start xy [2], goal xy [2]) inside the block region, min_dist..max_dist apart."""
    while True:
        start = sample_in_box(rng, BLOCK_LOW, BLOCK_HIGH)
        goal = sample_in_box(rng, BLOCK_LOW, BLOCK_HIGH)
        if min_dist <= np.linalg.norm(goal - start) <= max_dist:
            return start, goal


class ArmPushEnv(ArmEnv):
    task = TaskSpec("ArmPush-v0", success_threshold=0.05, step_budget=100, min_start_distance=0.10)
    has_block = True
    default_camera = "table"
    supports_block_scale = True
    task_kwargs = ("subgoal_spacing",)

    def __init__(self, *, subgoal_spacing: float | None = None, **kwargs) -> None:
        if subgoal_spacing is not None and not (
            isinstance(subgoal_spacing, (int, float)) and not isinstance(subgoal_spacing, bool)
            and SUBGOAL_SPACING_RANGE[0] <= subgoal_spacing <= SUBGOAL_SPACING_RANGE[1]
        ):
            raise ValueError(f"subgoal_spacing must be None or metres in {SUBGOAL_SPACING_RANGE}, got "
                             f"{subgoal_spacing!r}")
        self.subgoal_spacing = None if subgoal_spacing is None else float(subgoal_spacing)
        super().__init__(**kwargs)

    def _sample_episode(self, rng: np.random.Generator) -> np.ndarray:
        start, goal = sample_block_and_goal(rng, self.task.min_start_distance + 0.005, MAX_PUSH_M)
        yaw = rng.uniform(-np.pi / 4, np.pi / 4)
        ee = sample_in_box(rng, ARM_START_LOW, ARM_START_HIGH)
        direction = (goal - start) / np.linalg.norm(goal - start)
        rest = np.append(goal - PUSH_REST_BEHIND_M * direction, PUSH_HEIGHT_M)
        self._place_arm(rest, gripper=1.0)
        self._place_block(np.append(goal, self.block_half), yaw)
        goal_state = self.get_snapshot()
        self._place_arm(ee, gripper=1.0)
        self._place_block(np.append(start, self.block_half), yaw)
        return goal_state

    def task_state(self) -> np.ndarray:
        return self.block_position()

    def _subgoal_snapshots(self) -> list[np.ndarray]:
        """Above the push start, at the push start, then the block pushed part way (halfway, or every
        `subgoal_spacing` metres) with the hand behind it; no rng draws."""
        start = self.get_snapshot()
        adr = self.model.joint("block").qposadr[0]
        block_pose = self.data.qpos[adr : adr + 7].copy()
        block, goal = block_pose[:3].copy(), self.goal_task_state
        push = goal[:2] - block[:2]
        length = float(np.linalg.norm(push))
        direction = push / max(length, 1e-9)
        behind = block[:2] - PUSH_REST_BEHIND_M * direction
        stages = [(np.append(behind, TRAVEL_HEIGHT_M), block[:2]),
                  (np.append(behind, PUSH_HEIGHT_M), block[:2])]
        for fraction in self._push_fractions(length):
            point = block[:2] + fraction * push
            stages.append((np.append(point - PUSH_REST_BEHIND_M * direction, PUSH_HEIGHT_M), point))
        snaps = []
        for ee, block_xy in stages:
            self._place_arm(ee, gripper=1.0)
            self.data.qpos[adr : adr + 7] = np.concatenate([np.append(block_xy, block[2]), block_pose[3:]])
            snaps.append(self.get_snapshot())
        self.set_snapshot(start)
        return snaps

    def _push_fractions(self, push_m: float) -> list[float]:
        """Fractions of the push (0..1, exclusive) at which the block sub-goals lie: [0.5] by default,
        else n - 1 evenly spaced ones with n = ceil(push_m / subgoal_spacing) (at least the halfway one)."""
        if self.subgoal_spacing is None:
            return [0.5]
        n = max(2, int(np.ceil(push_m / self.subgoal_spacing - 1e-9)))
        return [k / n for k in range(1, n)]

    def scripted_action(self) -> np.ndarray:
        """Go behind the block (lift, travel, lower), push along block -> goal, re-approach when off line."""
        ee, block = self.ee_position(), self.block_position()
        to_goal = self.goal_task_state[:2] - block[:2]
        dist = np.linalg.norm(to_goal)
        direction = to_goal / max(dist, 1e-9)
        rel = ee[:2] - block[:2]
        along, lateral = rel @ direction, rel @ np.array([-direction[1], direction[0]])
        if along < -0.03 and abs(lateral) < 0.012 and ee[2] < 0.05:  # behind the block, on the line: push
            forward = min(0.025, dist)
            target = np.append(block[:2] + direction * (along + forward), PUSH_HEIGHT_M)
        else:
            pre = block[:2] - direction * (PUSH_REST_BEHIND_M + 0.01)
            if np.linalg.norm(ee[:2] - pre) < 0.012:  # above the pre-push point: lower
                target = np.append(pre, PUSH_HEIGHT_M)
            elif ee[2] < 0.065 and np.linalg.norm(rel) < 0.08:  # low next to the block: lift first
                target = ee + np.array([0.0, 0.0, 0.025])
            else:  # travel above the block's height to the pre-push point
                target = np.append(pre, TRAVEL_HEIGHT_M)
        return move_toward(ee, target, 1.0)
