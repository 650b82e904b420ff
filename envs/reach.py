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
SHIFTED_LOW = np.array([0.19, -0.24, 0.03])
SHIFTED_HIGH = np.array([0.57, 0.24, 0.34])
"""goal_region="shifted": goals in this box but outside REACH_LOW..REACH_HIGH (the shell of the workspace
that training goals never come from; starts stay in the usual box)."""


class ArmReachEnv(ArmEnv):
    task = TaskSpec("ArmReach-v0", success_threshold=0.05, step_budget=50, min_start_distance=0.15)
    has_block = False
    supports_shifted_goals = True

    def _sample_goal(self, rng: np.random.Generator) -> np.ndarray:
        if self.goal_region == "train":
            return sample_in_box(rng, REACH_LOW, REACH_HIGH)
        while True:
            goal = sample_in_box(rng, SHIFTED_LOW, SHIFTED_HIGH)
            if np.any(goal < REACH_LOW) or np.any(goal > REACH_HIGH):
                return goal

    def _sample_episode(self, rng: np.random.Generator) -> np.ndarray:
        start = sample_in_box(rng, REACH_LOW, REACH_HIGH)
        goal = self._sample_goal(rng)
        while np.linalg.norm(goal - start) < self.task.min_start_distance + 0.005:
            goal = self._sample_goal(rng)
        self._place_arm(goal)
        goal_state = self.get_snapshot()
        self._place_arm(start)
        return goal_state

    def task_state(self) -> np.ndarray:
        return self.ee_position()

    def scripted_action(self) -> np.ndarray:
        return move_toward(self.ee_position(), self.goal_task_state, -1.0)
