"""Read a local LeRobotDataset directory (codebase_version v3.0, v2.1 or v2.0) with pyarrow and PyAV.

Followed: LeRobot's dataset format as written by `lerobot` v0.4 (`LeRobotDatasetMetadata`,
CODEBASE_VERSION "v3.0") and v0.3 (v2.1); see docs/IMPORT.md. We do not import the `lerobot` package:
it pulls in the Hugging Face hub client (download code we must never run), `datasets`, and pins
torch/torchvision versions that conflict with ours.

v3.0: meta/info.json, meta/episodes/chunk-*/file-*.parquet (one row per episode: data/chunk_index,
data/file_index, dataset_from_index, dataset_to_index, videos/<key>/{chunk_index, file_index,
from_timestamp, to_timestamp}), meta/tasks.parquet, meta/stats.json, data/chunk-*/file-*.parquet and
videos/<key>/chunk-*/file-*.mp4 with several episodes per file.
v2.x: meta/info.json, meta/episodes.jsonl, meta/tasks.jsonl, meta/episodes_stats.jsonl (v2.1) or
meta/stats.json (v2.0), data/chunk-XXX/episode_XXXXXX.parquet, videos/chunk-XXX/<key>/episode_XXXXXX.mp4.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.importers.common import DatasetImportError, SourceEpisode
from planner.importers.video import VideoError, VideoReader
from planner.preprocess import Preprocessing, preprocess_image

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
ENV_STATE_KEY = "observation.environment_state"
PLANNER_INFO = "latent_planner"
"""Key of our extension inside a feature's `info` in info.json (written by `planner export`): the
action's native bounds, units and frame, so that a re-import keeps them instead of the data range."""


@dataclass
class _EpisodeRef:
    """Where one episode lives."""

    index: int
    length: int
    data_path: Path
    video_path: Path | None
    from_timestamp: float
    to_timestamp: float


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetImportError(f"{path}: not valid JSON ({exc})") from exc


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetImportError(f"{path} is missing; a LeRobot v2.x dataset needs it")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetImportError(f"{path}:{n}: not valid JSON ({exc})") from exc
    return rows


def _names(feature: dict) -> list[str] | None:
    """A feature's `names` as a flat list of strings (LeRobot writes a list or {"motors": [...]})."""
    names = feature.get("names")
    if isinstance(names, dict):
        names = [n for v in names.values() if isinstance(v, list) for n in v]
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _dim(feature: dict) -> int:
    return int(np.prod(feature.get("shape") or [1]))


def column_array(table, key: str, dim: int, where: str) -> np.ndarray:
    """A numeric column (scalar, list or fixed-size list per row) -> float64 [rows, dim]."""
    import pyarrow as pa

    col = table.column(key).combine_chunks()
    n = len(col)
    if (
        pa.types.is_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
        or pa.types.is_large_list(col.type)
    ):
        flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        flat = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    if flat.size != n * dim:
        raise DatasetImportError(
            f"{where}: column {key!r} holds {flat.size} values for {n} rows; info.json says {dim} per row"
        )
    return flat.reshape(n, dim)


