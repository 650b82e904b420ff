"""Limits applied to every plan before it leaves the server: bounds, per-step norm cap, workspace box."""

from __future__ import annotations

import numpy as np


def limit_actions(
    actions: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    *,
    max_step_norm: float | None = None,
    workspace: tuple[np.ndarray, np.ndarray] | None = None,
    ee_position: np.ndarray | None = None,
) -> np.ndarray:
    """Native actions float [H,A] -> limited copy.

    Clips every dimension to [low, high]; scales each step's displacement (dims 0..2) down to
    `max_step_norm`; then, with a workspace box (lo[3], hi[3]) and the current end effector position [3],
    shortens displacements so that the cumulative end effector path stays inside the box.
    """
    out = np.clip(np.asarray(actions, dtype=np.float64), low, high)
    if max_step_norm is not None:
        norms = np.linalg.norm(out[:, :3], axis=1, keepdims=True)
        out[:, :3] *= np.minimum(1.0, max_step_norm / np.maximum(norms, 1e-12))
    if workspace is not None:
        if ee_position is None:
            raise ValueError("a workspace box needs the end effector position (observation.proprio[:3])")
        lo, hi = workspace
        pos = np.asarray(ee_position, dtype=np.float64)[:3].copy()
        for t in range(out.shape[0]):
            target = np.clip(pos + out[t, :3], lo, hi)
            # Starting outside the box, never push further out; moving back in is allowed.
            target = np.where(
                (pos < lo) | (pos > hi),
                np.clip(pos + out[t, :3], np.minimum(pos, lo), np.maximum(pos, hi)),
                target,
            )
            out[t, :3] = target - pos
            pos = target
    return out.astype(np.float32)
