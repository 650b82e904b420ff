"""MPCAgent: wires a loaded world model, an objective and a solver; the same code for eval, demo and server.

Per episode: `z_goal = agent.encode_goal(goal_image)`. Per control step:
`plan = agent.plan(images [B,K,S,S,3] uint8, prev_actions [B,K-1,A] native, z_goal [B,D], warm_start)`,
execute `plan.actions[:, 0]` (native units; `plan.actions_normalized[:, 0]` for a gymnasium env), and pass
`plan.warm_start` back next time with `executed_steps`. Warm starts are plain data (`WarmStart`, JSON-able
through to_dict/from_dict): the agent holds no per-episode state, so a server using it stays stateless.

goal_reached: the energy ||z_now - z_goal||_2 of the *current* observation is at most the checkpoint's
calibrated `goal_energy_threshold` (the threshold was calibrated on states, not on imagined latents).
`Plan.energy` is the energy of the plan's imagined final latent (the ensemble members' mean when the
objective weighs their disagreement).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from planner.objectives import (
    ApproachColumns,
    ObjectiveConfig,
    check_approach,
    energy,
    energy_space,
    make_objective,
)
from planner.planner_defaults import PlannerDefaults
from planner.preprocess import Preprocessing, images_to_model_input
from planner.solvers import (
    SolverConfig,
    make_solver,
    shift_plan,
    solve,
    validate_action_dims,
    validate_budget,
    with_action_dims,
    with_budget,
    with_fixed_dims,
)


@dataclass(frozen=True)
class ActionSpec:
    """Native action bounds: normalized -1 maps to `low`, +1 to `high` (per dimension)."""

    low: np.ndarray
    high: np.ndarray
    units: str = ""

    @classmethod
    def from_config(cls, action: dict) -> ActionSpec:
        """From a checkpoint config's `action` entry (dim, low, high, units)."""
        low = np.asarray(action["low"], dtype=np.float32)
        high = np.asarray(action["high"], dtype=np.float32)
        if low.shape != high.shape or low.ndim != 1 or not np.all(high > low):
            raise ValueError(f"action spec needs 1-D low < high of equal length, got low={low}, high={high}")
        return cls(low=low, high=high, units=str(action.get("units", "")))

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    def to_native(self, a: np.ndarray) -> np.ndarray:
        """normalized [..., A] -> native [..., A], clipped to [low, high]."""
        a = np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low)

    def to_normalized(self, native: np.ndarray) -> np.ndarray:
        """native [..., A] -> normalized [..., A] in [-1, 1] (clipped to the bounds first)."""
        native = np.clip(np.asarray(native, dtype=np.float32), self.low, self.high)
        return (native - self.low) / (self.high - self.low) * 2.0 - 1.0


