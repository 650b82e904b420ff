"""Trajectory store: a directory with `meta.json` and one `episode_{index:06d}.npz` shard per episode.

Every write is atomic (temp file in the same directory, fsync, os.replace, fsync of the directory), so a
crash, a kill -9 or a full disk never leaves a half-written episode visible: an episode either exists
completely or not at all. Leftover temp files (`.episode_*.tmp`) are ignored by readers and removed by
`clean_temp_files()` under the writer lock. Reads stream one episode at a time; nothing loads the whole
dataset. See docs/STORE.md for the format and the reasons behind it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np

from planner import __version__
from planner.preprocess import Preprocessing

FORMAT_VERSION = 1
"""Bump when the on-disk layout changes; opening a store of another version is a clear error."""

META_FILE = "meta.json"
LOCK_FILE = ".lock"
COMPRESSIONS = ("none", "zlib")
_SHARD_RE = re.compile(r"^episode_(\d{6,})\.npz$")
_TEMP_RE = re.compile(r"^\..+\.tmp$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

# Arrays in a shard: name -> dtype. Shapes are checked against the meta in Episode.check.
_ARRAYS: dict[str, type] = {
    "images": np.uint8,
    "proprio": np.float32,
    "actions": np.float32,
    "task_state": np.float32,
    "snapshots": np.float64,
    "goal_image": np.uint8,
    "goal_task_state": np.float32,
}
_SCALARS = ("format_version", "index", "seed")


class StoreError(ValueError):
    """A store is missing, incompatible or damaged; the message names the file and what to do."""


class EpisodeExistsError(StoreError):
    """The episode's shard already exists (episodes are write-once)."""


class StoreFullError(OSError):
    """The disk filled up during a write; nothing partial was kept and the store still opens."""


def shard_name(index: int) -> str:
    return f"episode_{index:06d}.npz"


