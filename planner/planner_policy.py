"""`planner collect --policy planner`: collect with the MPC planner itself (on-policy data).

Why (docs/BENCHMARKS.md, "Data from the planner's own episodes"): the planner picks the actions whose
imagined outcome looks best, so it seeks out exactly the transitions where the model is optimistic; the
`explore` data rarely contains them. Running the planner in the simulator and training on what really
happened (as DAgger and iterated model-based RL do) shows the model its own mistakes.

Each episode plans toward the env's goal image, through its sub-goal images when the task has them, as
`planner eval` does (the next target once the current observation's energy to the sub-goal is within the
checkpoint's goal threshold); it never stops early, so every episode has --steps actions. Gaussian noise
(`--planner-noise`, in normalized action units) is added to each executed action and clipped to [-1, 1],
so the data also covers the plan's neighbourhood. The episode seeds are the `collect` stream's, never an
evaluation episode's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.preprocess import Preprocessing, preprocess_image
from planner.seeding import planning_seed

_AGENTS: dict[tuple[str, str], tuple] = {}
"""Per-process cache: (checkpoint, device) -> (MPCAgent, Preprocessing); a collection worker loads once."""


@dataclass(frozen=True)
class PlannerPolicySpec:
    """Which checkpoint plans and how noisy its executed actions are (picklable: it travels to workers)."""

    checkpoint: Path
    noise: float = 0.1
    device: str = "cpu"

    def label(self, checkpoint_name: str) -> str:
        """The store's `policy` entry: names the checkpoint and noise, so --resume refuses another."""
        return f"planner ({checkpoint_name}, noise {self.noise:g})"


def _agent(spec: PlannerPolicySpec):
    key = (str(spec.checkpoint), spec.device)
    if key not in _AGENTS:
        import torch

        from planner import checkpoint
        from planner.mpc import MPCAgent

        torch.set_num_threads(1)  # one thread per collecting process; --workers parallelizes
        loaded = checkpoint.load(spec.checkpoint, device=spec.device)
        _AGENTS[key] = (MPCAgent(loaded, device=spec.device), Preprocessing.from_checkpoint_config(
            loaded.config))
    return _AGENTS[key]


def make_planner_policy(spec: PlannerPolicySpec, name: str, env, seed: int) -> PlannerPolicy:
    """`planner.collect` PolicyFactory (bind spec with functools.partial)."""
    agent, rule = _agent(spec)
    return PlannerPolicy(agent, rule, seed, spec.noise)


class PlannerPolicy:
    """MPC toward the episode's (sub-)goals plus Gaussian action noise; a collection Policy."""

    def __init__(self, agent, rule: Preprocessing, seed: int, noise: float) -> None:
        if not (np.isfinite(noise) and noise >= 0):
            raise ValueError(f"planner noise must be >= 0, got {noise}")
        self.agent, self.rule, self.seed, self.noise = agent, rule, seed, noise
        self.rng = np.random.default_rng(seed)
        self.targets: list = []

    def reset(self, info: dict | None = None) -> None:
        """info: the env's reset info; its `goal_image` (and `subgoal_images`) are the targets, each stage
        planned holding its `stage_fixed_dims`."""
        if info is None or info.get("goal_image") is None:
            raise ValueError("the planner policy needs the env's goal image in its reset info (an ArmEnv "
                             "block or reach task with goal rendering on)")
        from planner.mpc import stage_agents

        images = [*info.get("subgoal_images", []), info["goal_image"]]
        self.targets = [self.agent.encode_goal(preprocess_image(g, self.rule))[None] for g in images]
        self.planners = stage_agents(self.agent, info.get("stage_fixed_dims"))
        self.target, self.warm, self.frames, self.actions, self.t = 0, None, [], [], 0
        self.zero = self.agent.action_spec.to_native(np.zeros(self.agent.action_spec.dim, np.float32))

    def __call__(self, obs) -> np.ndarray:
        from planner.mpc import pad_history, plan_through_subgoals

        if not self.targets:
            raise RuntimeError("call reset(info) before acting")
        k = self.agent.history_len
        self.frames = [*self.frames, preprocess_image(obs["image"], self.rule)][-k:]
        imgs, prev = pad_history(self.frames, self.actions, k, self.zero)
        plan, self.target, _, _ = plan_through_subgoals(
            self.planners, imgs, prev, self.targets, self.target, self.warm,
            threshold=self.agent.subgoal_energy_threshold, seed=planning_seed(self.seed, self.t))
        self.warm, self.t = plan.warm_start, self.t + 1
        action = plan.actions_normalized[0][0] + self.rng.normal(0.0, self.noise, self.agent.action_spec.dim)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        self.actions = [*self.actions, self.agent.action_spec.to_native(action)][-(k - 1):] if k > 1 else []
        return action
