"""Trajectory store: round trip, atomic writes, crash leftovers, version/corruption errors, full disk."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from planner import store as store_mod
from planner.preprocess import Preprocessing
from planner.store import (
    FORMAT_VERSION,
    Episode,
    StoreError,
    StoreFullError,
    StoreMeta,
    TrajectoryStore,
)

H, A, P, K, S = 16, 4, 5, 3, 7


def make_meta(compression: str = "zlib", steps: int = 6) -> StoreMeta:
    return StoreMeta(
        env_id="Fake-v0",
        env_kwargs={"k": 1},
        preprocessing=Preprocessing(size=H).to_dict(),
        action_spec={
            "dim": A,
            "normalized_low": -1.0,
            "normalized_high": 1.0,
            "low": [-0.02] * A,
            "high": [0.02] * A,
            "units": "m",
            "frame": "world",
        },
        proprio_spec={"dim": P},
        task_state_spec={"dim": K},
        snapshot_dim=S,
        control_hz=10.0,
        policy="random",
        seed=3,
        steps=steps,
        compression=compression,
    )


def make_episode(index: int, t: int = 6) -> Episode:
    rng = np.random.default_rng(index)
    return Episode(
        images=rng.integers(0, 256, (t + 1, H, H, 3), dtype=np.uint8),
        proprio=rng.standard_normal((t + 1, P)).astype(np.float32),
        actions=rng.uniform(-1, 1, (t, A)).astype(np.float32),
        task_state=rng.standard_normal((t + 1, K)).astype(np.float32),
        snapshots=rng.standard_normal((t + 1, S)),
        goal_image=rng.integers(0, 256, (H, H, 3), dtype=np.uint8),
        goal_task_state=rng.standard_normal(K).astype(np.float32),
        seed=2**62 + index,
        index=index,
    )


def assert_same(a: Episode, b: Episode) -> None:
    for name in ("images", "proprio", "actions", "task_state", "snapshots", "goal_image", "goal_task_state"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert (a.seed, a.index) == (b.seed, b.index)


@pytest.mark.parametrize("compression", ["zlib", "none"])
def test_round_trip_and_streaming(tmp_path, compression):
    store = TrajectoryStore.create(tmp_path / "s", make_meta(compression))
    eps = [make_episode(i) for i in (0, 1, 3)]
    for ep in eps:
        store.write(ep)
    reopened = TrajectoryStore.open(tmp_path / "s")
    assert reopened.meta == store.meta
    assert reopened.indices() == [0, 1, 3] and len(reopened) == 3
    assert reopened.missing(5) == [2, 4]
    for got, want in zip(reopened.iter_episodes(), eps, strict=True):
        assert_same(got, want)
    assert_same(reopened.read(3), eps[2])
    assert reopened.validate() == 3
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["preprocessing"] == {"size": H, "crop": "center"}


def test_short_episode_is_allowed_but_longer_is_not(tmp_path):
    store = TrajectoryStore.create(tmp_path, make_meta(steps=6))
    store.write(make_episode(0, t=4))  # an env that terminated early
    assert store.read(0).length == 4
    with pytest.raises(StoreError, match="7 actions, expected 1..6"):
        store.write(make_episode(1, t=7))


def test_write_rejects_bad_episode_and_duplicates(tmp_path):
    store = TrajectoryStore.create(tmp_path, make_meta())
    bad = make_episode(0)
    bad.images = bad.images[:, :8]
    with pytest.raises(StoreError, match=r"images has shape \(7, 8, 16, 3\), expected \(7, 16, 16, 3\)"):
        store.write(bad)
    bad = make_episode(0)
    bad.actions = bad.actions * 3
    with pytest.raises(StoreError, match="normalized range"):
        store.write(bad)
    store.write(make_episode(0))
    with pytest.raises(StoreError, match="already exists"):
        store.write(make_episode(0))
    assert store.indices() == [0]


def test_create_refuses_non_empty_dir_and_open_refuses_non_store(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty.*--resume"):
        TrajectoryStore.create(tmp_path, make_meta())
    with pytest.raises(StoreError, match="not a trajectory store"):
        TrajectoryStore.open(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        TrajectoryStore.open(tmp_path / "nope")


def test_crash_mid_write_leaves_no_episode(tmp_path, monkeypatch):
    store = TrajectoryStore.create(tmp_path, make_meta())
    store.write(make_episode(0))

    def dies_half_way(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        store.write(make_episode(1))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_000000.npz", "meta.json"]
    reopened = TrajectoryStore.open(tmp_path)
    assert reopened.indices() == [0] and reopened.validate() == 1


def test_kill_leftover_temp_files_are_ignored_and_cleaned(tmp_path):
    store = TrajectoryStore.create(tmp_path, make_meta())
    store.write(make_episode(0))
    leftover = tmp_path / ".episode_000001.npz.x8k2.tmp"  # what kill -9 during a write leaves
    leftover.write_bytes(b"PK\x03\x04 truncated")
    reopened = TrajectoryStore.open(tmp_path)
    assert reopened.indices() == [0] and reopened.missing(2) == [1]
    assert reopened.validate() == 1
    with reopened.writer_lock():
        assert reopened.clean_temp_files() == 1
    assert not leftover.exists()


def test_writer_lock_is_exclusive(tmp_path):
    store = TrajectoryStore.create(tmp_path, make_meta())
    other = TrajectoryStore.open(tmp_path)
    with (
        store.writer_lock(),
        pytest.raises(StoreError, match="being written by another process"),
        other.writer_lock(),
    ):
        pass
    with other.writer_lock():
        pass


def test_version_mismatch_names_file_and_both_versions(tmp_path):
    TrajectoryStore.create(tmp_path, make_meta())
    meta_path = tmp_path / "meta.json"
    d = json.loads(meta_path.read_text())
    d["format_version"] = 99
    meta_path.write_text(json.dumps(d))
    with pytest.raises(StoreError) as err:
        TrajectoryStore.open(tmp_path)
    msg = str(err.value)
    assert str(meta_path) in msg and "99" in msg and f"format_version {FORMAT_VERSION}" in msg


def test_damaged_meta_is_a_clear_error(tmp_path):
    TrajectoryStore.create(tmp_path, make_meta())
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(StoreError, match="meta.json: not valid JSON"):
        TrajectoryStore.open(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "env_id": "x"}))
    with pytest.raises(StoreError, match="missing field.*action_spec"):
        TrajectoryStore.open(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_shard_names_the_file(tmp_path, damage):
    store = TrajectoryStore.create(tmp_path, make_meta("none"))
    for i in range(3):
        store.write(make_episode(i))
    path = store.shard_path(1)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = bytearray(b"this is not a zip file")
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"episode_000001\.npz: corrupt or truncated shard"):
        store.read(1)
    assert_same(store.read(2), make_episode(2))
    with pytest.raises(StoreError, match=r"1 of 3 shard\(s\) are damaged:\n.*episode_000001\.npz"):
        store.validate()


def test_shard_that_does_not_match_meta_names_the_file(tmp_path):
    store = TrajectoryStore.create(tmp_path, make_meta())
    ep = make_episode(0)
    arrays = ep.arrays()
    arrays["proprio"] = arrays["proprio"][:, :2]
    np.savez(store.shard_path(0), **arrays)
    with pytest.raises(StoreError, match=r"episode_000000\.npz: shard does not match meta.json: proprio"):
        store.read(0)
    arrays = ep.arrays()
    del arrays["snapshots"]
    store.shard_path(0).unlink()
    np.savez(store.shard_path(0), **arrays)
    with pytest.raises(StoreError, match=r"episode_000000\.npz: corrupt shard, missing array\(s\) snapshots"):
        store.read(0)
    with pytest.raises(StoreError, match=r"episode_000005\.npz: no episode 5"):
        store.read(5)


def test_full_disk_keeps_store_consistent(tmp_path, monkeypatch):
    store = TrajectoryStore.create(tmp_path, make_meta())
    store.write(make_episode(0))
    store.write(make_episode(1))

    def disk_fills(f, **arrays):
        f.write(b"PK\x03\x04" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_fills)
    with pytest.raises(StoreFullError) as err:
        store.write(make_episode(2))
    monkeypatch.undo()
    msg = str(err.value)
    assert "disk full" in msg and "episode_000002.npz" in msg and "holds 2 complete episode(s)" in msg
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "episode_000000.npz",
        "episode_000001.npz",
        "meta.json",
    ]
    assert TrajectoryStore.open(tmp_path).validate() == 2
    store.write(make_episode(2))  # after freeing space the same episode writes fine
    assert TrajectoryStore.open(tmp_path).validate() == 3


def test_full_disk_on_create_leaves_no_meta(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        TrajectoryStore.create(tmp_path / "s", make_meta())
    monkeypatch.undo()
    assert list((tmp_path / "s").iterdir()) == []
    TrajectoryStore.create(tmp_path / "s", make_meta())  # retry works: nothing half-written was left


def test_fingerprint_ignores_when_and_by_whom_but_not_settings():
    a = make_meta()
    b = StoreMeta.from_dict({**a.to_dict(), "created_at": "1999-01-01T00:00:00Z", "created_by": "other"})
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    assert make_meta(steps=7).fingerprint() != a.fingerprint()
    assert StoreMeta.from_dict({**a.to_dict(), "seed": a.seed + 1}).fingerprint() != a.fingerprint()
