"""What every importer shares: the aligned episode, action bounds, and the atomic write into a store.

Convention (ours, see docs/STORE.md): an episode is T actions between T+1 observations; action t is
taken at observation t and leads to observation t+1. Imported data has no simulator, so `snapshots` are
empty ([T+1, 0]) and `task_state` is the source's environment state when it has one, else the proprio.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from planner.preprocess import Preprocessing
from planner.store import Episode, StoreMeta, TrajectoryStore

DEGENERATE_HALF_RANGE = 1e-6
"""An action dimension that never varies gets bounds value +- this (times max(1, |value|)): its
normalized value is 0 and the server may only ever send that value back."""


class DatasetImportError(ValueError):
    """A source dataset cannot be imported; the message names the file and says what to fix."""


@dataclass
class SourceEpisode:
    """One source episode aligned to our convention, actions still in native units."""

    index: int  # episode index in the source dataset
    images: np.ndarray  # uint8 [T+1, s, s, 3], already preprocessed by the store's rule
    proprio: np.ndarray  # float32 [T+1, P]
    actions: np.ndarray  # float [T, A], native units
    task_state: np.ndarray  # float32 [T+1, K]


class Source(Protocol):
    """A readable foreign dataset (see lerobot.py, robomimic.py)."""

    format: str
    fps: float
    episode_ids: list[int]
    action_dim: int
    proprio_dim: int
    task_state_dim: int

    def description(self) -> dict:
        """What was read and how: recorded as the store's `env_kwargs` (format, version, path, keys)."""

    def action_spec_extras(self) -> dict:
        """`units`, `frame` and optional `names` of the native action."""

    def proprio_names(self) -> list[str] | None: ...

    def declared_action_bounds(self) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(low [A], high [A], where they come from) when the source records them, else None."""

    def actions(self, episode: int) -> np.ndarray:
        """Native actions float [T, A] of one episode (cheap: no video decoding)."""

    def episode(self, episode: int, rule: Preprocessing) -> SourceEpisode: ...

    def close(self) -> None: ...


def require_packages(*modules: str) -> None:
    """Fail clearly when the optional `import` extra (pyarrow, av, h5py) is not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise DatasetImportError(
            f"missing Python package(s) {', '.join(missing)}: install them with "
            "`pip install 'latent-planner[import]'` (pyarrow, av, h5py)"
        )


def action_bounds(source: Source, progress: bool = True) -> tuple[np.ndarray, np.ndarray, str, list[int]]:
    """-> (low [A], high [A], their source, T per episode) over all episodes' native actions.

    Bounds the source declares (stats, or our own export's info) are used, widened to the data where the
    data leave them; without declared bounds, the data min/max. A dimension that never varies gets a
    tiny range around its value (DEGENERATE_HALF_RANGE).
    """
    from tqdm import tqdm

    lows, highs, lengths = [], [], []
    for ep in tqdm(source.episode_ids, desc="actions", unit="ep", disable=not progress):
        a = np.asarray(source.actions(ep), dtype=np.float64)
        lengths.append(int(a.shape[0]))
        if a.shape[0] == 0:
            continue
        if not np.all(np.isfinite(a)):
            raise DatasetImportError(f"episode {ep}: actions contain NaN or inf; clean the source first")
        lows.append(a.min(axis=0))
        highs.append(a.max(axis=0))
    if not lows:
        raise DatasetImportError("no episode has at least 2 frames (one action); nothing to import")
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    origin = "data min/max"
    declared = source.declared_action_bounds()
    if declared is not None:
        d_low, d_high, where = declared
        d_low, d_high = np.asarray(d_low, np.float64), np.asarray(d_high, np.float64)
        if d_low.shape != low.shape or d_high.shape != high.shape:
            raise DatasetImportError(
                f"{where}: action bounds have shape {d_low.shape}/{d_high.shape}, the data {low.shape}"
            )
        # float32 storage of a value at a float64 bound may overshoot it by one float32 ulp: not a widening
        tol = 1e-6 * np.maximum(1.0, np.maximum(np.abs(d_low), np.abs(d_high)))
        widened = bool(np.any(low < d_low - tol) or np.any(high > d_high + tol))
        low = np.where(low < d_low - tol, low, d_low)
        high = np.where(high > d_high + tol, high, d_high)
        origin = where + (" widened to the data min/max" if widened else "")
    flat = high - low < 1e-12
    half = DEGENERATE_HALF_RANGE * np.maximum(1.0, np.abs(low))
    low, high = np.where(flat, low - half, low), np.where(flat, high + half, high)
    return low, high, origin, lengths


