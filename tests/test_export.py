"""`planner export --format lerobot`: a store written as LeRobot v3.0, read back by the spec, round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.cli import main
from planner.export import ExportConfig, ExportError, export_lerobot
from planner.importers import ImportConfig, import_dataset
from planner.importers.video import pick_encoder
from planner.store import Episode, StoreError, StoreMeta, TrajectoryStore
from tests.dataset_fixtures import synthetic_episode

LENGTHS = (10, 12, 9)  # frames per episode; T = frames - 1 actions
CAM = "observation.images.camera"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small store shaped like `planner collect` output (arm-like action spec, snapshots)."""
    path = tmp_path_factory.mktemp("store") / "s"
    meta = StoreMeta(
        env_id="ArmReach-v0", env_kwargs={}, preprocessing={"size": 64, "crop": "center"},
        action_spec={"dim": 3, "normalized_low": -1.0, "normalized_high": 1.0, "low": [-0.02, -0.02, -1.0],
                     "high": [0.02, 0.02, 1.0], "units": "m,m,gripper", "frame": "world"},
        proprio_spec={"dim": 3}, task_state_spec={"dim": 2}, snapshot_dim=5, control_hz=10.0,
        policy="explore", seed=0, steps=max(LENGTHS) - 1,
    )  # fmt: skip
    s = TrajectoryStore.create(path, meta)
    rng = np.random.default_rng(0)
    for i, n in enumerate(LENGTHS):
        src = synthetic_episode(i, n)
        actions = rng.uniform(-1, 1, (n - 1, 3)).astype(np.float32)
        actions[0] = (1.0, -1.0, 1.0)  # at the bounds: float32 native values must not widen them on import
        s.write(Episode(
            images=src["images"], proprio=src["state"], actions=actions,
            task_state=src["state"][:, :2].copy(), snapshots=rng.normal(size=(n, 5)),
            goal_image=src["images"][-1], goal_task_state=src["state"][-1, :2].copy(), seed=100 + i, index=i,
        ))  # fmt: skip
    return s


@pytest.fixture(scope="module")
def exported(tmp_path_factory, store):
    out = tmp_path_factory.mktemp("lerobot") / "ds"
    export_lerobot(
        ExportConfig(format="lerobot", data=store.path, out=out, episodes_per_file=2, progress=False)
    )
    return out


def _native(meta: StoreMeta, a: np.ndarray) -> np.ndarray:
    low, high = np.asarray(meta.action_spec["low"]), np.asarray(meta.action_spec["high"])
    return low + (a + 1) / 2 * (high - low)