@dataclass(frozen=True)
class WarmStart:
    """The previous plan (normalized actions [H][A]) and what produced it; pass back unchanged."""

    model: str
    solver: str
    horizon: int
    action_dim: int
    actions: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict:
        return dict(
            model=self.model,
            solver=self.solver,
            horizon=self.horizon,
            action_dim=self.action_dim,
            actions=[list(r) for r in self.actions],
        )

    @classmethod
    def from_dict(cls, d: dict) -> WarmStart:
        """Parse and validate; raises ValueError saying what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"warm_start must be an object as returned by plan, got {type(d).__name__}")
        missing = [k for k in ("model", "solver", "horizon", "action_dim", "actions") if k not in d]
        if missing:
            raise ValueError(f"warm_start lacks {missing}; send back the warm_start a plan returned")
        try:
            arr = np.asarray(d["actions"], dtype=np.float64)
            horizon, action_dim = int(d["horizon"]), int(d["action_dim"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"warm_start is malformed: {e}") from e
        if arr.shape != (horizon, action_dim):
            raise ValueError(f"warm_start actions must be {horizon}x{action_dim}, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.abs(arr).max(initial=0.0) > 1.0 + 1e-6:
            raise ValueError("warm_start actions must be finite and within [-1, 1]")
        return cls(str(d["model"]), str(d["solver"]), horizon, action_dim, tuple(map(tuple, arr.tolist())))


@dataclass
class Plan:
    """Result of one MPC step for B problems (numpy, on the CPU).

    actions float32[B,H,A] native units (clipped to the action spec); actions_normalized float32[B,H,A];
    energy float32[B] of the imagined final latent (members' mean with disagreement > 0); current_energy
    float32[B] of the current observation; goal_reached bool[B] (current_energy <= goal_energy_threshold);
    plan_ms: wall time of this call; warm_start: one WarmStart per problem.
    """

    actions: np.ndarray
    actions_normalized: np.ndarray
    energy: np.ndarray
    current_energy: np.ndarray
    goal_reached: np.ndarray
    plan_ms: float
    warm_start: list[WarmStart]


class MPCAgent:
    """Plans with a loaded checkpoint (`planner.checkpoint.Loaded`) and a solver; holds no episode state.

    solver (a name or a full SolverConfig), horizon and objective default to the checkpoint's config.json
    `planner` entry, else the planner-wide defaults (planner.planner_defaults); a solver name picks up the
    checkpoint's budget for that solver.
    """

    def __init__(
        self,
        loaded,
        solver: SolverConfig | str | None = None,
        *,
        horizon: int | None = None,
        objective: ObjectiveConfig | None = None,
        device: str | torch.device = "cpu",
    ):
        self.loaded = loaded
        self.model = loaded.model
        self.name: str = loaded.name
        defaults = PlannerDefaults.from_config(loaded.config)
        if isinstance(solver, SolverConfig):  # the caller's full config: only the horizon comes from defaults
            self.solver, self.horizon = solver, defaults.resolve_horizon(horizon)
            validate_budget(solver.samples, solver.iterations, self.horizon)
        else:
            self.solver, self.horizon = defaults.resolve(solver, horizon)
        self.objective = objective or defaults.objective()
        self.device = torch.device(device)
        cfg = loaded.config
        self.action_spec = ActionSpec.from_config(cfg["action"])
        validate_action_dims(self.solver.binary_dims, self.solver.fixed_dims, len(self.action_spec.low),
                             self.solver.low, self.solver.high)
        self.history_len = int(cfg["history_len"])
        self.image_shape = Preprocessing.from_checkpoint_config(cfg).shape
        """(S, V*S, 3): what encode takes, V square views side by side (1 for most models)."""
        threshold = cfg.get("goal_energy_threshold")
        self.goal_energy_threshold = float("nan") if threshold is None else float(threshold)
        calibration = cfg.get("goal_energy_calibration") or {}
        subgoal = calibration.get("subgoal_threshold")
        self.subgoal_energy_threshold = self.goal_energy_threshold if subgoal is None else float(subgoal)
        weights = goal_energy_weights(calibration, getattr(self.model, "cfg", None))
        self.goal_energy_weights = None if weights is None else weights.to(self.device)
        self.approach_columns = ApproachColumns.from_config(cfg)
        check_approach(self.objective, self.approach_columns)  # at start-up, not on every plan

    def with_planner(
        self,
        solver: str | None = None,
        *,
        horizon: int | None = None,
        samples: int | None = None,
        iterations: int | None = None,
    ) -> MPCAgent:
        """A new agent sharing this model, with another solver and/or budget (validated); the action
        dimensions it snaps or fixes (`binary_dims`, `fixed_dims`) stay this agent's."""
        cfg = self.solver if solver is None or solver == self.solver.name else with_action_dims(
            make_solver(solver), self.solver)
        cfg = with_budget(cfg, samples=samples, iterations=iterations)
        other = object.__new__(MPCAgent)
        other.__dict__.update(self.__dict__)
        other.solver = cfg
        other.horizon = self.horizon if horizon is None else int(horizon)
        validate_budget(cfg.samples, cfg.iterations, other.horizon)
        return other

    def holding(self, fixed_dims: dict[int, float]) -> MPCAgent:
        """A new agent sharing this model whose plans also hold `fixed_dims` ({dimension: normalized value},
        e.g. a task stage's closed gripper); this agent when there is nothing to hold."""
        if not fixed_dims:
            return self
        other = object.__new__(MPCAgent)
        other.__dict__.update(self.__dict__)
        other.solver = with_fixed_dims(self.solver, fixed_dims, len(self.action_spec.low))
        return other

    # ------------------------------------------------------------------------------------------ encode

    def _check_images(self, images, shape_hint: str) -> np.ndarray:
        images = np.asarray(images)
        h, w, _ = self.image_shape
        if images.dtype != np.uint8 or images.shape[-3:] != self.image_shape:
            views = "" if w == h else f" and {w // h} views side by side ([..,S,{w},3])"
            raise ValueError(
                f"images must be {shape_hint} uint8 RGB with S={h} (this checkpoint's image size{views}; "
                f"preprocess with planner.preprocess.preprocess_image), got {images.dtype} {images.shape}"
            )
        return images

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """uint8 [N,S,S,3] -> latents float[N,D] on the agent's device."""
        images = self._check_images(images, "[N,S,S,3]")
        if images.ndim != 4:
            raise ValueError(f"images must be [N,S,S,3], got shape {images.shape}")
        return self.model.encode(images_to_model_input(images, device=self.device))

    def encode_goal(self, goal_image) -> torch.Tensor:
        """Goal image uint8 [S,S,3] -> float[D], or a batch [B,S,S,3] -> float[B,D]. Once per episode."""
        goal_image = self._check_images(goal_image, "[S,S,3] or [B,S,S,3]")
        if goal_image.ndim == 3:
            return self.encode(goal_image[None])[0]
        return self.encode(goal_image)

    # -------------------------------------------------------------------------------------------- plan

    def plan(
        self,
        images,
        prev_actions,
        goal_latents: torch.Tensor,
        warm_start: Sequence[WarmStart | None] | None = None,
        *,
        executed_steps: int = 1,
        seed: int = 0,
        subgoal: bool | Sequence[bool] = False,
    ) -> Plan:
        """One MPC step for B problems.

        images uint8 [B,K,S,S,3] (oldest first, K = history_len); prev_actions [B,K-1,A] native units
        (the actions taken between those frames); goal_latents float[B,D] from `encode_goal`;
        warm_start: None or one WarmStart|None per problem, shifted here by `executed_steps`; subgoal: per
        problem (or for all), whether its goal is a sub-goal: scored with the plain energy and judged
        reached at `subgoal_energy_threshold`; a final goal uses `goal_energy_weights` and
        `goal_energy_threshold`.
        """
        t0 = time.perf_counter()
        k, a_dim = self.history_len, self.action_spec.dim
        images = self._check_images(images, f"[B,{k},S,S,3]")
        if images.ndim != 5 or images.shape[1] != k:
            raise ValueError(f"images must be [B,{k},S,S,3] (history_len={k} frames, oldest first), "
                             f"got shape {images.shape}")
        b = images.shape[0]
        prev = np.asarray(prev_actions, dtype=np.float32)
        if prev.shape != (b, k - 1, a_dim):
            raise ValueError(f"prev_actions must be [B,K-1,A] = [{b},{k - 1},{a_dim}] (native units), "
                             f"got shape {prev.shape}")
        if not np.all(np.isfinite(prev)):
            raise ValueError("prev_actions contain NaN or inf")
        goal = torch.as_tensor(goal_latents, dtype=torch.float32).to(self.device)
        if goal.ndim != 2 or goal.shape[0] != b:
            raise ValueError(f"goal_latents must be [B,D] with B={b} (encode_goal), got {tuple(goal.shape)}")
        if not torch.isfinite(goal).all():
            raise ValueError("goal_latents contain NaN or inf")
        init = self._warm_init(warm_start, b, executed_steps)

        z = self.encode(images.reshape(b * k, *images.shape[2:])).view(b, k, -1)
        if goal.shape[1] != z.shape[-1]:
            raise ValueError(f"goal latents have dim {goal.shape[1]}, this model's latents {z.shape[-1]}")
        a_prev = torch.as_tensor(self.action_spec.to_normalized(prev), device=self.device)
        to_goal = ~np.broadcast_to(np.asarray(subgoal, dtype=bool), (b,))  # final goals, not sub-goals
        weights = None
        if self.goal_energy_weights is not None and to_goal.any() and self.objective.space == "latent":
            weights = torch.ones(b, len(self.goal_energy_weights), device=self.device)
            weights[torch.as_tensor(to_goal, device=self.device)] = self.goal_energy_weights
        objective = make_objective(self.model, z, a_prev, goal, self.objective, energy_weights=weights,
                                   approach_columns=self.approach_columns)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        sol = solve(objective, self.solver, batch=b, horizon=self.horizon, action_dim=a_dim,
                    init=init, generator=gen, device=self.device)
        with torch.no_grad():
            embed = energy_space(self.model, weights)  # the objective's space, weights and all
            e_goal = embed(goal)
            if self.objective.disagreement > 0:  # the members' mean, as the objective sees the plan
                finals = self.model.rollout_members(z, a_prev, sol.actions[:, None])[:, :, 0, -1]  # [M,B,D]
                e_plan = torch.stack([energy(embed(f), e_goal) for f in finals]).mean(0).cpu().numpy()
            else:
                final = self.model.rollout(z, a_prev, sol.actions[:, None])[:, 0, -1]
                e_plan = energy(embed(final), e_goal).cpu().numpy()
            e_now = energy(embed(z[:, -1]), e_goal).cpu().numpy()
        thresholds = np.where(to_goal, self.goal_energy_threshold, self.subgoal_energy_threshold)
        norm = sol.actions.detach().cpu().numpy().astype(np.float32)
        state = sol.state.detach().cpu().numpy()
        warm = [
            WarmStart(self.name, self.solver.name, self.horizon, a_dim, tuple(map(tuple, state[i].tolist())))
            for i in range(b)
        ]
        return Plan(
            actions=self.action_spec.to_native(norm),
            actions_normalized=norm,
            energy=e_plan.astype(np.float32),
            current_energy=e_now.astype(np.float32),
            goal_reached=e_now <= thresholds,
            plan_ms=(time.perf_counter() - t0) * 1e3,
            warm_start=warm,
        )

    def _warm_init(self, warm_start, b: int, executed_steps: int) -> torch.Tensor | None:
        """Validated warm starts -> shifted init float[B,H,A] (zeros where a problem has none), or None."""
        if warm_start is None:
            return None
        if isinstance(warm_start, (WarmStart, dict)):
            warm_start = [warm_start]
        if len(warm_start) != b:
            raise ValueError(f"got {len(warm_start)} warm starts for {b} problems; pass one (or None) each")
        if not isinstance(executed_steps, int) or executed_steps < 0:
            raise ValueError(f"executed_steps must be a non-negative integer, got {executed_steps!r}")
        rows = []
        for ws in warm_start:
            if ws is None:
                rows.append(np.zeros((self.horizon, self.action_spec.dim)))
                continue
            ws = WarmStart.from_dict(ws) if isinstance(ws, dict) else ws
            self.check_warm_start(ws)
            rows.append(np.asarray(ws.actions))
        if all(ws is None for ws in warm_start):
            return None
        init = torch.as_tensor(np.stack(rows), dtype=torch.float32, device=self.device)
        return shift_plan(init, executed_steps)

    def check_warm_start(self, ws: WarmStart) -> None:
        """Raise ValueError unless `ws` came from this model with this solver shape."""
        want = (self.name, self.solver.name, self.horizon, self.action_spec.dim)
        got = (ws.model, ws.solver, ws.horizon, ws.action_dim)
        if got != want:
            raise ValueError(
                "warm_start does not fit this planner: it is from model/solver/horizon/action_dim "
                f"{got}, this planner is {want}; drop warm_start to start fresh"
            )


SUBGOAL_MIN_IMPROVEMENT = 0.05
"""SubgoalPatience: an energy counts as progress on a sub-goal only when it is this fraction below the best
so far on it."""


@dataclass
class SubgoalPatience:
    """Per-episode state of the stall rule: a sub-goal whose energy has made no progress (a new best by
    SUBGOAL_MIN_IMPROVEMENT) in `patience` planning calls is given up, and the agent plans to the next
    target. `skipped` lists the sub-goals given up, in order."""

    patience: int
    best: float = float("inf")
    stalled: int = 0
    skipped: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"sub-goal patience must be a positive number of planning calls, got "
                             f"{self.patience!r}")

    def stalled_on(self, current_energy: float) -> bool:
        """Count one planning call at `current_energy`; True once the sub-goal has stalled."""
        if current_energy < self.best * (1.0 - SUBGOAL_MIN_IMPROVEMENT):
            self.best, self.stalled = current_energy, 0
        else:
            self.stalled += 1
        return self.stalled >= self.patience

    def next_target(self) -> None:
        self.best, self.stalled = float("inf"), 0


