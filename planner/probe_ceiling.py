"""`planner probe-ceiling`: how well a linear probe *could* read the block's position from one camera.

Projects the store's recorded task points (the block centre for push and pick-and-place, the hand for reach)
through each camera's pinhole geometry (MuJoCo's `cam_xpos`, `cam_xmat`, `cam_fovy`) to pixel coordinates:
what a perfect keypoint on the block would report. Then fits the probe `planner quality` fits on latents
(planner.metrics.linear_probe_r2: train episodes -> held-out validation episodes) from those coordinates to
the point's x and y. One perspective camera caps it below 1: a lifted block's pixel is where some other
table position would be, by an amount that grows with its height. Views joined by '+' concatenate their
coordinates. docs/BENCHMARKS.md, sessions 19 and 21:

    planner probe-ceiling --data data/pickplace1500 --cameras table table_high workspace table+workspace
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner import metrics


@dataclass
class ProbeCeilingConfig:
    """Linear-probe ceiling of a store's task point (x, y) from perfect keypoints in each camera."""

    data: Path
    """Trajectory store (push, pick-and-place or reach: its task state's first 3 columns are a point)."""
    cameras: tuple[str, ...] = ("table", "table_high", "workspace")
    """Fixed cameras (envs.arm.CAMERAS but wrist), or several joined by '+' (their coordinates together)."""
    probe_episodes: int = 300
    """Training episodes the probe is fit on (the first ones of the store's training split)."""
    lifted_cm: float = 2.0
    """Frames whose point is this far above its median height count as lifted (reported apart)."""
    ridge: float = 1e-3
    """The probe's penalty (`planner quality`'s); 0 for plain least squares."""
    json: Path | None = None
    """Write the report here (atomically)."""


def camera_pixels(model, camera: str, points: np.ndarray, image_size: int = 64) -> np.ndarray:
    """Pixel coordinates (column, row; row 0 at the top) [N, 2] of world points [N, 3] in a fixed camera of a
    compiled MuJoCo model, as its renderer draws them at image_size x image_size."""
    import mujoco

    cam = model.camera(camera).id
    if model.cam_bodyid[cam] != 0:
        raise ValueError(f"camera {camera!r} moves with body {model.body(model.cam_bodyid[cam]).name!r}: "
                         "it has no fixed projection")
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    rel = (np.asarray(points, np.float64) - data.cam_xpos[cam]) @ data.cam_xmat[cam].reshape(3, 3)
    depth = -rel[:, 2]  # the camera looks along its -z axis
    if np.any(depth <= 0):
        raise ValueError(f"{int((depth <= 0).sum())} point(s) lie behind camera {camera!r}")
    focal = image_size / 2 / np.tan(np.radians(model.cam_fovy[cam]) / 2)
    centre = image_size / 2
    return np.stack([centre + focal * rel[:, 0] / depth, centre - focal * rel[:, 1] / depth], axis=1)


def view_features(env_id: str, env_kwargs: dict, camera: str, points: np.ndarray) -> np.ndarray:
    """Concatenated pixel coordinates [N, 2 * views] of points [N, 3] in each view of `camera`, in the env
    the store was collected from (its camera offset and turn applied) with `camera` in place of its own."""
    import envs

    env = envs.make_env(env_id, **{**env_kwargs, "camera": camera, "render_goal": False}).unwrapped
    try:
        views = getattr(env, "views", None)
        if views is None:
            raise ValueError(f"{env_id} has no named fixed cameras (the arm tasks do)")
        return np.concatenate([camera_pixels(env.model, v, points) for v in views], axis=1)
    finally:
        env.close()


def ceiling_r2(features_train: np.ndarray, xy_train: np.ndarray, features_val: np.ndarray,
               xy_val: np.ndarray, lifted_val: np.ndarray, ridge: float = 1e-3) -> dict:
    """Held-out R^2 of x and y (linear probe on features) over all validation frames, those on the table and
    the lifted ones (None when fewer than 2 frames are lifted)."""
    def r2(mask):
        if mask.sum() < 2:
            return None
        return metrics.linear_probe_r2(features_train, xy_train, features_val[mask], xy_val[mask],
                                       ridge=ridge).r2

    every = np.ones(len(xy_val), bool)
    return {"r2_xy": r2(every), "r2_xy_on_table": r2(~lifted_val), "r2_xy_lifted": r2(lifted_val)}


def run(cfg: ProbeCeilingConfig) -> dict:
    """Read the store's task points, project them into each camera, print and return the ceilings."""
    from planner.evaluate import write_json_atomic
    from planner.quality import split_indices
    from planner.store import TrajectoryStore

    if cfg.probe_episodes < 1:
        raise ValueError(f"--probe-episodes must be >= 1, got {cfg.probe_episodes}")
    store = TrajectoryStore.open(cfg.data)
    if store.meta.task_state_spec.get("dim", 0) < 3:
        raise ValueError(f"store {cfg.data} has no 3-D task point (task state {store.meta.task_state_spec})")
    train_idx, val_idx, _ = split_indices(store.indices(), {})
    train_idx = train_idx[:cfg.probe_episodes]

    def points(indices):
        return np.concatenate([store.read(i).task_state[:, :3] for i in indices]).astype(np.float64)

    p_train, p_val = points(train_idx), points(val_idx)
    lifted = p_val[:, 2] > np.median(p_val[:, 2]) + cfg.lifted_cm / 100
    report = {"data": str(cfg.data), "env": store.meta.env_id, "probe_train_episodes": len(train_idx),
              "val_episodes": len(val_idx), "val_frames": len(p_val), "ridge": cfg.ridge,
              "lifted_fraction": float(lifted.mean()),
              "cameras": {}}
    env_id, kwargs = store.meta.env_id, store.meta.env_kwargs
    for camera in cfg.cameras:
        feats = view_features(env_id, kwargs, camera, np.concatenate([p_train, p_val]))  # one env per camera
        f_train, f_val = feats[:len(p_train)], feats[len(p_train):]
        report["cameras"][camera] = res = ceiling_r2(f_train, p_train[:, :2], f_val, p_val[:, :2], lifted,
                                                     cfg.ridge)
        print(f"{camera:24s} x / y R^2 all {_fmt(res['r2_xy'])}   on the table {_fmt(res['r2_xy_on_table'])}"
              f"   lifted {_fmt(res['r2_xy_lifted'])}")
    print(f"{len(p_val)} validation frames of {cfg.data}, {100 * lifted.mean():.1f}% lifted "
          f"> {cfg.lifted_cm} cm")
    if cfg.json is not None:
        write_json_atomic(cfg.json, report)
        print(f"wrote {cfg.json}")
    return report


def _fmt(r2: list[float] | None) -> str:
    return "-" if r2 is None else " / ".join(f"{v:.4f}" for v in r2)
