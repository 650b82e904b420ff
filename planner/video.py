"""Episode videos: the camera view beside the goal image, with the energy curve below (imageio + Agg)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def write_episode_video(
    path: str | os.PathLike,
    frames: list[np.ndarray],
    goal: np.ndarray,
    energies: list[float],
    threshold: float | None = None,
    fps: int = 10,
) -> Path:
    """Write an MP4 or GIF (by suffix) atomically.

    frames: T+1 uint8 [S,S,3] camera images; goal: uint8 [S,S,3]; energies: one per planning step
    (||z_now - z_goal||, shown up to the current frame); threshold: the goal_reached energy (dashed line).
    """
    import imageio.v2 as imageio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"video path must end in .mp4 or .gif, got {path.name}")
    if not frames:
        raise ValueError("no frames to write")
    fig = plt.figure(figsize=(6.4, 4.8), dpi=80)
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    ax_cam, ax_goal = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_e = fig.add_subplot(grid[1, :])
    cam = ax_cam.imshow(frames[0], interpolation="nearest")
    ax_goal.imshow(goal, interpolation="nearest")
    for ax, title in ((ax_cam, "camera"), (ax_goal, "goal")):
        ax.set_title(title)
        ax.axis("off")
    e = np.asarray(energies, dtype=float)
    n = max(len(e), 1)
    (line,) = ax_e.plot([], [], "-o", ms=2)
    ax_e.set_xlim(0, max(n - 1, 1))
    top = float(np.nanmax(e)) if e.size else 1.0
    ax_e.set_ylim(0, max(top, threshold or 0.0) * 1.1 + 1e-6)
    if threshold is not None and np.isfinite(threshold):
        ax_e.axhline(threshold, ls="--", c="g", lw=1, label="goal threshold")
        ax_e.legend(loc="upper right", fontsize=8)
    ax_e.set_xlabel("planning step")
    ax_e.set_ylabel("energy ||z - z_goal||")
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        gif = {"duration": 1000 / fps, "loop": 0}
        kwargs = {"fps": fps, "macro_block_size": 1} if suffix == ".mp4" else gif
        with imageio.get_writer(tmp, **kwargs) as writer:
            for t, frame in enumerate(frames):
                cam.set_data(frame)
                k = min(t + 1, len(e))
                line.set_data(np.arange(k), e[:k])
                fig.canvas.draw()
                writer.append_data(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path
