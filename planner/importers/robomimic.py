"""Read a robomimic HDF5 dataset with h5py.

Followed: robomimic v0.3 dataset structure (robomimic.readthedocs.io, "Dataset Structure"): group `data`
with attribute `env_args` (JSON: env_name, type, env_kwargs incl. control_freq) and one group per
demonstration `data/demo_N` (attribute `num_samples`) holding `actions` [N, A], `obs/<key>` [N, ...],
`next_obs/<key>` [N, ...], `states`, `rewards`, `dones`; optional `mask/<filter>` lists of demo names.
Image observations are `obs/<camera>_image` uint8 [N, H, W, 3].

Alignment: the N observations plus the last `next_obs` are our T+1 = N+1 observations and all N actions
are kept; a file without `next_obs` for the camera and state keys keeps N observations and N-1 actions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from planner.importers.common import DatasetImportError, SourceEpisode
from planner.preprocess import Preprocessing, preprocess_image

DEFAULT_STATE = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
DEFAULT_CAMERA = "agentview_image"
_DEMO_RE = re.compile(r"^demo_(\d+)$")


class RobomimicSource:
    """A robomimic .hdf5 file, read one demonstration at a time."""

    format = "robomimic"

    def __init__(
        self,
        path: Path,
        camera: str | None = None,
        state: str | None = None,
        action: str | None = None,
        fps: float | None = None,
        filter_key: str | None = None,
        flip_vertical: bool = False,
        max_episodes: int | None = None,
    ) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetImportError(f"{self.path}: no such file (pass the robomimic .hdf5 file)")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DatasetImportError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        if "data" not in self.file:
            raise DatasetImportError(
                f"{self.path}: no `data` group (robomimic layout); top-level keys: {', '.join(self.file)}"
            )
        data = self.file["data"]
        demos = sorted((k for k in data if _DEMO_RE.match(k)), key=lambda k: int(_DEMO_RE.match(k).group(1)))
        if filter_key is not None:
            masks = self.file.get("mask")
            if masks is None or filter_key not in masks:
                have = ", ".join(masks) if masks is not None else "none"
                raise DatasetImportError(
                    f"{self.path}: no filter key {filter_key!r} under mask/; have {have}"
                )
            chosen = {m.decode() if isinstance(m, bytes) else str(m) for m in masks[filter_key][()]}
            demos = [d for d in demos if d in chosen]
        if not demos:
            raise DatasetImportError(f"{self.path}: no demo_N groups under data/; found {', '.join(data)}")
        if max_episodes is not None:
            demos = demos[:max_episodes]
        self.demos = {int(_DEMO_RE.match(d).group(1)): d for d in demos}
        self.episode_ids = list(self.demos)
        first = data[demos[0]]
        if "obs" not in first:
            raise DatasetImportError(f"{self.path}: data/{demos[0]} has no obs group; has {', '.join(first)}")
        obs = first["obs"]
        cameras = [k for k in obs if obs[k].ndim == 4 and obs[k].shape[-1] == 3]
        vectors = [k for k in obs if obs[k].ndim == 2]
        self.camera = self._pick_camera(camera, cameras)
        self.state_keys = self._pick_state(state, vectors)
        self.action_key = action or "actions"
        datasets = [k for k in first if k not in ("obs", "next_obs")]
        if self.action_key not in first:
            raise DatasetImportError(
                f"{self.path}: --action {self.action_key!r} is not a dataset of data/{demos[0]}; "
                f"datasets: {', '.join(datasets)}"
            )
        self.action_dim = int(np.prod(first[self.action_key].shape[1:]))
        self.proprio_dim = sum(int(obs[k].shape[1]) for k in self.state_keys)
        self.task_state_dim = self.proprio_dim
        self.env_args = self._env_args(data)
        self.fps = float(fps) if fps else self._control_freq()
        self.filter_key = filter_key
        self.flip_vertical = flip_vertical

    def _pick_camera(self, camera: str | None, cameras: list[str]) -> str:
        if camera is None:
            if DEFAULT_CAMERA in cameras or len(cameras) == 1:
                return DEFAULT_CAMERA if DEFAULT_CAMERA in cameras else cameras[0]
            raise DatasetImportError(
                f"{self.path}: choose a camera with --camera KEY; image observations: "
                f"{', '.join(cameras) or 'none (this file has low-dim obs only: regenerate it with images)'}"
            )
        if camera not in cameras:
            raise DatasetImportError(
                f"{self.path}: --camera {camera!r} is not an image observation; cameras: "
                f"{', '.join(cameras) or 'none'}"
            )
        return camera

    def _pick_state(self, state: str | None, vectors: list[str]) -> list[str]:
        keys = [k.strip() for k in state.split(",") if k.strip()] if state else list(DEFAULT_STATE)
        missing = [k for k in keys if k not in vectors]
        if missing:
            how = "--state" if state else "the default state (pass --state KEY[,KEY...])"
            raise DatasetImportError(
                f"{self.path}: {how} key(s) {', '.join(missing)} not among the low-dim observations: "
                f"{', '.join(vectors) or 'none'}"
            )
        return keys

    def _env_args(self, data) -> dict:
        raw = data.attrs.get("env_args")
        if raw is None:
            return {}
        try:
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except json.JSONDecodeError as exc:
            raise DatasetImportError(f"{self.path}: data.attrs['env_args'] is not JSON ({exc})") from exc

    def _control_freq(self) -> float:
        hz = (self.env_args.get("env_kwargs") or {}).get("control_freq")
        if not hz:
            raise DatasetImportError(
                f"{self.path}: env_args has no env_kwargs.control_freq; pass the control rate with --fps HZ"
            )
        return float(hz)

    def _demo(self, episode: int):
        return self.file["data"][self.demos[episode]]

    def _has_next(self, demo) -> bool:
        nxt = demo.get("next_obs")
        return nxt is not None and all(k in nxt for k in (self.camera, *self.state_keys))

    def actions(self, episode: int) -> np.ndarray:
        demo = self._demo(episode)
        a = np.asarray(demo[self.action_key][()], np.float64).reshape(-1, self.action_dim)
        return a if self._has_next(demo) else a[:-1]

    def episode(self, episode: int, rule: Preprocessing) -> SourceEpisode:
        demo = self._demo(episode)
        name = f"{self.path}: data/{self.demos[episode]}"
        for k in (self.camera, *self.state_keys):
            if k not in demo["obs"]:
                raise DatasetImportError(f"{name}/obs has no {k!r}; has {', '.join(demo['obs'])}")
        images = demo["obs"][self.camera][()]
        state = np.concatenate([demo["obs"][k][()] for k in self.state_keys], axis=1)
        actions = np.asarray(demo[self.action_key][()], np.float64).reshape(-1, self.action_dim)
        if len(images) != len(actions) or len(state) != len(actions):
            raise DatasetImportError(
                f"{name}: {len(images)} images, {len(state)} states and {len(actions)} actions; robomimic "
                "stores one observation per action"
            )
        if self._has_next(demo):
            images = np.concatenate([images, demo["next_obs"][self.camera][-1:]])
            state = np.concatenate(
                [state, np.concatenate([demo["next_obs"][k][-1:] for k in self.state_keys], 1)]
            )
        else:
            actions = actions[:-1]
        if images.dtype != np.uint8:
            raise DatasetImportError(f"{name}/obs/{self.camera} must be uint8 RGB, got {images.dtype}")
        if self.flip_vertical:
            images = images[:, ::-1]
        frames = np.stack([preprocess_image(np.ascontiguousarray(f), rule) for f in images])
        state = state.astype(np.float32)
        return SourceEpisode(episode, frames, state, actions, state)

    def declared_action_bounds(self) -> None:
        return None  # robomimic records no action statistics; the data min/max are used

    def action_spec_extras(self) -> dict:
        controller = (self.env_args.get("env_kwargs") or {}).get("controller_configs") or {}
        kind = controller.get("type", "unknown controller") if isinstance(controller, dict) else "unknown"
        return {
            "units": f"robomimic {self.action_key!r} as given to the {kind} controller",
            "frame": f"{self.env_args.get('env_name', 'unknown env')} controller frame (see env_args)",
        }

    def proprio_names(self) -> list[str] | None:
        obs = self._demo(self.episode_ids[0])["obs"]
        return [f"{k}[{i}]" for k in self.state_keys for i in range(int(obs[k].shape[1]))]

    def description(self) -> dict:
        return {
            "format": "robomimic",
            "source": str(self.path.resolve()),
            "env_name": self.env_args.get("env_name"),
            "camera": self.camera,
            "state": self.state_keys,
            "action": self.action_key,
            "filter_key": self.filter_key,
            "flip_vertical": self.flip_vertical,
            "task_state": "proprio",
            "episodes": len(self.episode_ids),
            "alignment": "obs 0..N-1 plus the last next_obs are the T+1 = N+1 observations; all N actions",
        }

    def close(self) -> None:
        self.file.close()