def stage_agents(agent, stage_fixed_dims: list[dict[int, float]] | None):
    """One agent per planning stage holding that stage's action dimensions (reset info `stage_fixed_dims`,
    e.g. pick-and-place's closed gripper from the lift on); `agent` itself when nothing is held or it does
    not plan (a gcbc policy)."""
    if not stage_fixed_dims or not any(stage_fixed_dims) or not isinstance(agent, MPCAgent):
        return agent
    return [agent.holding(fixed) for fixed in stage_fixed_dims]


def plan_through_subgoals(agent: MPCAgent | Sequence[MPCAgent], images, prev_actions,
                          targets: list[torch.Tensor], target: int,
                          warm: Sequence[WarmStart | None] | None, *, threshold: float,
                          executed_steps: int = 1, seed: int = 0, patience: SubgoalPatience | None = None,
                          ) -> tuple[Plan, int, list[int], list[float]]:
    """One MPC step of one episode toward targets[target] (each float[1,D]; sub-goals first, the goal
    last; `agent` one for all or one per target, e.g. `MPCAgent.holding` a stage's closed gripper). While
    the current observation is already within `threshold` energy of a sub-goal, that sub-goal counts as
    reached and the agent plans again, to the next target, without a warm start; with `patience`, so does a
    sub-goal that has stalled (recorded in `patience.skipped`, not as reached). images uint8 [K,S,S,3],
    prev_actions [K-1,A] (pad_history) -> (plan, target index now, indices of the sub-goals reached in this
    step, plan_ms of every planning call)."""
    passed, plan_ms = [], []
    while True:
        planner = agent[target] if isinstance(agent, Sequence) else agent
        plan = planner.plan(images[None], prev_actions[None], targets[target], warm,
                          executed_steps=executed_steps, seed=seed, subgoal=target < len(targets) - 1)
        plan_ms.append(plan.plan_ms)
        if target == len(targets) - 1:
            return plan, target, passed, plan_ms
        now = float(plan.current_energy[0])
        if now <= threshold:  # NaN threshold: never
            passed.append(target)
        elif patience is not None and patience.stalled_on(now):
            patience.skipped.append(target)
        else:
            return plan, target, passed, plan_ms
        target, warm = target + 1, None
        if patience is not None:
            patience.next_target()


