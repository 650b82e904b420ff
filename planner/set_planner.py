"""`planner set-planner`: store the planner settings measured best for a checkpoint in its config.json.

Writes the `planner` entry (planner.planner_defaults) that `planner eval`, `bench`, `plots`, the server
and `MPCAgent` start from; flags given to those still win. The weights, and so the model's name, are
unchanged; config.json and card.md are rewritten atomically (the card keeps its hand-written Results).

    planner set-planner --checkpoint checkpoints/arm-push --horizon 8 \\
        --evidence "docs/results/push_s6_state_horizon8_eval_0-99.json: 24% vs 17% at horizon 15"
    planner set-planner --checkpoint checkpoints/arm-push --clear
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import tyro

from planner.objectives import ApproachColumns
from planner.planner_defaults import CONFIG_KEY, PlannerDefaults
from planner.solvers import validate_action_dims


@dataclass
class SetPlannerConfig:
    """Store (or --clear) a checkpoint's default planner settings."""

    checkpoint: Path
    """Checkpoint directory to update."""
    settings: tyro.conf.OmitArgPrefixes[PlannerDefaults] = field(default_factory=PlannerDefaults)
    """The entry to store (flags --solver, --horizon, --samples, --iterations, --disagreement, --approach,
    --binary-dims, --fixed-dims, --evidence;
    --evidence is required unless --clear)."""
    clear: bool = False
    """Remove the entry: the checkpoint plans with the planner-wide defaults again."""


def run(cfg: SetPlannerConfig) -> dict:
    """Validate and write the entry; returns it ({} after --clear)."""
    from planner import checkpoint
    from planner.cli import invoked_command

    given = {k: v for k, v in asdict(cfg.settings).items() if v is not None and k != "evidence"}
    evidence = (cfg.settings.evidence or "").strip()
    if cfg.clear and (given or evidence):
        raise ValueError("--clear takes no other settings")
    if not cfg.clear:
        if not given:
            raise ValueError("give at least one of --solver, --horizon, --samples, --iterations, "
                             "--disagreement, --approach, --binary-dims, --fixed-dims (or --clear)")
        if not evidence:
            raise ValueError("--evidence is required: say which measurement chose these settings")
    settings = None if cfg.clear else PlannerDefaults(**given, evidence=evidence)
    entry = {} if settings is None else settings.to_dict()
    loaded = checkpoint.load(cfg.checkpoint)
    if entry.get("disagreement") and getattr(loaded.model.cfg, "pred_ensemble", 1) < 2:
        raise ValueError(f"--disagreement needs an ensemble checkpoint (`planner ensemble`); {loaded.name} "
                         "has one predictor")
    if entry.get("approach") and ApproachColumns.from_config(loaded.config) is None:
        raise ValueError(f"--approach needs a state energy head that reads the hand's and the block's xy; "
                         f"{loaded.name} has none (planner fit-energy-head --energy-head.kind state)")
    if settings is not None:
        validate_action_dims(settings.binary_dims or (), (settings.fixed_dims or {}).items(),
                             int(loaded.config["action"]["dim"]))
    command = invoked_command("set-planner")
    updates = {"commands": [*loaded.config.get("commands", []), *([command] if command else [])]}
    if entry:
        updates[CONFIG_KEY] = entry
    checkpoint.update_config(cfg.checkpoint, loaded, updates, remove=() if entry else (CONFIG_KEY,))
    print(f"{loaded.name}: planner defaults {entry or 'cleared (planner-wide defaults)'}")
    return entry
