"""`planner export --format lerobot DIR --out DST`: write a trajectory store as a LeRobot v3.0 dataset.

Layout written (LeRobot v0.4, CODEBASE_VERSION "v3.0"; see docs/IMPORT.md): meta/info.json,
meta/stats.json, meta/tasks.parquet, meta/episodes/chunk-000/file-000.parquet,
data/chunk-CCC/file-FFF.parquet and videos/<camera key>/chunk-CCC/file-FFF.mp4, each data and video file
holding up to --episodes-per-file episodes. Videos are AV1 (SVT-AV1, bundled with PyAV) when the FFmpeg
build can encode it, else H.264. Each episode's T+1 observations become T+1 frames; frame t carries
action t in native units, and the last frame, which has no action, repeats the previous one (an importer
drops it again). Everything is written into a hidden temp directory and renamed to DST at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from planner.importers.common import DatasetImportError, require_packages, write_atomically
from planner.importers.lerobot import ENV_STATE_KEY, PLANNER_INFO
from planner.importers.video import VideoError, encode_video, pick_encoder
from planner.store import Episode, StoreError, StoreMeta, TrajectoryStore

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000
"""Files per chunk directory (LeRobot's default)."""
STATS = ("min", "max", "mean", "std", "count")


class ExportError(ValueError):
    """The store cannot be exported as asked; the message says what to fix."""


@dataclass
class ExportConfig:
    """Export a trajectory store as a LeRobot dataset."""

    format: Literal["lerobot"]
    """Target format (LeRobotDataset codebase_version v3.0)."""
    data: tyro.conf.Positional[Path]
    """The trajectory store to export (made by `planner collect` or `planner import`)."""
    out: Path
    """New dataset directory (must not exist, or be empty)."""
    codec: Literal["auto", "av1", "h264"] = "auto"
    """Video codec: `auto` takes AV1 when the bundled FFmpeg can encode it, else H.264."""
    crf: int = 18
    """Constant rate factor of the video encoder (lower: larger files, closer to the stored images)."""
    episodes_per_file: int = 1000
    """Episodes per data parquet file and per video file."""
    camera_key: str = "observation.images.camera"
    """Feature name of the camera in the exported dataset."""
    task: str | None = None
    """Task description for every episode (default: the store's env id)."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class _Moments:
    """Running min/max/mean/std of a feature over samples (vector features [D] or image channels [3])."""

    count: int = 0
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def add(self, x: np.ndarray) -> _Moments:
        """x float [N, D]: N samples of D values."""
        x = np.asarray(x, np.float64)
        return self.merge(_Moments(x.shape[0], x.sum(0), (x * x).sum(0), x.min(0), x.max(0)))

    def merge(self, o: _Moments) -> _Moments:
        if self.total is None:
            self.count, self.total, self.squares, self.low, self.high = (
                o.count,
                o.total,
                o.squares,
                o.low,
                o.high,
            )
        else:
            self.count, self.total, self.squares = (
                self.count + o.count,
                self.total + o.total,
                self.squares + o.squares,
            )
            self.low, self.high = np.minimum(self.low, o.low), np.maximum(self.high, o.high)
        return self

    def to_dict(self, shape: tuple[int, ...] | None, frames: int) -> dict:
        """LeRobot stats: min/max/mean/std (reshaped, [3,1,1] for images) and count (frames)."""
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean * mean, 0.0))
        out = {"min": self.low, "max": self.high, "mean": mean, "std": std}
        out = {k: (v.reshape(shape) if shape else v).tolist() for k, v in out.items()}
        out["count"] = [int(frames)]
        return out


def _native_actions(meta: StoreMeta, actions: np.ndarray) -> np.ndarray:
    """Normalized float [T, A] -> native float32 [T, A] by the store's action_spec low/high."""
    low = np.asarray(meta.action_spec["low"], np.float64)
    high = np.asarray(meta.action_spec["high"], np.float64)
    return (low + (np.asarray(actions, np.float64) + 1.0) * 0.5 * (high - low)).astype(np.float32)


def _names(spec: dict, dim: int, prefix: str) -> list[str]:
    names = spec.get("names")
    return (
        [str(n) for n in names]
        if isinstance(names, list) and len(names) == dim
        else [f"{prefix}_{i}" for i in range(dim)]
    )


def _features(meta: StoreMeta, cfg: ExportConfig, codec: str, fps: float | int) -> dict:
    (h, w, _), a, p, k = (
        meta.image_shape,
        meta.action_dim,
        int(meta.proprio_spec["dim"]),
        int(meta.task_state_spec["dim"]),
    )
    spec = meta.action_spec
    features = {
        cfg.camera_key: {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": h,
                "video.width": w,
                "video.codec": codec,
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": fps,
                "video.channels": 3,
                "has_audio": False,
            },
        },
        "observation.state": {
            "dtype": "float32",
            "shape": [p],
            "names": _names(meta.proprio_spec, p, "state"),
        },
        "action": {
            "dtype": "float32",
            "shape": [a],
            "names": _names(spec, a, "action"),
            "info": {
                PLANNER_INFO: {
                    "low": spec["low"],
                    "high": spec["high"],
                    "units": spec.get("units", ""),
                    "frame": spec.get("frame", ""),
                }
            },
        },
    }
    if k:
        features[ENV_STATE_KEY] = {
            "dtype": "float32",
            "shape": [k],
            "names": _names(meta.task_state_spec, k, "env"),
        }
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                        ("index", "int64"), ("task_index", "int64")):  # fmt: skip
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _vector_column(x: np.ndarray):
    """float [N, D] -> pyarrow fixed_size_list<float32>[D] column (what LeRobot's writer produces)."""
    import pyarrow as pa

    x = np.ascontiguousarray(x, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as pandas writes DataFrame(task_index, index=Index(tasks, name="task"))."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }  # fmt: skip
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}
    )
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(table, path)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


