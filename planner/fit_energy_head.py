"""`planner fit-energy-head`: fit a checkpoint's energy head again (on its frozen latents) and recalibrate
its goal-energy threshold; the encoder and the predictor are kept bit for bit.

Use it to change the kind of planning distance without retraining the world model: `--energy-head.kind
state` reads the recorded proprio and task state (a distance in metres in our arm envs; docs/MODEL.md,
"The energy head"), `reachability` (the default of `planner train`) is the self-supervised steps-to-goal
distance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from planner.cli import invoked_command
from planner.energy_head import EnergyHeadConfig


@dataclass
class FitEnergyHeadConfig:
    """Fit a checkpoint's energy head again on its frozen latents; write a new, recalibrated checkpoint."""

    checkpoint: Path
    """Source checkpoint (a `jepa` model)."""
    data: Path
    """Trajectory store (the one the checkpoint was trained on: its held-out episodes stay out)."""
    out: Path
    """Checkpoint directory to write (atomically)."""
    extra_data: tuple[Path, ...] = ()
    """More stores of the same env whose episodes all join the fit, e.g. the planner's own episodes
    (`planner collect --policy planner`), whose states (the hand resting at the block, blocks pushed off
    line) the explore data holds few of. The goal threshold is still calibrated on --data."""
    energy_head: EnergyHeadConfig = field(default_factory=EnergyHeadConfig)
    """The head to fit (`--energy-head.kind state` for a state readout)."""
    episodes: int = 2000
    """Training episodes (spread over the split) the head is fitted on."""
    margin: float = 0.5
    """Goal threshold: calibrated for this fraction of the task's success distance (`planner calibrate`)."""
    calibration_episodes: int = 200
    """Training episodes the goal threshold is calibrated on."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""
    threads: int = 1
    """torch CPU threads."""
    progress: bool = True
    """Show tqdm progress."""


def run(cfg: FitEnergyHeadConfig) -> Path:
    """Fit, attach, calibrate, write; returns the new checkpoint's path."""
    from planner import checkpoint
    from planner.frozen import open_extra_stores, open_frozen
    from planner.train import attach_fitted_head, calibrate_goal_threshold, spread

    if not 0 < cfg.margin <= 1:
        raise ValueError(f"--margin must be in (0, 1], got {cfg.margin}")
    if cfg.episodes < 1 or cfg.calibration_episodes < 1:
        raise ValueError(f"--episodes and --calibration-episodes must be >= 1, got {cfg.episodes}, "
                         f"{cfg.calibration_episodes}")
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    loaded, store, train_idx, _, _ = open_frozen(cfg.checkpoint, cfg.data, device, "fit-energy-head")
    extra = open_extra_stores(cfg.extra_data, store)
    model = loaded.model
    calibration = loaded.config.get("goal_energy_calibration") or {}
    success = calibration.get("task_success_threshold")
    if success is None:
        from planner.quality import task_success_threshold

        success = task_success_threshold(store.meta.env_id, store.meta.env_kwargs)
    fit = attach_fitted_head(model, store, spread(train_idx, cfg.episodes), cfg.energy_head, device,
                             progress=cfg.progress, extra=extra)
    threshold = calibrate_goal_threshold(model, store, spread(train_idx, cfg.calibration_episodes),
                                         float(success), cfg.margin, device)
    command = invoked_command("fit-energy-head")
    extra_episodes = {str(p): len(st) for p, st in zip(cfg.extra_data, extra, strict=True)}
    drop = set(checkpoint.FILLED_BY_SAVE)
    if (loaded.config.get("surprise") or {}).get("score") == "energy":
        drop.add("surprise")  # measured in the old head's space: planner surprise --save-calibration again
    config = {key: v for key, v in loaded.config.items() if key not in drop}
    metrics = {key: v for key, v in config.get("metrics", {}).items() if not key.startswith("energy_")}
    config.update(
        metrics=metrics | fit,
        goal_energy_threshold=threshold["threshold"],
        goal_energy_calibration=threshold,
        energy_head_fit={"source": loaded.name, "data": str(cfg.data), "episodes": cfg.episodes,
                         "extra_episodes": extra_episodes, "config": asdict(cfg.energy_head)},
        commands=[*config.get("commands", []), *([command] if command else [])],
    )
    extra_note = "".join(f" + `{p}`" for p in cfg.extra_data)
    tail = (f"\n## Energy head\n\nFitted again on the frozen latents of `{cfg.data}`{extra_note} by `planner "
            f"fit-energy-head` (kind `{cfg.energy_head.kind}`); encoder and predictor are `{loaded.name}`'s. "
            f"Goal threshold {threshold['threshold']:.4g} (margin {cfg.margin}, recall "
            f"{threshold['recall']:.0%}, false accept {threshold['false_accept_rate']:.2%}).\n")
    checkpoint.save(cfg.out, model, config, card_tail=tail)
    print(f"wrote {cfg.out} ({checkpoint.checkpoint_name(cfg.out)}): {cfg.energy_head.kind} head, goal "
          f"threshold {threshold['threshold']:.4g} (recall {threshold['recall']:.0%}, false accept "
          f"{threshold['false_accept_rate']:.2%}); fit {fit}")
    return Path(cfg.out)
