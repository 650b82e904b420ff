"""Request and response bodies of HTTP API v1 (DESIGN.md section 3). Floats must be finite (else 422)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

IMAGE_DOC = "base64 PNG or JPEG, RGB, the model's image size (or any size with resize=true)"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class HistoryItem(Strict):
    image: str = Field(description=IMAGE_DOC)
    proprio: list[float] | None = None
    action: list[float] = Field(description="Native action executed after this frame (A values).")


class Observation(Strict):
    image: str = Field(description=IMAGE_DOC)
    proprio: list[float] | None = Field(
        None, description="Proprioception (P values); first 3 = end effector."
    )
    history: list[HistoryItem] = Field(
        default_factory=list, description="Earlier frames, oldest first, each with the action taken after it."
    )


class GoalImage(Strict):
    image: str = Field(description=IMAGE_DOC)
    proprio: list[float] | None = None


class GoalRef(Strict):
    goal_id: str = Field(description="An id returned by POST /v1/goals.")


class PlannerRequest(Strict):
    solver: str | None = Field(None, description="Solver name (GET /v1/models lists them).")
    horizon: int | None = Field(None, description="Planning horizon H in steps.")
    samples: int | None = Field(None, description="Candidate sequences per iteration.")
    iterations: int | None = Field(None, description="Optimizer iterations.")
    seed: int | None = Field(
        None, description="Problem seed: same request + seed = same plan, batched or not."
    )


class WarmStart(Strict):
    """Returned by the server; send it back unchanged with the next request of the same robot."""

    model: str
    solver: str
    horizon: int
    samples: int
    action_dim: int
    state: dict[str, Any]


MAX_SUBGOALS = 16


class PlanRequest(Strict):
    observation: Observation
    goal: GoalImage | GoalRef
    subgoals: list[GoalImage | GoalRef] = Field(
        default_factory=list,
        max_length=MAX_SUBGOALS,
        description="Intermediate goal images planned to in order before `goal` (e.g. pre-grasp, grasp, lift "
        "for pick-and-place). The server plans to the first one not yet reached, starting at "
        "`subgoal_index`, and moves on within the request when the observation reaches it.",
    )
    subgoal_index: int = Field(
        0, ge=0, description="First sub-goal not yet reached: send back the response's subgoal_index."
    )
    stage_fixed_dims: list[dict[int, float]] = Field(
        default_factory=list,
        max_length=MAX_SUBGOALS + 1,
        description="Per stage (each sub-goal, then the goal), {action dimension: normalized value in "
        "[-1, 1]} the planner holds while heading there (our envs' reset info `stage_fixed_dims`: "
        "pick-and-place keeps the gripper, dimension 3, closed from the lift on). Empty: nothing; else one "
        "per stage.",
    )
    planner: PlannerRequest | None = None
    warm_start: WarmStart | None = None
    executed_steps: int = Field(
        0, ge=0, description="Steps of the previous plan executed since it was returned."
    )
    resize: bool = Field(False, description="Resize images of another size with the model's preprocessing.")
    deadline_ms: float | None = Field(
        None, gt=0, description="Answer 504 if no plan is ready within this time."
    )


class PlanResponse(BaseModel):
    actions: list[list[float]] = Field(description="H x A actions in native units, clipped to the bounds.")
    energy: float = Field(description="Energy of the plan's imagined final state against the goal.")
    current_energy: float = Field(
        description="Energy of the current observation against the goal; goal_reached is current_energy <= "
        "the checkpoint's calibrated goal_energy_threshold (GET /v1/models)."
    )
    goal_reached: bool = Field(description="The final goal (not a sub-goal) is reached.")
    subgoal_index: int = Field(
        0, description="Which goal this plan heads for: i < len(subgoals) is subgoals[i], len(subgoals) the "
        "final goal; energies and goal_id refer to it. Send it back with the next request."
    )
    ood_score: float | None = Field(
        description="One-step prediction error of the history (None without one)."
    )
    plan_ms: float = Field(description="Model time of the batch(es) this plan was solved in.")
    queue_ms: float
    batch_size: int
    model: str
    goal_id: str
    warm_start: WarmStart


class GoalRequest(Strict):
    image: str = Field(description=IMAGE_DOC)
    proprio: list[float] | None = None
    resize: bool = False


class GoalResponse(BaseModel):
    goal_id: str
    model: str


class EmbedRequest(Strict):
    image: str = Field(description=IMAGE_DOC)
    resize: bool = False


class EmbedResponse(BaseModel):
    embedding: list[float]
    model: str


class RolloutRequest(Strict):
    observation: Observation
    actions: list[list[float]] = Field(description="T x A native actions to imagine.")
    goal: GoalImage | GoalRef | None = None
    resize: bool = False


class RolloutResponse(BaseModel):
    energies: list[float] | None = Field(
        description="Energy to the goal after each step (None without goal)."
    )
    latent_norms: list[float]
    latent_change: list[float] = Field(description="Distance of each imagined latent to the current one.")
    model: str


class SurpriseRequest(Strict):
    frames: list[str] = Field(description="T+1 consecutive camera frames, oldest first (" + IMAGE_DOC + ")")
    actions: list[list[float]] = Field(
        description="T native actions, actions[t] taken between frames t and t+1."
    )
    resize: bool = False


class SurpriseResponse(BaseModel):
    space: Literal["latent", "energy", "energy_features"] = Field(
        description="Where errors are measured: the latent, the planning energy's space (checkpoints "
        "with an energy head; for a state head, metres of hand and block), or that space plus the energy "
        "head's hidden features, weighted by the checkpoint's calibration (energy_features)."
    )
    errors: list[float] = Field(
        description="Per-step squared prediction error ||e(predict) - e(z[t+1])||^2, e the identity "
        "(space latent) or the energy head (space energy); energy_features adds w ||f(predict) - "
        "f(z[t+1])||^2, f the head's last hidden layer."
    )
    normalized: list[float] = Field(description="errors / typical_error.")
    flagged: list[int] = Field(
        description="Steps whose normalized error exceeds threshold (t >= history_len-1)."
    )
    score: float = Field(description="Max normalized error over the scored steps.")
    peak_step: int
    typical_error: float = Field(description="From the checkpoint's calibration, else the clip's own median.")
    threshold: float
    model: str


class ActionSpace(BaseModel):
    low: list[float]
    high: list[float]
    units: str
    frame: str


class PlannerLimits(BaseModel):
    solvers: list[str]
    default_solver: str
    default_horizon: int
    default_samples: int
    default_iterations: int
    binary_dims: list[int] = Field(
        default_factory=list,
        description="Action dimensions the planner only commands at their bounds (the checkpoint's planner "
        "entry; docs/PLANNING.md), whatever the request's solver.")
    fixed_dims: dict[str, float] = Field(
        default_factory=dict,
        description="Action dimensions the planner holds at a value, {dimension: value} in normalized units "
        "(-1 is action_space.low, +1 high), whatever the request's solver.")
    max_horizon: int
    max_samples: int
    max_iterations: int
    max_batch: int
    max_history: int


class ModelInfo(BaseModel):
    name: str
    image_size: int
    preprocessing: dict[str, Any]
    action_space: ActionSpace
    history_len: int
    proprio_dim: int | None
    latent_dim: int
    goal_energy_threshold: float | None
    subgoal_energy_threshold: float | None = None
    """Energy at which a sub-goal counts as reached (`goal_reached` with `subgoal_index` < len(subgoals))."""
    camera: str | None = None
    """The camera the model's training images came from ("table", "workspace", or views joined by "+",
    e.g. "table+workspace": side by side in one image, each squeezed to half the columns, or whole when
    `preprocessing.views` is 2, an image_size x 2*image_size image): send the same."""
    objective: dict[str, Any] = {}
    """How plans are scored: planner.objectives.ObjectiveConfig (distance, reduce, disagreement, approach
    term, ...), the checkpoint's planner defaults included."""
    planner_limits: PlannerLimits


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ErrorResponse(BaseModel):
    detail: str
    request_id: str | None = None
