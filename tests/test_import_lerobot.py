"""`planner import --format lerobot`: v3.0 and v2.1 fixtures written to the spec, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.cli import main
from planner.importers import DatasetImportError, ImportConfig, VideoError, import_dataset
from planner.store import TrajectoryStore
from tests.dataset_fixtures import FPS, synthetic_episode, write_lerobot_v21, write_lerobot_v30, write_mp4

LENGTHS = (10, 12, 9)


@pytest.fixture(scope="module")
def episodes():
    return [synthetic_episode(i, n) for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def v30(tmp_path_factory, episodes):
    root = tmp_path_factory.mktemp("src") / "v30"
    write_lerobot_v30(root, episodes)
    return root


@pytest.fixture(scope="module")
def v21(tmp_path_factory, episodes):
    root = tmp_path_factory.mktemp("src") / "v21"
    write_lerobot_v21(root, episodes)
    return root


def _cfg(src, out, **kw) -> ImportConfig:
    return ImportConfig(format="lerobot", src=src, out=out, progress=False, **kw)


def _native(store: TrajectoryStore, normalized: np.ndarray) -> np.ndarray:
    low, high = (np.asarray(store.meta.action_spec[k]) for k in ("low", "high"))
    return low + (normalized + 1) / 2 * (high - low)


def _check_against_source(store: TrajectoryStore, episodes, invert: bool = False) -> None:
    assert store.indices() == [0, 1, 2]
    for i, src in enumerate(episodes):
        ep = store.read(i)
        n = len(src["state"])
        assert ep.length == n - 1 and ep.seed == i
        np.testing.assert_array_equal(ep.proprio, src["state"])
        np.testing.assert_array_equal(ep.task_state, src["state"])  # no environment_state: proprio
        np.testing.assert_allclose(_native(store, ep.actions), src["action"][:-1], atol=1e-5)
        truth = 255 - src["images"] if invert else src["images"]
        err = np.abs(ep.images.astype(int) - truth).mean(axis=(1, 2, 3))
        assert err.max() < 4.0, f"episode {i}: mean abs pixel error per frame {err}"
        # frames are the right ones, in order: each is closer to its own truth than to its neighbours
        shifted = np.abs(ep.images[1:].astype(int) - truth[:-1]).mean(axis=(1, 2, 3))
        assert np.all(err[1:] < shifted)
        np.testing.assert_array_equal(ep.goal_image, ep.images[-1])
        assert ep.snapshots.shape == (n, 0)


def test_v30_import_multi_episode_files(tmp_path, v30, episodes):
    store = import_dataset(_cfg(v30, tmp_path / "store", camera="observation.images.front"))
    _check_against_source(store, episodes)
    m = store.meta
    assert m.env_id == "import:lerobot" and m.control_hz == FPS and m.snapshot_dim == 0
    assert m.env_kwargs["codebase_version"] == "v3.0" and m.env_kwargs["tasks"] == ["move the square"]
    assert m.preprocessing == {"size": 64, "crop": "center"}
    assert m.action_spec["bounds_source"] == "meta/stats.json min/max"
    all_actions = np.concatenate([e["action"] for e in episodes])
    np.testing.assert_allclose(m.action_spec["low"], all_actions.min(0), atol=1e-6)
    assert m.proprio_spec == {"dim": 3, "names": ["x", "y", "grip"]}
    assert m.action_spec["names"] == ["dx", "dy", "grip"]


def test_v30_second_camera_split_like_data(tmp_path, v30, episodes):
    store = import_dataset(_cfg(v30, tmp_path / "store", camera="observation.images.wrist"))
    _check_against_source(store, episodes, invert=True)


def test_v21_import(tmp_path, v21, episodes):
    store = import_dataset(_cfg(v21, tmp_path / "store"))  # one camera: no --camera needed
    _check_against_source(store, episodes)
    assert store.meta.action_spec["bounds_source"] == "meta/episodes_stats.jsonl min/max"
    assert store.meta.env_kwargs["codebase_version"] == "v2.1"


def test_cli_import_and_episode_limit(tmp_path, v21, capsys):
    main(["import", "--format", "lerobot", str(v21), "--out", str(tmp_path / "s"), "--episodes", "2",
          "--image-size", "32", "--no-progress"])  # fmt: skip
    assert "imported 2 episodes" in capsys.readouterr().out
    store = TrajectoryStore.open(tmp_path / "s")
    assert len(store) == 2 and store.read(1).images.shape == (LENGTHS[1], 32, 32, 3)


def _nothing_left(parent, name="out"):
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")], "temp dir left behind"


def test_several_cameras_need_camera_flag(tmp_path, v30):
    with pytest.raises(DatasetImportError, match="observation.images.front, observation.images.wrist"):
        import_dataset(_cfg(v30, tmp_path / "out"))
    with pytest.raises(DatasetImportError, match="cameras: observation.images.front"):
        import_dataset(_cfg(v30, tmp_path / "out", camera="observation.images.top"))
    _nothing_left(tmp_path)


def test_missing_state_key_lists_numeric_features(tmp_path, v21):
    with pytest.raises(DatasetImportError, match="numeric features: observation.state, action"):
        import_dataset(_cfg(v21, tmp_path / "out", state="observation.joints"))


def test_stats_narrower_than_data_are_widened(tmp_path, v21, episodes):
    import shutil

    src = tmp_path / "narrow"
    shutil.copytree(v21, src)
    lines = [json.loads(x) for x in (src / "meta/episodes_stats.jsonl").read_text().splitlines()]
    for line in lines:
        line["stats"]["action"]["max"][0] = -10.0  # claims a max below every recorded dx
    (src / "meta/episodes_stats.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    store = import_dataset(_cfg(src, tmp_path / "store"))
    assert store.meta.action_spec["bounds_source"].endswith("widened to the data min/max")
    dx = np.concatenate([e["action"][:-1, 0] for e in episodes])
    assert store.meta.action_spec["high"][0] == pytest.approx(dx.max(), abs=1e-6)
    _check_against_source(store, episodes)


def test_unsupported_version(tmp_path, v21):
    import shutil

    src = tmp_path / "old"
    shutil.copytree(v21, src)
    info = json.loads((src / "meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (src / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetImportError, match="'v1.6' is not supported.*v2.0, v2.1, v3.0"):
        import_dataset(_cfg(src, tmp_path / "out"))
    with pytest.raises(DatasetImportError, match="not a LeRobot dataset"):
        import_dataset(_cfg(tmp_path / "nowhere", tmp_path / "out"))


def test_undecodable_video_leaves_nothing(tmp_path, v21):
    import shutil

    src = tmp_path / "broken"
    shutil.copytree(v21, src)
    video = src / "videos/chunk-000/observation.images.front/episode_000001.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoError, match="episode_000001.mp4"):
        import_dataset(_cfg(src, tmp_path / "out"))
    _nothing_left(tmp_path)


def test_frame_count_not_matching_rows(tmp_path, v21, episodes):
    import shutil

    src = tmp_path / "short"
    shutil.copytree(v21, src)
    write_mp4(src / "videos/chunk-000/observation.images.front/episode_000002.mp4",
              episodes[2]["images"][:-3], "libx264")  # fmt: skip
    with pytest.raises(VideoError, match=r"6 frames for episode 2, but its data table has 9 rows"):
        import_dataset(_cfg(src, tmp_path / "out"))
    _nothing_left(tmp_path)


def test_v30_window_beyond_video_is_a_count_mismatch(tmp_path, v30):
    import shutil

    import pyarrow.parquet as pq

    src = tmp_path / "shifted"
    shutil.copytree(v30, src)
    path = src / "meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[2]["videos/observation.images.front/from_timestamp"] += 0.5  # 5 frames past the end of the file
    rows[2]["videos/observation.images.front/to_timestamp"] += 0.5
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(VideoError, match="4 frames for episode 2 between 2.7000s and 3.6000s"):
        import_dataset(_cfg(src, tmp_path / "out", camera="observation.images.front"))


def test_out_must_be_new(tmp_path, v21):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetImportError, match="not an empty directory"):
        import_dataset(_cfg(v21, tmp_path / "out"))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
