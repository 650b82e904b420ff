"""A checkpoint's own planner settings: config.json `planner` {solver, horizon, samples, iterations,
disagreement, binary_dims, fixed_dims, evidence}.

The best horizon (or budget) depends on the model: a model whose imagination drifts over many steps is
exploited by a long-horizon search (docs/BENCHMARKS.md, "Predictor or energy?"). So a checkpoint may
carry the settings measured best for it; every planner entry point (`planner eval`, `bench`, `plots`,
the server's `/v1/plan` defaults, `MPCAgent` itself) starts from them, and an explicit flag or request
field still wins. A missing entry or key means the planner-wide default (DEFAULT_HORIZON, the solver's
own budget). `evidence` says which measurement chose them (a results file and its command).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from planner.objectives import ObjectiveConfig
from planner.solvers import (
    SOLVERS,
    SolverConfig,
    make_solver,
    validate_action_dims,
    validate_budget,
    with_budget,
)

DEFAULT_HORIZON = 15
"""Planning horizon in control steps when neither the caller nor the checkpoint sets one."""
DEFAULT_SOLVER = "cem"
CONFIG_KEY = "planner"


COST_WEIGHTS = ("disagreement", "approach")
"""Entries that are weights of planner.objectives.ObjectiveConfig terms (finite, >= 0)."""


@dataclass(frozen=True)
class PlannerDefaults:
    """Planner settings a checkpoint ships with; None: the planner-wide default."""

    solver: str | None = None
    """Solver: cem | icem | mppi | cmaes | gd (None: DEFAULT_SOLVER)."""
    horizon: int | None = None
    """Planning horizon in control steps (None: DEFAULT_HORIZON)."""
    samples: int | None = None
    """Candidates per iteration; applies to `solver` only (another solver keeps its own default)."""
    iterations: int | None = None
    """Solver iterations; applies to `solver` only."""
    disagreement: float | None = None
    """Weight of the ensemble members' disagreement in the cost (planner.objectives.ObjectiveConfig; an
    ensemble checkpoint only; None: 0)."""
    approach: float | None = None
    """Weight of the push-approach term in the cost (planner.objectives.ObjectiveConfig.approach; a state
    energy head only; None: 0)."""
    binary_dims: tuple[int, ...] | None = None
    """Action dimensions every solver snaps to their bounds (planner.solvers.SolverConfig.binary_dims; the
    arm's gripper, 3, which the training data only opened or closed fully); None: none."""
    fixed_dims: dict[int, float] | None = None
    """Action dimensions every solver holds at a value, {dimension: value} in normalized units
    (planner.solvers.SolverConfig.fixed_dims; e.g. the gripper closed, {3: 1.0}); None: none."""
    evidence: str | None = None
    """The measurement that chose these settings (results file, command, figures)."""

    def __post_init__(self) -> None:
        if self.solver is not None and self.solver not in SOLVERS:
            raise ValueError(f"planner.solver must be one of {list(SOLVERS)}, got {self.solver!r}")
        for key in ("horizon", "samples", "iterations"):
            value = getattr(self, key)
            if value is not None:
                validate_budget(**{"samples": 1, "iterations": 1, "horizon": 1, key: value})
        if (self.samples is not None or self.iterations is not None) and self.solver is None:
            raise ValueError(
                "planner.samples / planner.iterations need planner.solver (budgets are per solver)")
        for key in COST_WEIGHTS:
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < float("inf")):
                raise ValueError(f"planner.{key} must be a finite number >= 0, got {value!r}")
        if self.binary_dims is not None:
            if not isinstance(self.binary_dims, (list, tuple)):
                raise ValueError(f"planner.binary_dims must be a list of action dimensions, got "
                                 f"{self.binary_dims!r}")
            object.__setattr__(self, "binary_dims", tuple(self.binary_dims))
        if self.fixed_dims is not None:
            if not isinstance(self.fixed_dims, dict):
                raise ValueError(f"planner.fixed_dims must map action dimensions to values, got "
                                 f"{self.fixed_dims!r}")
            try:  # config.json keys are strings
                fixed = {int(d): v for d, v in self.fixed_dims.items()}
            except ValueError as err:
                raise ValueError(f"planner.fixed_dims keys must be action dimensions, got "
                                 f"{list(self.fixed_dims)}") from err
            object.__setattr__(self, "fixed_dims", fixed)
        validate_action_dims(self.binary_dims or (), (self.fixed_dims or {}).items())
        if self.evidence is not None and not isinstance(self.evidence, str):
            raise ValueError(f"planner.evidence must be a string, got {type(self.evidence).__name__}")

    @classmethod
    def from_config(cls, config: dict) -> PlannerDefaults:
        """The checkpoint config's `planner` entry (absent or null: no defaults); ValueError if malformed."""
        entry = config.get(CONFIG_KEY) or {}
        if not isinstance(entry, dict):
            raise ValueError(f"config.json `{CONFIG_KEY}` must be an object, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"config.json `{CONFIG_KEY}` has unknown key(s) {unknown}; "
                             f"known: {list(cls.__dataclass_fields__)}")
        return cls(**entry)

    def to_dict(self) -> dict:
        """The config.json entry: only the keys that are set."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if "binary_dims" in out:
            out["binary_dims"] = list(out["binary_dims"])
        if "fixed_dims" in out:
            out["fixed_dims"] = {str(d): float(v) for d, v in out["fixed_dims"].items()}
        return out

    def objective(self, **overrides) -> ObjectiveConfig:
        """The planning objective: ObjectiveConfig's defaults, this checkpoint's disagreement and approach
        weights, then `overrides` (None values ignored)."""
        kw = {k: float(getattr(self, k)) for k in COST_WEIGHTS if getattr(self, k) is not None}
        return ObjectiveConfig(**kw | {k: v for k, v in overrides.items() if v is not None})

    def resolve(self, solver: str | None = None, horizon: int | None = None, samples: int | None = None,
                iterations: int | None = None, binary_dims: tuple[int, ...] | None = None,
                fixed_dims: dict[int, float] | None = None) -> tuple[SolverConfig, int]:
        """Explicit arguments over these defaults over the planner-wide ones -> (solver config, horizon).
        `binary_dims` and `fixed_dims` apply to whichever solver is picked (each replaces the stored one
        as a whole)."""
        name = solver or self.solver or DEFAULT_SOLVER
        cfg = make_solver(name)
        if name == self.solver:
            cfg = with_budget(cfg, samples=self.samples, iterations=self.iterations)
        cfg = with_budget(cfg, samples=samples, iterations=iterations)
        binary = tuple(binary_dims if binary_dims is not None else self.binary_dims or ())
        fixed = tuple((int(d), float(v)) for d, v in
                      (fixed_dims if fixed_dims is not None else self.fixed_dims or {}).items())
        validate_action_dims(binary, fixed, low=cfg.low, high=cfg.high)
        cfg = replace(cfg, binary_dims=binary, fixed_dims=fixed)
        h = self.resolve_horizon(horizon)
        validate_budget(cfg.samples, cfg.iterations, h)
        return cfg, h

    def resolve_horizon(self, horizon: int | None = None) -> int:
        """An explicit horizon, else this checkpoint's, else DEFAULT_HORIZON."""
        return int(horizon if horizon is not None else self.horizon if self.horizon is not None
                   else DEFAULT_HORIZON)
