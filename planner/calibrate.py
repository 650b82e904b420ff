"""`planner calibrate`: recompute a checkpoint's goal_reached energy threshold on a trajectory store.

The same rule `planner train` applies at the end of training (planner.train.calibrate_goal_threshold),
for when the rule's margin changes, or the checkpoint should be calibrated on other data of the same
robot. Rewrites config.json and card.md atomically, keeping the card's hand-written "## Results" sections;
the weights (and so the model's name) are unchanged.

    planner calibrate --checkpoint checkpoints/arm-reach --data data/reach1k [--margin 0.5]

`--goal-proprio-weight W` (a state energy head only) weighs the head's proprio columns (the hand) W times
in the energy to a *final* goal, so that the planner drives the task state (the block) there and the
arm's pose in the goal image counts less; `goal_energy_threshold` is then calibrated for that energy and
the plain energy's threshold, which sub-goals keep, is recorded as `subgoal_threshold`. MPCAgent reads the
weight from the calibration, so the threshold and the energy it was calibrated for never part.

`--subgoal-success-threshold S` (a state head with proprio columns) calibrates the sub-goals' threshold
on its own: the same rule on the plain energy, for frame pairs whose hand and task state together differ
by less than S metres. A pick-and-place sub-goal (hand over the block, grasp) is about the hand, which the
final goal's block-only calibration does not see; MPCAgent (eval and the server) reads it as
`subgoal_threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from planner.cli import invoked_command


@dataclass
class CalibrateConfig:
    """Recalibrate a checkpoint's goal_reached energy threshold on a trajectory store."""

    checkpoint: Path
    """Checkpoint directory to update."""
    data: Path
    """Trajectory store of the robot the checkpoint serves (its validation split is left out)."""
    margin: float = 0.5
    """Calibrate for this fraction of the task's success distance."""
    episodes: int = 200
    """Training episodes (spread over the store) to calibrate on."""
    val_fraction: float = 0.1
    """Share of episodes (the highest indices) left out, as in training."""
    success_threshold: float | None = None
    """Task success distance [m]; default: the one recorded in the checkpoint, else the env's task spec."""
    goal_proprio_weight: float = 1.0
    """Weight of a state head's proprio columns in the final goal's energy (1: as fitted; sub-goals always
    use the plain energy)."""
    subgoal_success_threshold: float | None = None
    """Calibrate the sub-goals' threshold for pairs whose hand (the state head's proprio columns) and task
    state differ by less than this [m]; default: sub-goals keep the plain energy's goal threshold."""
    device: str = "cpu"
    """Torch device."""


def run(cfg: CalibrateConfig) -> dict:
    from planner import checkpoint
    from planner.data import split_episodes
    from planner.store import StoreError, TrajectoryStore
    from planner.train import TrainConfig, calibrate_goal_threshold, spread, task_success_threshold

    if not 0 < cfg.margin <= 1:
        raise ValueError(f"--margin must be in (0, 1], got {cfg.margin}")
    if not 0 <= cfg.goal_proprio_weight < float("inf"):
        raise ValueError(f"--goal-proprio-weight must be a finite number >= 0, got {cfg.goal_proprio_weight}")
    subgoal = cfg.subgoal_success_threshold
    if subgoal is not None and not 0 < subgoal < float("inf"):
        raise ValueError(f"--subgoal-success-threshold must be a finite distance > 0 [m], got {subgoal}")
    loaded = checkpoint.load(cfg.checkpoint, cfg.device)
    proprio_dims = state_head_proprio_dims(loaded.config)
    for flag, asked in (("--goal-proprio-weight", cfg.goal_proprio_weight != 1.0),
                        ("--subgoal-success-threshold", subgoal is not None)):
        if asked and not proprio_dims:
            raise ValueError(f"{flag} needs a state energy head that reads proprio columns (planner "
                             f"fit-energy-head --energy-head.kind state); {cfg.checkpoint} has none")
    try:
        store = TrajectoryStore.open(cfg.data)
    except StoreError as e:
        raise ValueError(str(e)) from e
    config = loaded.config
    if store.meta.image_size != config["image"]["size"] or store.meta.action_dim != config["action"]["dim"]:
        raise ValueError(f"{cfg.data} holds {store.meta.image_size}px images and {store.meta.action_dim}-d "
                         f"actions; {cfg.checkpoint} expects {config['image']['size']}px and "
                         f"{config['action']['dim']}-d")
    recorded = (config.get("goal_energy_calibration") or {}).get("task_success_threshold")
    success = cfg.success_threshold or recorded
    if success is None:
        success = task_success_threshold(TrainConfig(data=cfg.data, out=cfg.checkpoint), store.meta)
    train_eps, _ = split_episodes(store.indices(), cfg.val_fraction)
    model = loaded.model.eval()
    with torch.no_grad():
        result = calibrate_goal_threshold(model, store, spread(train_eps, cfg.episodes), float(success),
                                          cfg.margin, cfg.device, proprio_weight=cfg.goal_proprio_weight,
                                          proprio_dims=proprio_dims, subgoal_success_threshold=subgoal)
    command = invoked_command("calibrate")
    name = checkpoint.update_config(cfg.checkpoint, loaded, {
        "goal_energy_threshold": result["threshold"],
        "goal_energy_calibration": result,
        "commands": [*config.get("commands", []), *([command] if command else [])],
    })
    print(f"{name}: goal_energy_threshold {config.get('goal_energy_threshold')} -> {result['threshold']:.4g} "
          f"(margin {cfg.margin}, {result['source']} pairs, recall {result['recall']:.0%}, "
          f"false accept {result['false_accept_rate']:.2%})")
    if subgoal is not None:
        sub = result["subgoal_calibration"]
        print(f"sub-goals: threshold {result['subgoal_threshold']:.4g} for hand and task state within "
              f"{subgoal:g} m (recall {sub['recall']:.0%}, false accept {sub['false_accept_rate']:.2%})")
    return result


def state_head_proprio_dims(config: dict) -> int:
    """How many proprio columns lead a checkpoint's state energy head's readout (0: no state head)."""
    from planner.checkpoint import energy_head_config

    head = energy_head_config(config)
    if head.get("kind") != "state" or not config.get("architecture", {}).get("energy_head_dim"):
        return 0
    return int(head.get("state_proprio_dims", 0))