def test_exported_dataset_follows_the_v30_layout(exported, store):
    import av
    import pyarrow.parquet as pq

    info = json.loads((exported / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 1
    assert info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert feats[CAM]["dtype"] == "video" and feats[CAM]["shape"] == [64, 64, 3]
    assert feats[CAM]["info"]["video.codec"] == pick_encoder("auto")[1]
    assert feats["action"]["shape"] == [3] and feats["observation.state"]["shape"] == [3]
    assert feats["observation.environment_state"]["shape"] == [2]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in feats
    episodes = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == [0, 1, 2]
    assert [e["data/file_index"] for e in episodes] == [0, 0, 1]
    assert [e["dataset_from_index"] for e in episodes] == [0, 10, 22]
    assert episodes[1][f"videos/{CAM}/from_timestamp"] == pytest.approx(1.0)
    assert episodes[2][f"videos/{CAM}/from_timestamp"] == 0.0  # first episode of the second video file
    tasks = pq.read_table(exported / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["ArmReach-v0"] and tasks.column("task_index").to_pylist() == [
        0
    ]
    assert tasks.schema.pandas_metadata["index_columns"] == ["task"]
    stats = json.loads((exported / "meta/stats.json").read_text())
    assert np.array(stats[CAM]["mean"]).shape == (3, 1, 1) and stats["action"]["count"] == [sum(LENGTHS)]
    for e, ep_index in zip(episodes, store.indices(), strict=True):
        ep = store.read(ep_index)
        data = pq.read_table(
            exported / info["data_path"].format(chunk_index=0, file_index=e["data/file_index"])
        )
        rows = data.filter(np.asarray(data.column("episode_index")) == e["episode_index"]).to_pydict()
        assert rows["frame_index"] == list(range(ep.length + 1))
        assert rows["index"] == list(range(e["dataset_from_index"], e["dataset_to_index"]))
        action = np.array(rows["action"])
        np.testing.assert_allclose(action[:-1], _native(store.meta, ep.actions), atol=1e-6)
        np.testing.assert_array_equal(action[-1], action[-2])
        np.testing.assert_array_equal(np.array(rows["observation.state"], np.float32), ep.proprio)
        video = exported / info["video_path"].format(
            video_key=CAM, chunk_index=0, file_index=e[f"videos/{CAM}/file_index"]
        )
        t0, t1 = e[f"videos/{CAM}/from_timestamp"] - 0.05, e[f"videos/{CAM}/to_timestamp"] - 0.05
        with av.open(str(video)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0) if t0 <= f.time < t1]
        assert len(frames) == ep.length + 1
        assert np.abs(np.stack(frames).astype(int) - ep.images).mean() < 4.0


def test_round_trip_through_import(tmp_path, exported, store):
    back = import_dataset(ImportConfig(format="lerobot", src=exported, out=tmp_path / "back", progress=False))
    assert back.meta.action_spec["low"] == store.meta.action_spec["low"]
    assert back.meta.action_spec["bounds_source"] == "info.json action info"
    assert back.meta.action_spec["units"] == "m,m,gripper" and back.meta.control_hz == 10.0
    for i in store.indices():
        a, b = store.read(i), back.read(i)
        np.testing.assert_allclose(b.actions, a.actions, atol=1e-5)
        np.testing.assert_array_equal(b.proprio, a.proprio)
        np.testing.assert_array_equal(b.task_state, a.task_state)  # observation.environment_state
        assert np.abs(b.images.astype(int) - a.images).mean() < 4.0


def test_cli_export_h264(tmp_path, store, capsys):
    out = tmp_path / "h264"
    main(
        [
            "export",
            "--format",
            "lerobot",
            str(store.path),
            "--out",
            str(out),
            "--codec",
            "h264",
            "--no-progress",
        ]
    )
    assert "3 episodes (31 frames, 10 fps, h264 video)" in capsys.readouterr().out
    back = import_dataset(ImportConfig(format="lerobot", src=out, out=tmp_path / "back", progress=False))
    assert np.abs(back.read(1).images.astype(int) - store.read(1).images).mean() < 4.0


def test_bad_export_inputs(tmp_path, store):
    with pytest.raises(StoreError, match="not a trajectory store"):
        export_lerobot(
            ExportConfig(format="lerobot", data=tmp_path / "none", out=tmp_path / "o", progress=False)
        )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="not an empty directory"):
        export_lerobot(ExportConfig(format="lerobot", data=store.path, out=tmp_path / "full", progress=False))
    with pytest.raises(ExportError, match="must not contain '/'"):
        export_lerobot(ExportConfig(format="lerobot", data=store.path, out=tmp_path / "o", camera_key="a/b"))
    assert not (tmp_path / "o").exists()


def test_features_of_a_two_view_store_give_its_real_frame_shape(store):
    """A store of two whole views side by side (S x 2S frames) is described as such, not as S x S."""
    from dataclasses import replace

    from planner.export import _features

    wide = replace(store.meta, preprocessing={"size": 64, "crop": "center", "views": 2})
    cfg = ExportConfig(format="lerobot", data=store.path, out=store.path.parent / "unused")
    video = _features(wide, cfg, "h264", 10)[CAM]
    assert video["shape"] == [64, 128, 3]
    assert (video["info"]["video.height"], video["info"]["video.width"]) == (64, 128)
