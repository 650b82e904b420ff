"""Data-collection policies: `random`, `explore`, `explore-gripper`, `scripted`; a coverage report for them.

`make_policy(name, env, seed) -> Policy`; a Policy has `reset(info)` (new episode; info is the env's reset
info, which goal-directed policies such as planner.planner_policy read) and `__call__(obs) -> float32[A]`
(normalized action) and draws randomness only from its own generator. `explore` on an env
that is not our arm (a `gym:` env) is temporally correlated noise over its whole action space.

    MUJOCO_GL=egl python -m envs.policies --env ArmPush-v0 --policy explore --episodes 20
prints `coverage_report` as JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from envs.arm import MAX_STEP_M, WORKSPACE_HIGH, WORKSPACE_LOW, ArmEnv

POLICIES = ("random", "explore", "explore-gripper", "scripted")


class RandomPolicy:
    """Uniform actions in [-1, 1]^A, independent across steps."""

    def __init__(self, env, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.shape = env.action_space.shape

    def reset(self, info: dict | None = None) -> None:
        pass

    def __call__(self, obs) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.shape).astype(np.float32)


class CorrelatedNoisePolicy:
    """Exploration for envs we know nothing about: per segment of 5-25 steps a random mean action, plus
    Ornstein-Uhlenbeck noise, clipped to [-1, 1]^A (smooth motion that travels, unlike uniform noise)."""

    def __init__(self, env, seed: int, noise: float = 0.35) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = int(np.prod(env.action_space.shape))
        self.noise = noise
        self.reset()

    def reset(self, info: dict | None = None) -> None:
        self.steps_left = 0
        self.ou = np.zeros(self.dim)

    def __call__(self, obs) -> np.ndarray:
        if self.steps_left <= 0:
            self.steps_left = int(self.rng.integers(5, 26))
            self.mean = self.rng.uniform(-0.8, 0.8, self.dim)
        self.steps_left -= 1
        self.ou = 0.7 * self.ou + self.rng.normal(0.0, self.noise, self.dim)
        return np.clip(self.mean + self.ou, -1.0, 1.0).astype(np.float32)


class ScriptedPolicy:
    """The task's privileged expert (`env.scripted_action()`)."""

    def __init__(self, env, seed: int) -> None:
        self.env = env.unwrapped

    def reset(self, info: dict | None = None) -> None:
        pass

    def __call__(self, obs) -> np.ndarray:
        return self.env.scripted_action()


class ExplorePolicy:
    """Temporally correlated exploration that covers the workspace and, with a block, makes contact.

    Segments of 5-25 steps, each either (a) motion toward a random waypoint in the workspace box (for
    block tasks half of the waypoints lie low around the block) with Ornstein-Uhlenbeck noise and a
    gripper that flips now and then, or (b) for block tasks, the noisy scripted expert (pushes, grasp
    attempts, carries), chosen with probability `scripted_fraction`.

    gripper `flip` (the `explore` policy): the command is +-1 (the expert's pushes are all closed-handed).
    `free` (`explore-gripper`): every segment, scripted or not, draws its command anew - half the segments
    hold one value uniform in [-1, 1], half draw a new one every step - so contact is seen with the hand
    open, closed and anywhere between, as a planner sampling the gripper commands it.
    """

    def __init__(self, env, seed: int, scripted_fraction: float = 0.5, noise: float = 0.35,
                 gripper: str = "flip") -> None:
        if gripper not in ("flip", "free"):
            raise ValueError(f"gripper must be 'flip' or 'free', got {gripper!r}")
        self.env = env.unwrapped
        self.rng = np.random.default_rng(seed)
        self.scripted_fraction = scripted_fraction if self.env.has_block else 0.0
        self.noise = noise
        self.free_gripper = gripper == "free"
        self.reset()

    def reset(self, info: dict | None = None) -> None:
        self.steps_left = 0
        self.ou = np.zeros(3)
        self.gripper = float(self.rng.choice([-1.0, 1.0]))

    def _new_segment(self, ee: np.ndarray) -> None:
        self.steps_left = int(self.rng.integers(5, 26))
        self.scripted = bool(self.rng.random() < self.scripted_fraction)
        if self.env.has_block and self.rng.random() < 0.5:
            block = self.env.block_position()
            self.waypoint = np.clip(
                block + self.rng.normal(0.0, [0.05, 0.05, 0.02]), WORKSPACE_LOW, WORKSPACE_HIGH
            )
        else:
            self.waypoint = self.rng.uniform(WORKSPACE_LOW, WORKSPACE_HIGH)
        if self.free_gripper:
            self.gripper_per_step = bool(self.rng.random() < 0.5)
            self.gripper = float(self.rng.uniform(-1.0, 1.0))

    def _step_free_gripper(self) -> None:
        """`free` gripper: a new command this step when the segment draws one per step."""
        if self.gripper_per_step:
            self.gripper = float(self.rng.uniform(-1.0, 1.0))

    def __call__(self, obs) -> np.ndarray:
        ee = np.asarray(obs["proprio"][:3], dtype=float)
        if self.steps_left <= 0:
            self._new_segment(ee)
        self.steps_left -= 1
        self.ou = 0.7 * self.ou + self.rng.normal(0.0, self.noise, 3)
        if self.scripted:
            a = self.env.scripted_action().astype(float)
            a[:3] += self.ou
            if self.free_gripper:
                self._step_free_gripper()
                a[3] = self.gripper
            elif self.rng.random() < 0.05:
                a[3] = -a[3]
            return np.clip(a, -1.0, 1.0).astype(np.float32)
        if np.linalg.norm(self.waypoint - ee) < 0.02:
            self.steps_left = 0
        if self.free_gripper:
            self._step_free_gripper()
        elif self.rng.random() < 0.1:
            self.gripper = float(self.rng.uniform(-1.0, 1.0) > 0) * 2.0 - 1.0
        move = np.clip((self.waypoint - ee) / MAX_STEP_M, -1.0, 1.0) * self.rng.uniform(0.4, 1.0)
        return np.clip(np.append(move + self.ou, self.gripper), -1.0, 1.0).astype(np.float32)


