"""`planner import`: turn a recorded robot dataset (LeRobot v3.0/v2.x, robomimic) into a trajectory store.

The store is written into a hidden temp directory beside --out and renamed at the end, so a failed import
leaves nothing behind. See docs/IMPORT.md for the mapping of each format onto the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from planner.importers.common import DatasetImportError, import_into_store, require_packages
from planner.importers.video import VideoError
from planner.preprocess import Preprocessing
from planner.store import TrajectoryStore

__all__ = ["DatasetImportError", "ImportConfig", "VideoError", "import_dataset", "open_source", "run"]


@dataclass
class ImportConfig:
    """Import a recorded robot dataset into a new trajectory store."""

    format: Literal["lerobot", "robomimic"]
    """Source format: `lerobot` (a LeRobotDataset directory, codebase_version v3.0, v2.1 or v2.0) or
    `robomimic` (an .hdf5 file)."""
    src: tyro.conf.Positional[Path]
    """The source: a LeRobot dataset directory (with meta/info.json) or a robomimic .hdf5 file."""
    out: Path
    """New store directory (must not exist, or be empty)."""
    camera: str | None = None
    """Camera feature to import (e.g. `observation.images.front`, `agentview_image`); required when the
    source has several."""
    state: str | None = None
    """Proprio feature(s), comma-separated and concatenated in order (default: `observation.state` for
    LeRobot; robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos for robomimic)."""
    action: str | None = None
    """Action feature (default: `action` for LeRobot, `actions` for robomimic)."""
    image_size: int = 64
    """Stored image side in pixels (the shared preprocessing rule; the model's input size)."""
    crop: Literal["center", "none"] = "center"
    """`center`: crop the largest centred square before resizing; `none`: squash the full frame."""
    episodes: int | None = None
    """Import only the first N episodes (all by default)."""
    fps: float | None = None
    """Control rate in Hz, only for a robomimic file whose env_args lack env_kwargs.control_freq."""
    filter_key: str | None = None
    """robomimic only: import the demos listed under mask/<filter_key> (e.g. `train`)."""
    flip_vertical: bool = False
    """robomimic only: flip images upside down (robosuite renders some cameras bottom-up)."""
    progress: bool = True
    """Show progress bars."""


def open_source(cfg: ImportConfig):
    """The reader for cfg.format (a `planner.importers.common.Source`)."""
    if cfg.format == "lerobot":
        from planner.importers.lerobot import LeRobotSource

        require_packages("pyarrow", "av")

        for flag, value in (("--fps", cfg.fps), ("--filter-key", cfg.filter_key)):
            if value is not None:
                raise DatasetImportError(f"{flag} is for robomimic; LeRobot datasets record it themselves")
        return LeRobotSource(cfg.src, cfg.camera, cfg.state, cfg.action, max_episodes=cfg.episodes)
    if cfg.format == "robomimic":
        from planner.importers.robomimic import RobomimicSource

        require_packages("h5py")

        return RobomimicSource(
            cfg.src, cfg.camera, cfg.state, cfg.action, fps=cfg.fps, filter_key=cfg.filter_key,
            flip_vertical=cfg.flip_vertical, max_episodes=cfg.episodes,
        )  # fmt: skip
    raise DatasetImportError(f"--format must be lerobot or robomimic, got {cfg.format!r}")


def import_dataset(cfg: ImportConfig) -> TrajectoryStore:
    """Read cfg.src and write a new store at cfg.out; returns the opened store."""
    if cfg.episodes is not None and cfg.episodes < 1:
        raise DatasetImportError(f"--episodes must be >= 1, got {cfg.episodes}")
    rule = Preprocessing(size=cfg.image_size, crop=cfg.crop)
    source = open_source(cfg)
    try:
        return import_into_store(source, Path(cfg.out), rule, progress=cfg.progress)
    finally:
        source.close()


def run(cfg: ImportConfig) -> None:
    try:
        store = import_dataset(cfg)
    except (DatasetImportError, VideoError) as exc:
        raise SystemExit(f"planner import: {exc}") from exc
    m = store.meta
    print(
        f"imported {len(store)} episodes ({m.env_id} {m.env_kwargs.get('codebase_version', '')}".rstrip()
        + f") into "
        f"{store.path}: images {m.image_size}px from {m.env_kwargs['camera']}, action dim "
        f"{m.action_dim} (bounds: {m.action_spec['bounds_source']}), proprio dim {m.proprio_spec['dim']}, "
        f"{m.control_hz:g} Hz"
    )