class _Writer:
    """Writes one LeRobot v3.0 dataset from a store into `root`, one data/video file group at a time."""

    def __init__(self, cfg: ExportConfig, store: TrajectoryStore, root: Path, encoder: str, codec: str):
        self.cfg, self.store, self.meta, self.root, self.encoder = cfg, store, store.meta, root, encoder
        hz = float(self.meta.control_hz)
        self.fps: int | float = int(hz) if hz.is_integer() else hz
        self.task = cfg.task or self.meta.env_id
        self.features = _features(self.meta, cfg, codec, self.fps)
        self.env_state = int(self.meta.task_state_spec["dim"]) > 0
        self.episode_rows: list[dict] = []
        self.moments: dict[str, _Moments] = {}
        self.frames = 0  # global frame index of the next frame

    def _columns(self, ep: Episode, out_index: int) -> dict[str, np.ndarray]:
        """The data-table columns of one episode: N = T+1 rows."""
        n = ep.length + 1
        native = _native_actions(self.meta, ep.actions)
        cols = {
            "observation.state": ep.proprio.astype(np.float32),
            "action": np.concatenate([native, native[-1:]]),  # the last frame repeats the last action
        }
        if self.env_state:
            cols[ENV_STATE_KEY] = ep.task_state.astype(np.float32)
        cols["timestamp"] = (np.arange(n) / self.fps).astype(np.float32)
        cols["frame_index"] = np.arange(n, dtype=np.int64)
        cols["episode_index"] = np.full(n, out_index, np.int64)
        cols["index"] = np.arange(self.frames, self.frames + n, dtype=np.int64)
        cols["task_index"] = np.zeros(n, np.int64)
        return cols

    def _episode_row(self, ep: Episode, cols: dict, where: dict, offset: int) -> dict:
        """The meta/episodes row of one episode, with its per-episode stats; updates dataset stats."""
        n, key = ep.length + 1, self.cfg.camera_key
        video = f"videos/{key}/"
        row = {
            "episode_index": len(self.episode_rows),
            "tasks": [self.task],
            "length": n,
            "data/chunk_index": where["chunk_index"],
            "data/file_index": where["file_index"],
            "dataset_from_index": self.frames,
            "dataset_to_index": self.frames + n,
            video + "chunk_index": where["chunk_index"],
            video + "file_index": where["file_index"],
            video + "from_timestamp": offset / self.fps,
            video + "to_timestamp": (offset + n) / self.fps,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
        }
        stats = {k: _Moments().add(cols[k]) for k in self.features if k in cols and cols[k].ndim == 2}
        stats[key] = _Moments().add(ep.images.reshape(-1, 3) / 255.0)
        for name, m in stats.items():
            shape = (3, 1, 1) if name == key else None
            for stat, value in m.to_dict(shape, n).items():
                row[f"stats/{name}/{stat}"] = value
            self.moments.setdefault(name, _Moments()).merge(m)
        return row

    def write_file(self, file_number: int, group: list[int], progress) -> None:
        """Episodes `group` of the store -> one data parquet file and one video file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        chunk, fileno = divmod(file_number, CHUNKS_SIZE)
        where = {"chunk_index": chunk, "file_index": fileno}
        parts: dict[str, list[np.ndarray]] = {}

        def images() -> Iterator[np.ndarray]:
            offset = 0  # frames before this episode in this video file
            for store_index in group:
                ep = self.store.read(store_index)
                cols = self._columns(ep, len(self.episode_rows))
                for k, v in cols.items():
                    parts.setdefault(k, []).append(v)
                self.episode_rows.append(self._episode_row(ep, cols, where, offset))
                offset += ep.length + 1
                self.frames += ep.length + 1
                yield from ep.images
                progress.update(1)

        video = self.root / VIDEO_PATH.format(video_key=self.cfg.camera_key, **where)
        video.parent.mkdir(parents=True, exist_ok=True)
        encode_video(video, images(), self.fps, self.encoder, crf=self.cfg.crf)
        table = {}
        for k, v in parts.items():
            x = np.concatenate(v)
            table[k] = _vector_column(x) if x.ndim == 2 else pa.array(x)
        data = self.root / DATA_PATH.format(**where)
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(table), data)

    def write_meta(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        episodes = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episode_rows), episodes)
        _write_tasks(self.root / "meta" / "tasks.parquet", [self.task])
        key = self.cfg.camera_key
        stats = {k: m.to_dict((3, 1, 1) if k == key else None, self.frames) for k, m in self.moments.items()}
        _write_json(self.root / "meta" / "stats.json", stats)
        n = len(self.episode_rows)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.meta.env_id,
            "total_episodes": n,
            "total_frames": self.frames,
            "total_tasks": 1,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500,
            "fps": self.fps,
            "splits": {"train": f"0:{n}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": self.features,
        }
        _write_json(self.root / "meta" / "info.json", info)


def export_lerobot(cfg: ExportConfig) -> Path:
    """Write the store at cfg.data as a LeRobot v3.0 dataset at cfg.out; returns cfg.out."""
    from tqdm import tqdm

    require_packages("pyarrow", "av")
    if cfg.episodes_per_file < 1:
        raise ExportError(f"--episodes-per-file must be >= 1, got {cfg.episodes_per_file}")
    if "/" in cfg.camera_key:
        raise ExportError(
            f"--camera-key must not contain '/' (LeRobot feature names), got {cfg.camera_key!r}"
        )
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not an empty directory; choose a new path")
    store = TrajectoryStore.open(cfg.data)
    indices = store.indices()
    if not indices:
        raise ExportError(f"{store.path} holds no episodes to export")
    if store.meta.image_size % 2:
        raise ExportError(
            f"{store.path}: image size {store.meta.image_size} is odd; yuv420p needs even sizes"
        )
    encoder, codec = pick_encoder(cfg.codec)
    groups = [indices[i : i + cfg.episodes_per_file] for i in range(0, len(indices), cfg.episodes_per_file)]

    def fill(tmp: Path) -> None:
        writer = _Writer(cfg, store, tmp, encoder, codec)
        with tqdm(total=len(indices), desc="export", unit="ep", disable=not cfg.progress) as bar:
            for file_number, group in enumerate(groups):
                writer.write_file(file_number, group, bar)
        writer.write_meta()

    write_atomically(out, fill)
    return out


def run(cfg: ExportConfig) -> None:
    try:
        out = export_lerobot(cfg)
    except (ExportError, DatasetImportError, StoreError, VideoError) as exc:
        raise SystemExit(f"planner export: {exc}") from exc
    info = json.loads((out / "meta" / "info.json").read_text())
    codec = info["features"][cfg.camera_key]["info"]["video.codec"]
    print(
        f"exported {info['total_episodes']} episodes ({info['total_frames']} frames, {info['fps']} fps, "
        f"{codec} video) to {out} as LeRobot {CODEBASE_VERSION}"
    )
