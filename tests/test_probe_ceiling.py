"""planner probe-ceiling: the pinhole projection matches the renderer, and the ceiling behaves as geometry
says (exact on the table plane, cut by lifted points, less so from the steeper camera)."""

import json

import numpy as np
import pytest

from planner.collect import CollectConfig, collect
from planner.probe_ceiling import ProbeCeilingConfig, camera_pixels, ceiling_r2, run, view_features
from tests.block_scene import block_scene, red_centroid, render_block_at


@pytest.mark.parametrize("camera", ["table", "table_high", "workspace"])
def test_projected_block_centre_is_where_the_renderer_draws_the_block(camera):
    env = block_scene(camera)
    for xyz in ((0.40, -0.10, 0.025), (0.30, 0.12, 0.025), (0.45, 0.0, 0.15)):
        drawn = red_centroid(render_block_at(env, xyz), min_pixels=21)
        projected = camera_pixels(env.model, camera, np.array([xyz]), image_size=128)[0]
        assert np.abs(drawn - projected).max() < 2.0, (xyz, drawn, projected)


def _points(n: int, rng, lifted_fraction: float) -> np.ndarray:
    xyz = np.c_[rng.uniform(0.18, 0.55, n), rng.uniform(-0.25, 0.2, n), np.full(n, 0.025)]
    lift = rng.random(n) < lifted_fraction
    xyz[lift, 2] += rng.uniform(0.05, 0.2, lift.sum())
    return xyz


def test_ceiling_is_exact_on_the_table_plane_and_cut_less_by_lifts_from_the_steeper_camera():
    rng = np.random.default_rng(0)
    flat_tr, flat_va = _points(400, rng, 0.0), _points(200, rng, 0.0)
    mixed_tr, mixed_va = _points(400, rng, 0.1), _points(200, rng, 0.1)
    all_r2 = {}
    for camera in ("table", "table_high"):
        f_tr, f_va = (view_features("ArmPickPlace-v0", {}, camera, p) for p in (flat_tr, flat_va))
        flat = ceiling_r2(f_tr, flat_tr[:, :2], f_va, flat_va[:, :2], np.zeros(200, bool), ridge=0.0)
        # a plane's perspective image is a homography: nearly linear over the table region
        assert min(flat["r2_xy"]) > 0.98 and flat["r2_xy_lifted"] is None
        m_tr, m_va = (view_features("ArmPickPlace-v0", {}, camera, p) for p in (mixed_tr, mixed_va))
        lifted = mixed_va[:, 2] > 0.045
        all_r2[camera] = ceiling_r2(m_tr, mixed_tr[:, :2], m_va, mixed_va[:, :2], lifted, ridge=0.0)
    assert min(all_r2["table_high"]["r2_xy"]) > max(all_r2["table"]["r2_xy"])
    assert min(all_r2["table"]["r2_xy_on_table"]) > max(all_r2["table"]["r2_xy_lifted"])


def test_two_views_concatenate_their_coordinates_and_the_wrist_is_refused():
    pts = _points(5, np.random.default_rng(1), 0.0)
    both = view_features("ArmPickPlace-v0", {}, "table+workspace", pts)
    assert both.shape == (5, 4)
    np.testing.assert_allclose(both[:, :2], view_features("ArmPickPlace-v0", {}, "table", pts))
    with pytest.raises(ValueError, match="wrist"):
        view_features("ArmPickPlace-v0", {}, "wrist", pts)


def test_cli_reports_each_camera_for_a_collected_store(tmp_path):
    store = tmp_path / "store"
    collect(CollectConfig(env="ArmPickPlace-v0", episodes=3, out=store, steps=4, image_size=16,
                          policy="random", env_kwargs='{"image_size": 16}'), progress=False)
    out = tmp_path / "ceiling.json"
    report = run(ProbeCeilingConfig(data=store, cameras=("table", "table+workspace"), json=out))
    assert out.read_text() == json.dumps(report, indent=2) + "\n"
    assert set(report["cameras"]) == {"table", "table+workspace"}
    # a random arm seldom touches the block: a target with no variance is NaN (metrics.linear_probe_r2)
    for res in report["cameras"].values():
        assert len(res["r2_xy"]) == 2 and res["r2_xy_lifted"] is None
    assert report["probe_train_episodes"] == 2 and report["val_frames"] == 5
    with pytest.raises(ValueError, match="probe-episodes"):
        run(ProbeCeilingConfig(data=store, probe_episodes=0))
