"""`planner import --format robomimic`: an HDF5 file in robomimic's layout, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cli import main
from planner.importers import DatasetImportError, ImportConfig, import_dataset
from planner.store import TrajectoryStore
from tests.dataset_fixtures import synthetic_episode, write_robomimic

LENGTHS = (10, 12, 9)


@pytest.fixture(scope="module")
def episodes():
    return [synthetic_episode(i, n) for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def hdf5(tmp_path_factory, episodes):
    path = tmp_path_factory.mktemp("src") / "demo.hdf5"
    write_robomimic(path, episodes)
    return path


def _cfg(src, out, **kw) -> ImportConfig:
    return ImportConfig(format="robomimic", src=src, out=out, progress=False, **kw)


def _proprio(src: dict) -> np.ndarray:
    """What the fixture stored as robot0_eef_pos (3), robot0_eef_quat (4), robot0_gripper_qpos (2)."""
    n = len(src["state"])
    return np.concatenate([src["state"][:, :2], np.zeros((n, 1)), np.tile([0, 0, 0, 1.0], (n, 1)),
                           np.stack([src["state"][:, 2], -src["state"][:, 2]], 1)], 1)  # fmt: skip


def test_import_uses_next_obs_for_the_last_frame(tmp_path, hdf5, episodes):
    store = import_dataset(_cfg(hdf5, tmp_path / "store"))
    m = store.meta
    assert m.env_id == "import:robomimic" and m.control_hz == 20.0
    assert m.env_kwargs["camera"] == "agentview_image" and m.env_kwargs["env_name"] == "Synthetic"
    assert m.action_spec["bounds_source"] == "data min/max" and m.proprio_spec["dim"] == 9
    low, high = np.asarray(m.action_spec["low"]), np.asarray(m.action_spec["high"])
    for i, src in enumerate(episodes):
        ep = store.read(i)
        n = len(src["state"])  # n - 1 robomimic samples + the last next_obs = n observations
        assert ep.length == n - 1
        np.testing.assert_array_equal(ep.images, src["images"])  # raw uint8, lossless
        np.testing.assert_allclose(ep.proprio, _proprio(src), atol=1e-6)
        native = low + (ep.actions + 1) / 2 * (high - low)
        np.testing.assert_allclose(native, src["action"][:-1], atol=1e-5)
    # the gripper action never varies within episode 0 halves but does over the set: bounds are the data's
    all_actions = np.concatenate([e["action"][:-1] for e in episodes])
    np.testing.assert_allclose(low, all_actions.min(0), atol=1e-6)


def test_without_next_obs_the_last_action_is_dropped(tmp_path, episodes):
    path = tmp_path / "no_next.hdf5"
    write_robomimic(path, episodes, next_obs=False)
    store = import_dataset(_cfg(path, tmp_path / "store"))
    assert store.read(0).length == LENGTHS[0] - 2


def test_filter_key_camera_state_flip(tmp_path, hdf5, episodes, capsys):
    main(["import", "--format", "robomimic", str(hdf5), "--out", str(tmp_path / "s"), "--filter-key", "valid",
          "--camera", "robot0_eye_in_hand_image", "--state", "robot0_eef_pos", "--flip-vertical",
          "--no-progress"])  # fmt: skip
    assert "imported 1 episodes" in capsys.readouterr().out
    store = TrajectoryStore.open(tmp_path / "s")
    ep = store.read(0)
    assert ep.seed == 2 and store.meta.proprio_spec["dim"] == 3
    np.testing.assert_array_equal(ep.images, (255 - episodes[2]["images"])[:, ::-1])


def test_bad_inputs_say_what_exists(tmp_path, hdf5):
    with pytest.raises(DatasetImportError, match="cameras: agentview_image, robot0_eye_in_hand_image"):
        import_dataset(_cfg(hdf5, tmp_path / "out", camera="frontview_image"))
    with pytest.raises(DatasetImportError, match="low-dim observations: .*robot0_eef_pos"):
        import_dataset(_cfg(hdf5, tmp_path / "out", state="joint_pos"))
    with pytest.raises(DatasetImportError, match="datasets: actions, dones, rewards, states"):
        import_dataset(_cfg(hdf5, tmp_path / "out", action="actions_abs"))
    with pytest.raises(DatasetImportError, match="no filter key 'test' under mask/; have train, valid"):
        import_dataset(_cfg(hdf5, tmp_path / "out", filter_key="test"))
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetImportError, match="not a readable HDF5 file"):
        import_dataset(_cfg(junk, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