class LeRobotSource:
    """A LeRobot dataset on disk, read episode by episode (one data table and one video open at a time)."""

    format = "lerobot"

    def __init__(
        self,
        root: Path,
        camera: str | None = None,
        state: str | None = None,
        action: str | None = None,
        max_episodes: int | None = None,
    ) -> None:
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            what = "does not exist" if not self.root.exists() else "has no meta/info.json"
            raise DatasetImportError(f"{self.root} is not a LeRobot dataset: it {what}")
        self.info = _read_json(info_path)
        self.version = str(self.info.get("codebase_version"))
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetImportError(
                f"{info_path}: codebase_version {self.version!r} is not supported; this importer reads "
                f"{', '.join(SUPPORTED_VERSIONS)} (convert older datasets with LeRobot's conversion script)"
            )
        for key in ("features", "fps", "data_path"):
            if key not in self.info:
                raise DatasetImportError(f"{info_path}: missing {key!r}; present: {', '.join(self.info)}")
        self.features: dict = self.info["features"]
        self.fps = float(self.info["fps"])
        self.camera = self._pick_camera(camera)
        if self.features[self.camera].get("dtype") == "video" and not self.info.get("video_path"):
            raise DatasetImportError(
                f"{info_path}: {self.camera!r} is a video feature but video_path is not set"
            )
        self.state_keys = self._pick_vectors(state, "observation.state", "--state")
        self.action_key = self._pick_vectors(action, "action", "--action")[0]
        self.env_state_key = ENV_STATE_KEY if ENV_STATE_KEY in self.features else None
        self.action_dim = _dim(self.features[self.action_key])
        self.proprio_dim = sum(_dim(self.features[k]) for k in self.state_keys)
        self.task_state_dim = (
            _dim(self.features[self.env_state_key]) if self.env_state_key else self.proprio_dim
        )
        self.refs = self._episode_refs()
        if max_episodes is not None:
            self.refs = self.refs[:max_episodes]
        self.episode_ids = [r.index for r in self.refs]
        self._by_id = {r.index: r for r in self.refs}
        self._table_path: Path | None = None
        self._table = None
        self._video: VideoReader | None = None

    # ---- keys -----------------------------------------------------------------------------------
    def _keys_listing(self) -> str:
        kinds: dict[str, list[str]] = {}
        for k, f in self.features.items():
            kinds.setdefault(str(f.get("dtype")), []).append(k)
        return "; ".join(f"{dtype}: {', '.join(keys)}" for dtype, keys in kinds.items())

    def _pick_camera(self, camera: str | None) -> str:
        cameras = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        if camera is None:
            if len(cameras) == 1:
                return cameras[0]
            if not cameras:
                raise DatasetImportError(
                    f"{self.root}: no camera (video or image feature); features are {self._keys_listing()}"
                )
            raise DatasetImportError(
                f"{self.root}: {len(cameras)} cameras ({', '.join(cameras)}); choose one with --camera KEY "
                "(the camera placement must match the one the robot will use when served)"
            )
        if camera not in cameras:
            raise DatasetImportError(
                f"{self.root}: --camera {camera!r} is not a camera of this dataset; cameras: "
                f"{', '.join(cameras) or 'none'}"
            )
        return camera

    def _pick_vectors(self, given: str | None, default: str, flag: str) -> list[str]:
        keys = [k.strip() for k in (given or default).split(",") if k.strip()]
        numeric = [
            k
            for k, f in self.features.items()
            if str(f.get("dtype", "")).startswith(("float", "int"))
            and k not in ("timestamp", "frame_index", "episode_index", "index", "task_index")
        ]
        for k in keys:
            if k not in numeric:
                raise DatasetImportError(
                    f"{self.root}: {flag} {k!r} is not a numeric feature of this dataset; numeric features: "
                    f"{', '.join(numeric) or 'none'} (all features: {self._keys_listing()})"
                )
        return keys

    # ---- episodes -------------------------------------------------------------------------------
    def _episode_refs(self) -> list[_EpisodeRef]:
        return self._refs_v3() if self.version == "v3.0" else self._refs_v2()

    def _refs_v3(self) -> list[_EpisodeRef]:
        import pyarrow.parquet as pq

        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetImportError(f"{self.root}/meta/episodes/chunk-*/file-*.parquet: no episode metadata")
        need = ["episode_index", "length", "data/chunk_index", "data/file_index",
                "dataset_from_index", "dataset_to_index"]  # fmt: skip
        video = self.features[self.camera].get("dtype") == "video"
        if video:
            need += [f"videos/{self.camera}/{c}" for c in
                     ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]  # fmt: skip
        refs = []
        for path in files:
            try:
                schema_names = pq.read_schema(path).names
                missing = [c for c in need if c not in schema_names]
                if missing:
                    raise DatasetImportError(
                        f"{path}: missing column(s) {', '.join(missing)}; present: {', '.join(schema_names)}"
                    )
                rows = pq.read_table(path, columns=need).to_pylist()
            except (OSError, ValueError) as exc:
                if isinstance(exc, DatasetImportError):
                    raise
                raise DatasetImportError(f"{path}: unreadable parquet ({exc})") from exc
            for r in rows:
                length = int(r["length"])
                if int(r["dataset_to_index"]) - int(r["dataset_from_index"]) != length:
                    raise DatasetImportError(
                        f"{path}: episode {r['episode_index']} has length {length} but dataset index range "
                        f"{r['dataset_from_index']}..{r['dataset_to_index']}"
                    )
                data = self.info["data_path"].format(
                    chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]
                )
                vpath, t0, t1 = None, 0.0, 0.0
                if video:
                    p = f"videos/{self.camera}/"
                    vpath = self.root / self.info["video_path"].format(
                        video_key=self.camera,
                        chunk_index=r[p + "chunk_index"],
                        file_index=r[p + "file_index"],
                    )
                    t0, t1 = float(r[p + "from_timestamp"]), float(r[p + "to_timestamp"])
                refs.append(_EpisodeRef(int(r["episode_index"]), length, self.root / data, vpath, t0, t1))
        return sorted(refs, key=lambda r: r.index)

    def _refs_v2(self) -> list[_EpisodeRef]:
        chunks = int(self.info.get("chunks_size", 1000))
        video = self.features[self.camera].get("dtype") == "video"
        refs = []
        for row in _read_jsonl(self.root / "meta" / "episodes.jsonl"):
            ep, length = int(row["episode_index"]), int(row["length"])
            fmt = {"episode_chunk": ep // chunks, "episode_index": ep, "video_key": self.camera}
            data = self.root / self.info["data_path"].format(**fmt)
            vpath = self.root / self.info["video_path"].format(**fmt) if video else None
            refs.append(_EpisodeRef(ep, length, data, vpath, 0.0, float("inf")))
        return sorted(refs, key=lambda r: r.index)

    def _rows(self, ref: _EpisodeRef, columns: list[str]):
        """The data-table rows of one episode, ordered by frame_index (one file cached at a time)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if self._table_path != ref.data_path or not set(columns) <= set(self._table.column_names):
            if not ref.data_path.is_file():
                raise DatasetImportError(f"{ref.data_path}: data file of episode {ref.index} is missing")
            try:
                names = pq.read_schema(ref.data_path).names
                missing = [c for c in columns if c not in names]
                if missing:
                    raise DatasetImportError(
                        f"{ref.data_path}: missing column(s) {', '.join(missing)}; "
                        f"present: {', '.join(names)}"
                    )
                self._table = pq.read_table(ref.data_path, columns=columns)
            except (OSError, ValueError) as exc:
                if isinstance(exc, DatasetImportError):
                    raise
                raise DatasetImportError(f"{ref.data_path}: unreadable parquet ({exc})") from exc
            self._table_path = ref.data_path
        t = self._table
        rows = t.filter(pc.equal(t.column("episode_index"), ref.index))
        rows = rows.take(pc.sort_indices(rows.column("frame_index")))
        if rows.num_rows != ref.length:
            raise DatasetImportError(
                f"{ref.data_path}: {rows.num_rows} rows for episode {ref.index}, but the episode metadata "
                f"says length {ref.length}"
            )
        return rows

    def _low_dim_columns(self) -> list[str]:
        cols = ["episode_index", "frame_index", self.action_key, *self.state_keys]
        if self.env_state_key:
            cols.append(self.env_state_key)
        if self.features[self.camera].get("dtype") == "image":
            cols.append(self.camera)
        return list(dict.fromkeys(cols))

    def actions(self, episode: int) -> np.ndarray:
        ref = self._by_id[episode]
        rows = self._rows(ref, self._low_dim_columns())
        return column_array(rows, self.action_key, self.action_dim, str(ref.data_path))[:-1]

    def _frames(self, ref: _EpisodeRef, rows) -> list[np.ndarray]:
        if self.features[self.camera].get("dtype") == "image":
            return [self._png(ref, cell) for cell in rows.column(self.camera).to_pylist()]
        if self._video is None or self._video.path != ref.video_path:
            if self._video is not None:
                self._video.close()
                self._video = None
            self._video = VideoReader(ref.video_path)
        frames = list(self._video.window(ref.from_timestamp, ref.to_timestamp, self.fps))
        if len(frames) != ref.length:
            span = (
                ""
                if ref.to_timestamp == float("inf")
                else (f" between {ref.from_timestamp:.4f}s and {ref.to_timestamp:.4f}s")
            )
            raise VideoError(
                f"{ref.video_path}: {len(frames)} frames for episode {ref.index}{span}, but its data table "
                f"has {ref.length} rows; the video and {ref.data_path.name} do not match"
            )
        return frames

    def _png(self, ref: _EpisodeRef, cell) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise DatasetImportError(f"{ref.data_path}: image cell of {self.camera!r} has no embedded bytes")
        try:
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetImportError(
                f"{ref.data_path}: undecodable image in {self.camera!r} ({exc})"
            ) from exc

    def episode(self, episode: int, rule: Preprocessing) -> SourceEpisode:
        ref = self._by_id[episode]
        rows = self._rows(ref, self._low_dim_columns())
        where = str(ref.data_path)
        actions = column_array(rows, self.action_key, self.action_dim, where)[:-1]
        state = np.concatenate(
            [column_array(rows, k, _dim(self.features[k]), where) for k in self.state_keys], axis=1
        ).astype(np.float32)
        env_state = (
            column_array(rows, self.env_state_key, self.task_state_dim, where).astype(np.float32)
            if self.env_state_key
            else state
        )
        images = np.stack([preprocess_image(f, rule) for f in self._frames(ref, rows)])
        return SourceEpisode(episode, images, state, actions, env_state)

    # ---- metadata -------------------------------------------------------------------------------
    def declared_action_bounds(self) -> tuple[np.ndarray, np.ndarray, str] | None:
        ours = (self.features[self.action_key].get("info") or {}).get(PLANNER_INFO)
        if ours and "low" in ours and "high" in ours:
            return np.asarray(ours["low"]), np.asarray(ours["high"]), f"info.json {self.action_key} info"
        stats_path = self.root / "meta" / "stats.json"
        if stats_path.is_file():
            s = _read_json(stats_path).get(self.action_key, {})
            if "min" in s and "max" in s:
                return np.asarray(s["min"]), np.asarray(s["max"]), "meta/stats.json min/max"
        ep_stats = self.root / "meta" / "episodes_stats.jsonl"
        if ep_stats.is_file():
            wanted = set(self.episode_ids)
            rows = [
                r["stats"][self.action_key]
                for r in _read_jsonl(ep_stats)
                if r.get("episode_index") in wanted and self.action_key in r.get("stats", {})
            ]
            if rows:
                low = np.min([r["min"] for r in rows], axis=0)
                high = np.max([r["max"] for r in rows], axis=0)
                return low, high, "meta/episodes_stats.jsonl min/max"
        return None

    def action_spec_extras(self) -> dict:
        ours = (self.features[self.action_key].get("info") or {}).get(PLANNER_INFO) or {}
        names = _names(self.features[self.action_key])
        robot = self.info.get("robot_type") or "unknown robot"
        return {
            "units": ours.get("units") or f"native units of LeRobot feature {self.action_key!r} ({robot})",
            "frame": ours.get("frame") or "as recorded by the source robot; see the source dataset's card",
            **({"names": names} if names else {}),
        }

    def proprio_names(self) -> list[str] | None:
        names = [_names(self.features[k]) for k in self.state_keys]
        return [n for part in names for n in part] if all(names) else None

    def tasks(self) -> list[str]:
        if self.version == "v3.0":
            return _tasks_v3(self.root / "meta" / "tasks.parquet")
        path = self.root / "meta" / "tasks.jsonl"
        return [str(r["task"]) for r in _read_jsonl(path)] if path.is_file() else []

    def description(self) -> dict:
        return {
            "format": "lerobot",
            "codebase_version": self.version,
            "source": str(self.root.resolve()),
            "robot_type": self.info.get("robot_type"),
            "camera": self.camera,
            "state": self.state_keys,
            "action": self.action_key,
            "task_state": self.env_state_key or "proprio (the source has no observation.environment_state)",
            "tasks": self.tasks()[:50],
            "episodes": len(self.episode_ids),
            "alignment": "frames 0..N-1 are the T+1 observations; actions of frames 0..N-2 are the T actions",
        }

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None


def _tasks_v3(path: Path) -> list[str]:
    """Task strings of meta/tasks.parquet by task_index (pandas stores the `task` index as a column)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return []
    table = pq.read_table(path)
    meta = table.schema.pandas_metadata or {}
    candidates = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    candidates += ["task", "__index_level_0__"]
    key = next((c for c in candidates if c in table.column_names), None)
    if key is None or "task_index" not in table.column_names:
        raise DatasetImportError(
            f"{path}: expected a `task` column (or pandas index) and `task_index`; has "
            f"{', '.join(table.column_names)}"
        )
    pairs = sorted(zip(table.column("task_index").to_pylist(), table.column(key).to_pylist(), strict=True))
    return [str(task) for _, task in pairs]
