"""A small deterministic stand-in backend for the service's unit tests (never used outside tests).

Its plan depends only on the request's own observation, goal and seed, so tests can check that each
concurrent client gets the plan for its own observation and that batching does not change answers.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from planner.preprocess import Preprocessing
from server.backend import ModelSpec, PlannerParams, PlanOutcome, PlanProblem

SIZE = 16
LOW = np.array([-0.05, -0.05, -0.05, -1.0], np.float32)
HIGH = np.array([0.05, 0.05, 0.05, 1.0], np.float32)


def fake_spec(history_len: int = 2) -> ModelSpec:
    return ModelSpec(
        name="fake@000000000000",
        preprocessing=Preprocessing(size=SIZE),
        action_low=LOW,
        action_high=HIGH,
        action_units="m, gripper",
        action_frame="world",
        history_len=history_len,
        proprio_dim=3,
        latent_dim=3,
        default_planner=PlannerParams("cem", horizon=5, samples=16, iterations=2),
        solvers=("cem", "mppi"),
        goal_energy_threshold=0.01,
    )


def expected_actions(frame: np.ndarray, goal: np.ndarray, seed: int, horizon: int) -> np.ndarray:
    """The fake's plan [H,A] (native, before clipping): toward the goal colour, scaled by the seed."""
    d = (goal.reshape(-1, 3).mean(0) - frame.reshape(-1, 3).mean(0)) / 255.0
    step = np.concatenate([d, [np.tanh(d.sum())]]).astype(np.float32) * (1 + seed % 3)
    return np.tile(step, (horizon, 1)) * np.linspace(1, 0.5, horizon, dtype=np.float32)[:, None]


class FakeBackend:
    """Encodes an image as its mean colour / 255; plans `expected_actions`; records batch sizes."""

    def __init__(self, history_len: int = 2, delay_s: float = 0.0, oom_once: bool = False) -> None:
        self.spec = fake_spec(history_len)
        self.delay_s = delay_s
        self.oom_once = oom_once
        self.batches: list[int] = []
        self.problems: list[PlanProblem] = []
        self.params: list[PlannerParams] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()  # set when a plan call starts (before it waits for `release`)

    def warmup(self) -> None:
        self.encode(np.zeros((1, SIZE, SIZE, 3), np.uint8))

    def encode(self, images: np.ndarray) -> np.ndarray:
        return images.reshape(images.shape[0], -1, 3).mean(1).astype(np.float32) / 255.0

    def encode_goals(self, images, proprio) -> np.ndarray:
        return self.encode(images)

    def validate_warm_start(self, state: dict, params: PlannerParams) -> None:
        if np.asarray(state.get("mean")).shape != (params.horizon, 4):
            raise ValueError(f"mean must be {params.horizon}x4")

    def plan(self, problems: list[PlanProblem], params: PlannerParams) -> list[PlanOutcome]:
        self.entered.set()
        self.release.wait(10)
        if self.oom_once:
            self.oom_once = False
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(self.delay_s)
        self.batches.append(len(problems))
        self.problems.extend(problems)
        self.params.extend([params] * len(problems))
        out = []
        for p in problems:
            goal_z = p.goal_latent if p.goal_latent is not None else self.encode(p.goal_image[None])[0]
            goal_pixels = np.broadcast_to(goal_z * 255.0, (SIZE, SIZE, 3))
            actions = expected_actions(p.frames[-1], goal_pixels, p.seed, params.horizon)
            energy = float(np.linalg.norm(self.encode(p.frames[-1:])[0] - goal_z))
            out.append(
                PlanOutcome(
                    actions=actions,
                    energy=energy,
                    current_energy=energy,
                    goal_reached=energy < self.spec.goal_energy_threshold,
                    goal_latent=goal_z,
                    warm_start={"mean": actions.tolist(), "shifted": p.executed_steps},
                    ood_score=None,
                )
            )
        return out

    def rollout(self, frames, prev_actions, actions, goal_latent):
        z0 = self.encode(frames[-1:])[0]
        zs = z0 + np.cumsum(actions[:, :3], axis=0)
        return {
            "energies": None if goal_latent is None else np.linalg.norm(zs - goal_latent, axis=1).tolist(),
            "latent_norms": np.linalg.norm(zs, axis=1).tolist(),
            "latent_change": np.linalg.norm(zs - z0, axis=1).tolist(),
        }

    def surprise(self, frames, actions):
        z = self.encode(frames)
        errors = (np.linalg.norm(np.diff(z, axis=0), axis=1) ** 2).tolist()
        return {
            "space": "latent",
            "errors": errors,
            "normalized": errors,
            "flagged": [],
            "score": max(errors),
            "peak_step": int(np.argmax(errors)),
            "typical_error": 1.0,
            "threshold": 10.0,
        }