def normalize(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Native float [T, A] -> float32 [T, A] in [-1, 1]: 2 (a - low) / (high - low) - 1."""
    a = 2.0 * (np.asarray(actions, np.float64) - low) / (high - low) - 1.0
    return np.clip(a, -1.0, 1.0).astype(np.float32)


def check_out_dir(out: Path) -> None:
    """`out` must not exist or be an empty directory (checked before any reading)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetImportError(f"--out {out} exists and is not an empty directory; choose a new path")


def write_atomically(out: Path, fill: Callable[[Path], None]) -> None:
    """Run `fill(tmp_dir)` in a hidden sibling of `out`, then rename it to `out`; no half result on error."""
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above); rename cannot replace a directory portably
        os.rename(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        raise


def import_into_store(
    source: Source, out: Path, rule: Preprocessing, *, progress: bool = True
) -> TrajectoryStore:
    """Read every episode of `source` and write them, actions normalized, into a new store at `out`."""
    from tqdm import tqdm

    check_out_dir(out)
    low, high, origin, lengths = action_bounds(source, progress)
    kept = [(ep, t) for ep, t in zip(source.episode_ids, lengths, strict=True) if t >= 1]
    description = source.description()
    description["skipped_episodes"] = [ep for ep, t in zip(source.episode_ids, lengths, strict=True) if t < 1]
    names = source.proprio_names()
    meta = StoreMeta(
        env_id=f"import:{source.format}",
        env_kwargs=description,
        preprocessing=rule.to_dict(),
        action_spec={
            "dim": source.action_dim,
            "normalized_low": -1.0,
            "normalized_high": 1.0,
            "low": [float(x) for x in low],
            "high": [float(x) for x in high],
            "bounds_source": origin,
            "normalization": "normalized = 2 * (native - low) / (high - low) - 1",
            **source.action_spec_extras(),
        },
        proprio_spec={"dim": source.proprio_dim, **({"names": names} if names else {})},
        task_state_spec={"dim": source.task_state_dim},
        snapshot_dim=0,
        control_hz=float(source.fps),
        policy="imported",
        seed=0,
        steps=max(t for _, t in kept),
        created_by=f"latent-planner (planner import --format {source.format})",
    )

    def fill(tmp: Path) -> None:
        store = TrajectoryStore.create(tmp, meta)
        for i, (ep, t) in enumerate(tqdm(kept, desc="import", unit="ep", disable=not progress)):
            src = source.episode(ep, rule)
            if src.actions.shape[0] != t:
                raise DatasetImportError(f"episode {ep}: read {src.actions.shape[0]} actions, then {t}")
            store.write(
                Episode(
                    images=src.images,
                    proprio=np.asarray(src.proprio, np.float32),
                    actions=normalize(src.actions, low, high),
                    task_state=np.asarray(src.task_state, np.float32),
                    snapshots=np.zeros((t + 1, 0), np.float64),
                    goal_image=src.images[-1].copy(),
                    goal_task_state=np.asarray(src.task_state[-1], np.float32),
                    seed=int(ep),
                    index=i,
                )
            )

    write_atomically(out, fill)
    return TrajectoryStore.open(out)
