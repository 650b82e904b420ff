"""What the service needs from a model: the `Backend` protocol and the problem/result records it trades.

The worker thread is the only caller of a backend, so a backend owns its device without locks.
The real backend (`server.agent_backend.AgentBackend`) wires planner.checkpoint + planner.mpc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from planner.preprocess import Preprocessing


@dataclass(frozen=True)
class PlannerParams:
    """Solver settings of one request (all problems of one batch share them)."""

    solver: str
    horizon: int
    samples: int
    iterations: int
    fixed_dims: tuple[tuple[int, float], ...] = ()
    """(dimension, normalized value) pairs held in this stage on top of the checkpoint's own (the request's
    `stage_fixed_dims`, e.g. pick-and-place's closed gripper from the lift on)."""


@dataclass(frozen=True)
class ModelSpec:
    """What clients must know about the served model (GET /v1/models)."""

    name: str
    preprocessing: Preprocessing
    action_low: np.ndarray
    """float32 [A], native units."""
    action_high: np.ndarray
    """float32 [A], native units."""
    action_units: str
    action_frame: str
    history_len: int
    """K: frames the predictor conditions on (current one included)."""
    proprio_dim: int | None
    latent_dim: int
    default_planner: PlannerParams
    solvers: tuple[str, ...]
    goal_energy_threshold: float | None = None
    action_dims: dict = field(default_factory=dict)
    """The action dimensions every plan snaps or holds, {binary_dims, fixed_dims}
    (planner.solvers.action_dims_record; {}: none)."""
    subgoal_energy_threshold: float | None = None
    """The energy at which a sub-goal counts as reached (the calibration's `subgoal_threshold`, else the
    goal's)."""
    camera: str | None = None
    """The camera the training images came from (envs.image_camera, e.g. "table" or "table+workspace":
    two views side by side); None when the training data names none."""
    objective: dict = field(default_factory=dict)
    """How plans are scored (planner.objectives.ObjectiveConfig as a dict: distance, reduce, disagreement,
    approach, ...), the checkpoint's planner defaults included."""

    @property
    def image_size(self) -> int:
        return self.preprocessing.size

    @property
    def action_dim(self) -> int:
        return int(self.action_low.shape[0])


@dataclass
class PlanProblem:
    """One robot's planning problem, already validated and in the model's image size."""

    frames: np.ndarray
    """uint8 [K,H,W,3]: oldest first, current observation last (padded to K by repeating the oldest)."""
    prev_actions: np.ndarray
    """float32 [K-1,A] native units: the action taken after each of frames[:-1]."""
    goal_latent: np.ndarray | None
    """float32 [D] when the goal came from the cache, else None and goal_image is set."""
    goal_image: np.ndarray | None
    """uint8 [H,W,3] when the goal latent is still to be computed."""
    goal_proprio: np.ndarray | None
    seed: int
    warm_start: dict[str, Any] | None = None
    """The `state` of a warm start the server returned earlier (already checked to fit model and solver)."""
    executed_steps: int = 0
    context_frames: np.ndarray | None = None
    """uint8 [K,H,W,3]: the K frames before the current one, when the history has them (for ood_score)."""
    context_actions: np.ndarray | None = None
    """float32 [K,A] native: the actions taken after each context frame."""
    subgoal: bool = False
    """The goal is one of the request's sub-goals (scored with the plain energy and the sub-goal threshold;
    the final goal with the checkpoint's goal calibration, planner.mpc.MPCAgent.plan)."""


@dataclass
class PlanOutcome:
    """One problem's answer."""

    actions: np.ndarray
    """float32 [H,A] native units (the server clips them afterwards)."""
    energy: float
    """Energy of the plan's imagined final state against the goal."""
    current_energy: float
    """Energy of the current observation against the goal; goal_reached is current_energy <= threshold."""
    goal_reached: bool
    goal_latent: np.ndarray
    """float32 [D]: the goal latent used (cached by the server)."""
    warm_start: dict[str, Any]
    """JSON-able state for the next call."""
    ood_score: float | None = None
    """||predict(context) - encode(current)||_2 in energy units; None without context."""


class Backend(Protocol):
    """A loaded model behind the worker; every method is called from the worker thread only."""

    spec: ModelSpec

    def warmup(self) -> None:
        """Run each code path once (compile kernels, allocate) so the first request is not slow."""

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B,H,W,3] -> float32 [B,D]."""

    def encode_goals(self, images: np.ndarray, proprio: list[np.ndarray | None]) -> np.ndarray:
        """Goal images uint8 [B,H,W,3] (+ optional proprio each) -> goal latents float32 [B,D]."""

    def validate_warm_start(self, state: dict, params: PlannerParams) -> None:
        """Raise ValueError (served as 422) unless `state` fits `params`; pure, callable from any thread."""

    def plan(self, problems: list[PlanProblem], params: PlannerParams) -> list[PlanOutcome]:
        """Plan all problems (same params and seed) in one solver call; each = planning it alone."""

    def rollout(
        self,
        frames: np.ndarray,
        prev_actions: np.ndarray,
        actions: np.ndarray,
        goal_latent: np.ndarray | None,
    ) -> dict[str, list[float] | None]:
        """Imagine `actions` float32 [T,A] (native) from the observation: per-step `energies` (when a goal
        latent is given, else None), `latent_norms` and `latent_change` (distance to the current latent)."""

    def surprise(self, frames: np.ndarray, actions: np.ndarray) -> dict:
        """Clip frames uint8 [T+1,S,S,3], native actions float32 [T,A] (T >= history_len) -> `space` and
        per-step `errors`, `normalized`, `flagged`, `score`, `peak_step`, `typical_error`, `threshold`."""
