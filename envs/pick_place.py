"""ArmPickPlace-v0: grasp the block and hold it at a 3-D goal above the table; task_state = block position.

Goal image: the block held at the goal by the closed gripper (grasp centre = block centre), hand down,
block faces aligned with the fingers.

Sub-goal images (reset info "subgoal_images", in order; planned through by `planner eval` and the
server's `subgoal_images` before the goal, as V-JEPA 2-AC does): the open hand PREGRASP_ABOVE_M above the
block; the closed hand around the block where it starts; the block lifted straight up to the goal height (from
here on planners hold the gripper closed, reset info "stage_fixed_dims").
"""

from __future__ import annotations

import numpy as np

from envs.arm import BLOCK_HALF, ArmEnv, move_toward, sample_in_box
from envs.push import ARM_START_HIGH, ARM_START_LOW, BLOCK_HIGH, BLOCK_LOW
from envs.task import TaskSpec

GOAL_Z = (0.08, 0.20)
"""Height range of the goal (block centre), metres above the table."""
YAW_JITTER = 0.35
"""Start yaw of the block relative to the gripper's radial orientation, +- radians."""
TRAVEL_HEIGHT_M = 0.09
PREGRASP_ABOVE_M = 0.06


def radial_yaw(xy: np.ndarray) -> float:
    """Yaw of the hand (and of a block aligned with the fingers) over point xy."""
    return float(np.arctan2(xy[1], xy[0]))


class ArmPickPlaceEnv(ArmEnv):
    task = TaskSpec("ArmPickPlace-v0", success_threshold=0.05, step_budget=150, min_start_distance=0.10)
    has_block = True
    default_camera = "table"
    grip_held_from_stage = 2
    """From the lift on, planners keep the gripper closed: sampled like any other command, the grip loosens
    (costing nothing until the block falls) and the simulator planner dropped it (session 13)."""

    def _sample_episode(self, rng: np.random.Generator) -> np.ndarray:
        while True:
            start = np.append(sample_in_box(rng, BLOCK_LOW, BLOCK_HIGH), BLOCK_HALF)
            goal = np.append(sample_in_box(rng, BLOCK_LOW, BLOCK_HIGH), rng.uniform(*GOAL_Z))
            if np.linalg.norm(goal - start) >= self.task.min_start_distance + 0.005:
                break
        ee = sample_in_box(rng, ARM_START_LOW, ARM_START_HIGH)
        self._place_arm(goal, gripper=1.0)
        self._set_fingers(BLOCK_HALF, 1.0)
        self._place_block(goal, radial_yaw(goal))
        goal_state = self.get_snapshot()
        self._place_arm(ee, gripper=-1.0)
        self._place_block(start, radial_yaw(start) + rng.uniform(-YAW_JITTER, YAW_JITTER))
        return goal_state

    def task_state(self) -> np.ndarray:
        return self.block_position()

    def _subgoal_snapshots(self) -> list[np.ndarray]:
        """Pre-grasp (open hand above the block), grasp (closed hand around it at its start), lift (held
        at the start xy, goal height): three snapshots derived from the start and goal, no rng draws."""
        start = self.get_snapshot()
        block, goal = self.block_position(), self.goal_task_state
        yaw = radial_yaw(block[:2])
        snaps = []
        self._place_arm(block + np.array([0.0, 0.0, PREGRASP_ABOVE_M]), gripper=-1.0)
        snaps.append(self.get_snapshot())
        for held in (block, np.append(block[:2], goal[2])):
            self._place_arm(held, gripper=1.0)
            self._set_fingers(BLOCK_HALF, 1.0)
            self._place_block(held, yaw)
            snaps.append(self.get_snapshot())
        self.set_snapshot(start)
        return snaps

    def scripted_action(self) -> np.ndarray:
        """Approach above the block, descend open, close, lift, carry to the goal, hold."""
        ee, block, goal = self.ee_position(), self.block_position(), self.goal_task_state
        if self.holding():
            if block[2] < BLOCK_HALF + 0.03 and np.linalg.norm(goal[:2] - block[:2]) > 0.03:
                return move_toward(ee, ee + np.array([0.0, 0.0, 0.025]), 1.0)  # lift before carrying
            return move_toward(ee, goal + (ee - block), 1.0)
        off_xy = np.linalg.norm(ee[:2] - block[:2])
        if off_xy < 0.012 and abs(ee[2] - block[2]) < 0.012:  # fingers around the block: close
            return move_toward(ee, block, 1.0)
        if self.gripper_opening() < 0.07:  # open fully before any approach
            return move_toward(ee, ee, -1.0)
        if off_xy < 0.01:  # above the block: descend
            return move_toward(ee, block, -1.0)
        if ee[2] < block[2] + 0.05 and off_xy < 0.08:  # low next to the block: lift first
            return move_toward(ee, ee + np.array([0.0, 0.0, 0.025]), -1.0)
        return move_toward(ee, np.append(block[:2], block[2] + TRAVEL_HEIGHT_M), -1.0)