@dataclass
class StoreMeta:
    """Everything needed to read a store and to check that a resumed collection is compatible."""

    env_id: str
    env_kwargs: dict
    preprocessing: dict
    """`planner.preprocess.Preprocessing.to_dict()`: the rule images were stored with."""
    action_spec: dict
    """dim, normalized low/high (-1, 1) and native `low`, `high`, `units`, `frame` of one normalized unit."""
    proprio_spec: dict
    """dim (and optional names) of the proprio vector."""
    task_state_spec: dict
    """dim of the task state (what the task measures: end effector for reach, block for push)."""
    snapshot_dim: int
    control_hz: float
    policy: str
    seed: int
    steps: int
    """Actions per episode (an episode may be shorter only if the env terminated it)."""
    compression: str = "zlib"
    format_version: int = FORMAT_VERSION
    created_by: str = field(default_factory=lambda: f"latent-planner {__version__}")
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if self.steps < 1:
            raise ValueError(f"steps per episode must be >= 1, got {self.steps}")
        Preprocessing.from_dict(self.preprocessing)  # validates

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["size"])

    @property
    def image_views(self) -> int:
        """V: whole square views side by side in each stored image (the rule's `views`)."""
        return Preprocessing.from_dict(self.preprocessing).views

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of the stored images: (S, V*S, 3)."""
        return Preprocessing.from_dict(self.preprocessing).shape

    @property
    def action_dim(self) -> int:
        return int(self.action_spec["dim"])

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """16 hex digits identifying what was collected: every field but `created_by` and `created_at`.

        Two collections with the same settings (a store re-collected on another day or by another
        release) get the same fingerprint; checkpoints record it as `training_data.meta_hash`.
        """
        settings = {k: v for k, v in self.to_dict().items() if k not in ("created_by", "created_at")}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict, source: str = "meta.json") -> StoreMeta:
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in d and n not in ("created_by", "created_at"))
        if missing:
            raise StoreError(f"{source}: missing field(s) {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{source}: invalid metadata: {exc}") from exc

    def incompatibilities(self, requested: dict) -> list[str]:
        """Differences between this (stored) meta and a requested collection that forbid mixing episodes.

        `requested` holds some of env_id, env_kwargs, policy, seed, steps, preprocessing.
        """
        return [
            f"{k}: store has {getattr(self, k)!r}, requested {v!r}"
            for k, v in requested.items()
            if getattr(self, k) != v
        ]


@dataclass
class Episode:
    """One trajectory: T actions and T+1 observations (images already preprocessed to the store's size)."""

    images: np.ndarray  # uint8 [T+1, H, W, 3]
    proprio: np.ndarray  # float32 [T+1, P]
    actions: np.ndarray  # float32 [T, A], normalized to [-1, 1]
    task_state: np.ndarray  # float32 [T+1, K]
    snapshots: np.ndarray  # float64 [T+1, S], full physics state for exact replay
    goal_image: np.ndarray  # uint8 [H, W, 3]
    goal_task_state: np.ndarray  # float32 [K]
    seed: int
    index: int

    @property
    def length(self) -> int:
        """T, the number of actions."""
        return int(self.actions.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: np.asarray(getattr(self, name)) for name in _ARRAYS}
        out["format_version"] = np.int64(FORMAT_VERSION)
        out["index"] = np.int64(self.index)
        out["seed"] = np.uint64(self.seed)
        return out

    def check(self, meta: StoreMeta) -> list[str]:
        """Problems with shapes and dtypes against the store's meta; empty when the episode is valid."""
        problems = []
        for name, dtype in _ARRAYS.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype:
                got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
                problems.append(f"{name} must be {np.dtype(dtype)}, got {got}")
        if problems:
            return problems
        t = self.length
        image = meta.image_shape
        want = {
            "images": (t + 1, *image),
            "proprio": (t + 1, int(meta.proprio_spec["dim"])),
            "actions": (t, meta.action_dim),
            "task_state": (t + 1, int(meta.task_state_spec["dim"])),
            "snapshots": (t + 1, meta.snapshot_dim),
            "goal_image": image,
            "goal_task_state": (int(meta.task_state_spec["dim"]),),
        }
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                problems.append(f"{name} has shape {got}, expected {shape}")
        if not 1 <= t <= meta.steps:
            problems.append(f"episode has {t} actions, expected 1..{meta.steps}")
        if t and not np.all(np.isfinite(self.actions)):
            problems.append("actions contain NaN or inf")
        elif t and np.abs(self.actions).max() > 1.0 + 1e-6:
            problems.append(
                f"actions leave the normalized range [-1, 1] (max |a| {np.abs(self.actions).max()})"
            )
        return problems


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(final: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `final` through `write(file)` into a temp file in the same dir, fsync, then os.replace.

    On any failure (exception, Ctrl-C) the temp file is removed and `final` is untouched; a kill -9 can
    leave only a dot-prefixed `.tmp` file, which readers ignore.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(final.parent)


class TrajectoryStore:
    """A directory of episodes; open with `TrajectoryStore.open(path)` or make one with `create`."""

    def __init__(self, path: Path, meta: StoreMeta) -> None:
        self.path = Path(path)
        self.meta = meta

    # ---- opening -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, meta: StoreMeta) -> TrajectoryStore:
        """Make a new store at `path` (created if missing; must hold no episodes and no meta.json)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} exists and is not a directory; choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        existing = [p.name for p in path.iterdir() if not _TEMP_RE.match(p.name) and p.name != LOCK_FILE]
        if existing:
            shown = ", ".join(sorted(existing)[:5])
            raise StoreError(
                f"{path} is not empty ({shown}{', ...' if len(existing) > 5 else ''}); "
                "use --resume to continue a store, or choose an empty --out directory"
            )
        text = json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(path / META_FILE, lambda f: f.write(text.encode("utf-8")))
        return cls(path, meta)

    @classmethod
    def open(cls, path: str | os.PathLike) -> TrajectoryStore:
        """Open an existing store; checks meta.json (present, parseable, same format_version)."""
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            what = "does not exist" if not path.exists() else f"has no {META_FILE}"
            raise StoreError(f"{path} is not a trajectory store: it {what} (make one with `planner collect`)")
        try:
            d = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{meta_path}: not valid JSON ({exc}); the store's metadata is damaged") from exc
        if not isinstance(d, dict):
            raise StoreError(f"{meta_path}: expected a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{meta_path}: store format_version {version!r} but this code reads format_version "
                f"{FORMAT_VERSION}; re-collect the data or use a matching version of the code"
            )
        return cls(path, StoreMeta.from_dict(d, source=str(meta_path)))

    # ---- listing -----------------------------------------------------------------------------------
    def indices(self) -> list[int]:
        """Sorted indices of complete episodes (temp files from interrupted writes are not episodes)."""
        out = []
        for name in os.listdir(self.path):
            m = _SHARD_RE.match(name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def __len__(self) -> int:
        return len(self.indices())

    def missing(self, episodes: int) -> list[int]:
        """Indices in range(episodes) that have no shard yet."""
        have = set(self.indices())
        return [i for i in range(episodes) if i not in have]

    def shard_path(self, index: int) -> Path:
        return self.path / shard_name(index)

    def temp_files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if _TEMP_RE.match(p.name))

    def clean_temp_files(self) -> int:
        """Delete temp files left by interrupted writes; call only while holding `writer_lock()`."""
        removed = 0
        for p in self.temp_files():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
        return removed

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Exclusive advisory lock so two collections never write the same store at once."""
        with open(self.path / LOCK_FILE, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StoreError(
                    f"{self.path} is being written by another process (it holds {self.path / LOCK_FILE}); "
                    "wait for it to finish or stop it"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # ---- writing -----------------------------------------------------------------------------------
    def write(self, episode: Episode) -> Path:
        """Atomically write one episode shard; refuses an invalid episode or an index already stored."""
        final = self.shard_path(episode.index)
        problems = episode.check(self.meta)
        if problems:
            raise StoreError(
                f"episode {episode.index} does not fit {self.path / META_FILE}: " + "; ".join(problems)
            )
        if final.exists():
            raise EpisodeExistsError(f"{final} already exists; episodes are written once")
        save = np.savez_compressed if self.meta.compression == "zlib" else np.savez
        arrays = episode.arrays()
        try:
            atomic_write(final, lambda f: save(f, **arrays))
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                kept = len(self)
                raise StoreFullError(
                    exc.errno,
                    f"disk full while writing {final}; nothing partial was kept: the store at {self.path} "
                    f"holds {kept} complete episode(s) and still opens. Free space, then rerun with --resume "
                    "to collect the rest",
                ) from exc
            raise
        return final

    # ---- reading -----------------------------------------------------------------------------------
    def read(self, index: int) -> Episode:
        """Load and validate one episode; a damaged shard is a StoreError naming the file."""
        path = self.shard_path(index)
        if not path.is_file():
            have = self.indices()
            span = f"{len(have)} episodes" + (f", indices {have[0]}..{have[-1]}" if have else "")
            raise StoreError(f"{path}: no episode {index} in this store ({span})")
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                absent = [k for k in (*_ARRAYS, *_SCALARS) if k not in keys]
                if absent:
                    raise StoreError(f"{path}: corrupt shard, missing array(s) {', '.join(absent)}")
                data = {k: npz[k] for k in (*_ARRAYS, *_SCALARS)}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{path}: corrupt or truncated shard ({type(exc).__name__}: {exc})") from exc
        version = int(data["format_version"])
        if version != FORMAT_VERSION:
            raise StoreError(f"{path}: shard format_version {version} but this code reads {FORMAT_VERSION}")
        if int(data["index"]) != index:
            raise StoreError(f"{path}: shard says it is episode {int(data['index'])}, not {index} (renamed?)")
        ep = Episode(**{k: data[k] for k in _ARRAYS}, seed=int(data["seed"]), index=index)
        problems = ep.check(self.meta)
        if problems:
            raise StoreError(f"{path}: shard does not match {META_FILE}: " + "; ".join(problems))
        return ep

    def length(self, index: int) -> int:
        """T (actions) of one episode, reading only its small `actions` array."""
        path = self.shard_path(index)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return int(npz["actions"].shape[0])
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
            raise StoreError(f"{path}: corrupt or truncated shard ({type(exc).__name__}: {exc})") from exc

    def iter_episodes(self, indices: Iterable[int] | None = None) -> Iterator[Episode]:
        """Yield episodes one at a time in index order (or the given order); holds one in memory."""
        for i in self.indices() if indices is None else indices:
            yield self.read(i)

    def validate(self, progress: bool = False) -> int:
        """Read every shard; returns how many are valid, or raises a StoreError listing the bad files."""
        from tqdm import tqdm

        problems = []
        indices = self.indices()
        for i in tqdm(indices, desc="validate", unit="ep", disable=not progress):
            try:
                self.read(i)
            except StoreError as exc:
                problems.append(str(exc))
        if problems:
            raise StoreError(
                f"{len(problems)} of {len(indices)} shard(s) are damaged:\n" + "\n".join(problems)
            )
        return len(indices)
