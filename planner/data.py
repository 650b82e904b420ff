"""Training windows streamed from a trajectory store (never the whole dataset in memory).

The batch for global step s on rank r is a pure function of (seed, r, s): resuming at step s gives exactly
the batches an uninterrupted run would have seen, whatever the number of DataLoader workers (worker w of W
produces steps s with s % W == w; the DataLoader hands them out round-robin, i.e. in step order).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from planner.store import Episode, TrajectoryStore


def split_episodes(indices: list[int], val_fraction: float, min_val: int = 1) -> tuple[list[int], list[int]]:
    """Deterministic held-out split by index: the last max(min_val, round(frac * N)) indices validate."""
    indices = sorted(indices)
    if len(indices) < 2:
        raise ValueError(f"need at least 2 episodes to hold some out for validation, got {len(indices)}")
    n_val = min(len(indices) - 1, max(min_val, round(val_fraction * len(indices))))
    return indices[:-n_val], indices[-n_val:]


def episode_lengths(store: TrajectoryStore, indices: list[int]) -> list[int]:
    """Number of actions of each episode (TrajectoryStore.length: reads only the small `actions` array)."""
    return [store.length(i) for i in indices]


@dataclass
class WindowSpec:
    """What one training batch holds."""

    frames: int
    """T: frames per window (T-1 actions between them)."""
    batch_size: int
    """Windows per batch (per rank)."""
    episodes_per_batch: int = 16
    """Distinct episodes a batch draws its windows from (bounds episode reads per step)."""
    task_motion_fraction: float = 0.0
    """Share of windows drawn, where the episode has any, among windows in which the recorded task state
    moves (the block, on push and pick-and-place: the contact windows); the rest uniformly. 0: uniform."""
    task_motion_threshold: float = 0.002
    """A step "moves" the task state when it changes by more than this (metres)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.task_motion_fraction <= 1.0:
            raise ValueError(f"task_motion_fraction must be in [0, 1], got {self.task_motion_fraction}")
        if self.task_motion_threshold <= 0:
            raise ValueError(f"task_motion_threshold must be > 0, got {self.task_motion_threshold}")


def moving_window_starts(task_state: np.ndarray, frames: int, threshold: float) -> np.ndarray:
    """task_state [T+1,K] -> bool [T+1-(frames-1)]: whether the window of `frames` frames starting there
    holds a step in which the task state moves by more than `threshold`."""
    moves = np.linalg.norm(np.diff(task_state, axis=0), axis=1) > threshold  # [T]
    counts = np.concatenate([[0], np.cumsum(moves)])
    span = frames - 1
    return counts[span:] - counts[: len(counts) - span] > 0


class WindowDataset(IterableDataset):
    """Yields one batch per step: images uint8 [B,T,S,S,3], actions float32 [B,T-1,A].

    Episodes are read lazily from the store and kept in a bounded LRU cache per worker process.
    """

    def __init__(
        self,
        store_path: str | Path,
        episodes: list[int],
        lengths: list[int],
        spec: WindowSpec,
        *,
        seed: int,
        rank: int = 0,
        start_step: int = 0,
        end_step: int,
        cache_episodes: int = 64,
    ):
        super().__init__()
        starts = np.asarray(lengths, dtype=np.int64) - (spec.frames - 1) + 1  # valid start positions
        keep = starts > 0
        if not keep.any():
            raise ValueError(
                f"no episode is long enough for windows of {spec.frames} frames (longest has "
                f"{max(lengths, default=0)} actions); lower --objective.rollout-steps / temporal-span"
            )
        self.store_path = Path(store_path)
        self.episodes = np.asarray(episodes, dtype=np.int64)[keep]
        self.starts = starts[keep]
        self.spec, self.seed, self.rank = spec, seed, rank
        self.start_step, self.end_step = start_step, end_step
        self.cache_episodes = cache_episodes
        self._store: TrajectoryStore | None = None
        self._cache: OrderedDict[int, tuple[Episode, np.ndarray | None]] = OrderedDict()

    def _episode(self, index: int) -> tuple[Episode, np.ndarray | None]:
        """The episode and, when task-motion sampling is on, the start indices of its windows in which the
        task state moves (computed once per read, cached with the episode)."""
        entry = self._cache.pop(index, None)
        if entry is None:
            if self._store is None:
                self._store = TrajectoryStore.open(self.store_path)
            ep = self._store.read(index)
            moving = (np.flatnonzero(moving_window_starts(ep.task_state, self.spec.frames,
                                                          self.spec.task_motion_threshold))
                      if self.spec.task_motion_fraction > 0 else None)
            entry = (ep, moving)
            while len(self._cache) >= self.cache_episodes:
                self._cache.popitem(last=False)
        self._cache[index] = entry
        return entry

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of global step `step` on this rank (deterministic)."""
        rng = np.random.default_rng([self.seed, self.rank, step])
        n_eps = min(self.spec.episodes_per_batch, len(self.episodes))
        p = self.starts / self.starts.sum()
        chosen = rng.choice(len(self.episodes), size=n_eps, replace=False, p=p)
        which = chosen[rng.integers(0, n_eps, size=self.spec.batch_size)]
        images, actions = [], []
        for w in which:
            ep, moving = self._episode(int(self.episodes[w]))
            t0 = self._window_start(moving, int(self.starts[w]), rng)
            t1 = t0 + self.spec.frames
            images.append(ep.images[t0:t1])
            actions.append(ep.actions[t0 : t1 - 1])
        return {"images": torch.from_numpy(np.stack(images)), "actions": torch.from_numpy(np.stack(actions))}

    def _window_start(self, moving: np.ndarray | None, n_starts: int, rng: np.random.Generator) -> int:
        """A window start in [0, n_starts): with probability task_motion_fraction one of `moving` (the
        episode's starts whose window holds task-state motion) when there are any, else uniform."""
        fraction = self.spec.task_motion_fraction
        if fraction > 0 and rng.random() < fraction and moving.size:
            return int(moving[rng.integers(0, moving.size)])
        return int(rng.integers(0, n_starts))

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.start_step + wid, self.end_step, nw):
            yield self.batch(step)
