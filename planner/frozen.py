"""A JEPA checkpoint and the store it was trained on, opened for a stage fitted on its frozen encoder
(`planner refit-predictor`, `planner fit-energy-head`)."""

from __future__ import annotations

from pathlib import Path

import torch


def open_frozen(checkpoint_path: Path, data: Path, device: torch.device, stage: str):
    """-> (loaded checkpoint, TrajectoryStore, train indices, validation indices, where the split came from).

    Refuses (ValueError, saying what to change) a checkpoint without a latent encoder + predictor and a
    store whose image size or action dimension differs from the model's; the split is the one the
    checkpoint recorded (planner.quality.split_indices), so its held-out episodes stay held out."""
    from planner import checkpoint
    from planner.quality import split_indices
    from planner.store import TrajectoryStore
    from planner.world_model import WorldModel

    loaded = checkpoint.load(checkpoint_path, device=device)
    model = loaded.model
    if not isinstance(model, WorldModel):
        raise ValueError(f"{checkpoint_path}: model_type {loaded.config['model_type']!r} has no latent "
                         f"encoder and predictor for {stage} (a `jepa` checkpoint is needed)")
    store = TrajectoryStore.open(data)
    if store.meta.image_size != model.cfg.image_size or store.meta.action_dim != model.cfg.action_dim:
        raise ValueError(f"store {data} ({store.meta.image_size}px, action dim {store.meta.action_dim}) "
                         f"does not match {checkpoint_path} ({model.cfg.image_size}px, action dim "
                         f"{model.cfg.action_dim}): use the store it was trained on")
    train_idx, val_idx, source = split_indices(store.indices(), loaded.config)
    return loaded, store, train_idx, val_idx, source


MIXABLE_META = ("env_id", "preprocessing", "action_spec", "task_state_spec")
"""Store meta fields that must agree for --extra-data episodes to train beside --data's."""


def open_extra_stores(paths, store, error: type[ValueError] = ValueError) -> list:
    """The --extra-data stores, each checked against the --data store (same env, image rule, action and
    task-state specs) and holding at least one episode; else `error` naming the difference."""
    from planner.store import TrajectoryStore

    extra = []
    for path in paths:
        other = TrajectoryStore.open(path)
        differ = other.meta.incompatibilities({k: getattr(store.meta, k) for k in MIXABLE_META})
        if differ:
            raise error(f"--extra-data {path} does not match --data {store.path} (requested): "
                        + "; ".join(differ))
        if len(other) == 0:
            raise error(f"--extra-data {path} holds no complete episode")
        extra.append(other)
    return extra