def make_policy(name: str, env, seed: int):
    """Policy by name: `random`, `explore`, `explore-gripper` (our arm only) or `scripted`; `env` is the
    env it will act in."""
    is_arm = isinstance(env.unwrapped, ArmEnv)
    if name == "explore-gripper":
        if not is_arm:
            raise ValueError("policy 'explore-gripper' varies our arm's gripper command; this env is not "
                             "our arm")
        return ExplorePolicy(env, int(seed), gripper="free")
    classes = dict(random=RandomPolicy, explore=ExplorePolicy if is_arm else CorrelatedNoisePolicy,
                   scripted=ScriptedPolicy)
    if name not in classes:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    return classes[name](env, int(seed))


def coverage_report(env_id: str, policy: str = "explore", episodes: int = 10, steps: int | None = None,
                    seed: int = 0, cells: int = 6) -> dict:
    """Run `episodes` episodes and report how well the policy covers the workspace and makes contact.

    workspace_coverage: fraction of the cells^3 grid over the workspace box visited by the end effector;
    block_moved_step_fraction: steps in which the block moved more than 2 mm;
    grasp_episode_fraction: episodes in which the gripper held the block at least once;
    lifted_episode_fraction: episodes in which the block rose 2 cm above the table;
    success_any_step / success_final: fraction of episodes within the task's threshold.
    """
    import envs

    if episodes < 1 or cells < 1:
        raise ValueError(f"episodes and cells must be >= 1, got {episodes} and {cells}")
    env = envs.make_env(env_id, render_goal=False).unwrapped
    steps = env.task.step_budget if steps is None else steps
    visited = np.zeros((cells,) * 3, bool)
    moved = grasped = lifted = any_success = final_success = 0
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        pol = make_policy(policy, env, seed + 10_000 + ep)
        pol.reset()
        ep_grasp = ep_lift = ep_success = False
        info = {}
        prev = env.task_state()
        for _ in range(steps):
            obs, _, _, _, info = env.step(pol(obs))
            frac = (env.ee_position() - WORKSPACE_LOW) / (WORKSPACE_HIGH - WORKSPACE_LOW)
            visited[tuple(np.clip((frac * cells).astype(int), 0, cells - 1))] = True
            if env.has_block:
                block = env.block_position()
                moved += np.linalg.norm(block - prev) > 0.002
                prev = block
                ep_grasp |= env.holding()
                ep_lift |= block[2] > 0.045
            ep_success |= info["is_success"]
        grasped += ep_grasp
        lifted += ep_lift
        any_success += ep_success
        final_success += info["is_success"]
    report = dict(env=env_id, policy=policy, episodes=episodes, steps=steps, seed=seed, cells=cells,
                  workspace_coverage=float(visited.mean()),
                  success_any_step=any_success / episodes, success_final=final_success / episodes)
    if env.has_block:
        report.update(block_moved_step_fraction=moved / (episodes * steps),
                      grasp_episode_fraction=grasped / episodes, lifted_episode_fraction=lifted / episodes)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Coverage and contact statistics of a collection policy.")
    p.add_argument("--env", default="ArmReach-v0")
    p.add_argument("--policy", default="explore", choices=POLICIES)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--steps", type=int, default=None, help="steps per episode (default: the step budget)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(coverage_report(args.env, args.policy, args.episodes, args.steps, args.seed), indent=1))


if __name__ == "__main__":
    main()
