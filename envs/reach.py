"""ArmReach-v0: bring the end effector to a 3-D target; task_state = end-effector position.

The goal image shows the arm at rest at the goal pose (found with the same hand-down IK), gripper open.
"""

from __future__ import annotations

import numpy as np

from envs.arm import ArmEnv, move_toward, sample_in_box
from envs.task import TaskSpec

REACH_LOW = np.array([0.22, -0.20, 0.06])
REACH_HIGH = np.array([0.54, 0.20, 0.30])
"""Box from which start and goal end-effector positions are drawn (metres)."""


class ArmReachEnv(ArmEnv):
    task = TaskSpec("ArmReach-v0", success_threshold=0.05, step_budget=50, min_start_distance=0.15)
    has_block = False

    def _sample_episode(self, rng: np.random.Generator) -> np.ndarray:
        start = sample_in_box(rng, REACH_LOW, REACH_HIGH)
        goal = sample_in_box(rng, REACH_LOW, REACH_HIGH)
        while np.linalg.norm(goal - start) < self.task.min_start_distance + 0.005:
            goal = sample_in_box(rng, REACH_LOW, REACH_HIGH)
        self._place_arm(goal)
        goal_state = self.get_snapshot()
        self._place_arm(start)
        return goal_state

    def task_state(self) -> np.ndarray:
        return self.ee_position()

    def scripted_action(self) -> np.ndarray:
        return move_toward(self.ee_position(), self.goal_task_state, -1.0)
