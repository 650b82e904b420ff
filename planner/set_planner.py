"""`planner set-planner`: store the planner settings measured best for a checkpoint in its config.json.

Writes the `planner` entry (planner.planner_defaults) that `planner eval`, `bench`, `plots`, the server
and `MPCAgent` start from; flags given to those still win. The weights, and so the model's name, are
unchanged; config.json and card.md are rewritten atomically (the card keeps its hand-written Results).

    planner set-planner --checkpoint checkpoints/arm-push --horizon 8 \\
        --evidence "docs/results/push_s6_state_horizon8_eval_0-99.json: 24% vs 17% at horizon 15"
    planner set-planner --checkpoint checkpoints/arm-push --clear
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class SetPlannerConfig:
    """Store (or --clear) a checkpoint's default planner settings."""

    checkpoint: Path
    """Checkpoint directory to update."""
    solver: str | None = None
    """Default solver (cem | icem | mppi | cmaes | gd); unset: cem."""
    horizon: int | None = None
    """Default planning horizon; unset: 15."""
    samples: int | None = None
    """Default candidates per iteration for --solver; unset: the solver's."""
    iterations: int | None = None
    """Default iterations for --solver; unset: the solver's."""
    disagreement: float | None = None
    """Default weight of the ensemble members' disagreement in the cost (an ensemble checkpoint); unset: 0."""
    evidence: str | None = None
    """The measurement behind these settings (results file, command, figures); required unless --clear."""
    clear: bool = False
    """Remove the entry: the checkpoint plans with the planner-wide defaults again."""


def run(cfg: SetPlannerConfig) -> dict:
    """Validate and write the entry; returns it ({} after --clear)."""
    from planner import checkpoint
    from planner.cli import invoked_command
    from planner.planner_defaults import CONFIG_KEY, PlannerDefaults

    settings = (cfg.solver, cfg.horizon, cfg.samples, cfg.iterations, cfg.disagreement)
    if cfg.clear and (any(v is not None for v in settings) or cfg.evidence):
        raise ValueError("--clear takes no other settings")
    if not cfg.clear:
        if all(v is None for v in settings):
            raise ValueError("give at least one of --solver, --horizon, --samples, --iterations, "
                             "--disagreement (or --clear)")
        if not (cfg.evidence or "").strip():
            raise ValueError("--evidence is required: say which measurement chose these settings")
    entry = {} if cfg.clear else PlannerDefaults(*settings, evidence=cfg.evidence.strip()).to_dict()
    loaded = checkpoint.load(cfg.checkpoint)
    if entry.get("disagreement") and getattr(loaded.model.cfg, "pred_ensemble", 1) < 2:
        raise ValueError(f"--disagreement needs an ensemble checkpoint (`planner ensemble`); {loaded.name} "
                         "has one predictor")
    command = invoked_command("set-planner")
    updates = {"commands": [*loaded.config.get("commands", []), *([command] if command else [])]}
    if entry:
        updates[CONFIG_KEY] = entry
    checkpoint.update_config(cfg.checkpoint, loaded, updates, remove=() if entry else (CONFIG_KEY,))
    print(f"{loaded.name}: planner defaults {entry or 'cleared (planner-wide defaults)'}")
    return entry