def goal_energy_weights(calibration: dict, model_cfg) -> torch.Tensor | None:
    """float[E] weights of the energy space's columns for final goals, from a goal calibration made with
    `planner calibrate --goal-proprio-weight W` (`proprio_weight` W on its first `proprio_dims` columns, a
    state head's proprio readout); None when W is 1 or absent."""
    from planner.energy_head import state_column_weights

    weight = float(calibration.get("proprio_weight", 1.0))
    if weight == 1.0:
        return None
    e_dim = int(getattr(model_cfg, "energy_head_dim", 0) or 0)
    return state_column_weights(e_dim, int(calibration["proprio_dims"]), weight)


def pad_history(frames: list[np.ndarray], actions: list[np.ndarray], k: int, zero_action: np.ndarray):
    """Last k frames (uint8 [S,S,3] each) and the k-1 actions between them, padded at the start.

    Before k frames exist the first frame repeats and the missing actions are `zero_action` (native).
    Returns (images uint8 [k,S,S,3], actions float32 [k-1,A]).
    """
    frames = frames[-k:]
    acts = list(actions[-(k - 1):]) if k > 1 else []
    missing = k - len(frames)
    imgs = [frames[0]] * missing + frames
    acts = [zero_action] * (k - 1 - len(acts)) + acts
    a = np.asarray(acts, dtype=np.float32).reshape(k - 1, zero_action.shape[0])
    return np.stack(imgs), a

