"""planner.metrics on synthetic latents and small fake models whose answers are known."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from planner import metrics as M


class LinearDynamics(torch.nn.Module):
    """Fake world model: z' = z + a @ B (exact for latents built the same way), encode = per-channel mean."""

    def __init__(self, b: torch.Tensor, copy_last: bool = False):
        super().__init__()
        self.b = b
        self.copy_last = copy_last

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # [B,3,H,W] -> [B,3]
        return images.mean(dim=(-1, -2))

    def rollout(self, z_hist, a_prev, actions):  # [B,K,D], [B,K-1,A], [B,S,H,A] -> [B,S,H,D]
        z = z_hist[:, -1][:, None, None]  # [B,1,1,D]
        if self.copy_last:
            return z.expand(-1, actions.shape[1], actions.shape[2], -1)
        return z + torch.cumsum(actions @ self.b, dim=2)


def linear_episodes(n_eps=8, steps=30, a_dim=2, d=6, seed=0, with_goals=True):
    """Latents driven exactly by z' = z + a @ B; task state = first 2 latent dims (a linear readout)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(a_dim, d, generator=g)
    lat, acts, states = [], [], []
    for _ in range(n_eps):
        a = torch.rand(steps, a_dim, generator=g) * 2 - 1
        z0 = torch.randn(1, d, generator=g)
        z = torch.cat([z0, z0 + torch.cumsum(a @ b, dim=0)])
        lat.append(z)
        acts.append(a)
        states.append(z[:, :2].numpy().copy())
    goals = torch.stack([z[-1] for z in lat]) if with_goals else None
    goal_states = np.stack([s[-1] for s in states]) if with_goals else None
    enc = M.EncodedEpisodes(lat, acts, states, goals, goal_states)
    return enc, b


# -- collapse watch ------------------------------------------------------------------------------------------


def test_effective_rank_isotropic_is_about_d_and_rank1_is_about_1():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(4096, 32, generator=g)
    assert 30.0 < M.effective_rank(iso) <= 32.0
    rank1 = torch.randn(500, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert M.effective_rank(rank1) == pytest.approx(1.0, abs=1e-3)
    assert M.effective_rank(torch.ones(100, 8)) == 0.0
    with pytest.raises(ValueError, match="N>=2"):
        M.effective_rank(torch.ones(1, 8))


def test_per_dim_std_and_collapse_stats_flag_dead_dims():
    x = torch.randn(1000, 4)
    x[:, 2] = 3.0
    std = M.per_dim_std(x)
    assert std.shape == (4,) and std[2] == 0 and (std[[0, 1, 3]] > 0.8).all()
    stats = M.collapse_stats(x)
    assert stats["frac_dims_dead"] == 0.25 and stats["dim"] == 4 and stats["std_min"] == 0


# -- linear probe --------------------------------------------------------------------------------------------


def test_linear_probe_high_for_linear_latents_low_for_noise():
    rng = np.random.default_rng(0)
    state_tr, state_te = rng.normal(size=(800, 3)), rng.normal(size=(300, 3))
    mix = rng.normal(size=(3, 16))
    lin_tr = state_tr @ mix + 0.01 * rng.normal(size=(800, 16))
    lin_te = state_te @ mix + 0.01 * rng.normal(size=(300, 16))
    good = M.linear_probe_r2(lin_tr, state_tr, lin_te, state_te)
    assert good.mean_r2 > 0.99 and len(good.r2) == 3
    noise = M.linear_probe_r2(rng.normal(size=(800, 16)), state_tr, rng.normal(size=(300, 16)), state_te)
    assert noise.mean_r2 < 0.05


def test_mlp_probe_finds_what_is_there_nonlinearly():
    """State on a curved manifold (angle -> cos, sin features): the linear probe of the angle stays low,
    the MLP probe recovers it; same seed, same result; noise stays near zero."""
    rng = np.random.default_rng(0)
    ang_tr, ang_te = rng.uniform(-1.0, 1.0, 1500), rng.uniform(-1.0, 1.0, 400)
    feats = lambda a: np.stack([np.cos(3 * a), np.sin(3 * a)], 1)  # noqa: E731
    lin = M.linear_probe_r2(feats(ang_tr), ang_tr, feats(ang_te), ang_te)
    mlp = M.mlp_probe_r2(feats(ang_tr), ang_tr, feats(ang_te), ang_te, steps=1500)
    assert lin.mean_r2 < 0.8 and mlp.mean_r2 > 0.95
    again = M.mlp_probe_r2(feats(ang_tr), ang_tr, feats(ang_te), ang_te, steps=1500)
    assert again.r2 == mlp.r2
    noise = M.mlp_probe_r2(rng.normal(size=(1500, 2)), ang_tr, rng.normal(size=(400, 2)), ang_te, steps=300)
    assert noise.mean_r2 < 0.1
    with pytest.raises(ValueError, match="same number of rows"):
        M.mlp_probe_r2(np.zeros((10, 3)), np.zeros((9, 1)), np.zeros((5, 3)), np.zeros((5, 1)))


def test_linear_probe_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        M.linear_probe_r2(np.zeros((10, 3)), np.zeros((9, 1)), np.zeros((5, 3)), np.zeros((5, 1)))


# -- k-step error --------------------------------------------------------------------------------------------


def test_kstep_perfect_predictor_beats_copy_last_and_is_action_sensitive():
    enc, b = linear_episodes()
    res = M.kstep_prediction_error(LinearDynamics(b), enc, history_len=2, k_max=5)
    assert res.k == [1, 2, 3, 4, 5] and res.n_windows == 8 * (30 - 5 - 1 + 1)
    assert max(res.ratio) < 1e-6
    assert min(res.copy_last_error) > 0.1
    assert all(s > 1e3 for s in res.action_sensitivity)  # shuffled plans are far off, true ones exact


def test_kstep_copy_last_model_has_ratio_one_and_no_action_sensitivity():
    enc, b = linear_episodes()
    res = M.kstep_prediction_error(LinearDynamics(b, copy_last=True), enc, history_len=3, k_max=4,
                                   max_windows=50)
    assert res.n_windows == 50
    assert res.ratio == pytest.approx([1.0] * 4, rel=1e-5)
    assert res.action_sensitivity == pytest.approx([1.0] * 4, rel=1e-5)


def test_kstep_needs_long_enough_episodes():
    enc, b = linear_episodes(steps=4)
    with pytest.raises(ValueError, match="too short"):
        M.kstep_prediction_error(LinearDynamics(b), enc, history_len=2, k_max=5)


def test_imagination_error_reads_rollouts_in_the_states_units():
    """Task state = first 2 latent dims (linear): a perfect predictor imagines it within the probe's noise,
    copy-last is off by about how far the state moves in k steps, growing with k; moving windows are
    counted; a fitted probe reproduces its R^2 and reapplies identically."""
    enc, b = linear_episodes(n_eps=12)
    z_tr = torch.cat(enc.latents[:8])
    s_tr = np.concatenate(enc.task_states[:8])
    probe = M.fit_mlp_probe(z_tr, s_tr, steps=1500)
    np.testing.assert_array_equal(probe(enc.latents[9]), probe(enc.latents[9].numpy()))
    test = M.EncodedEpisodes(enc.latents[8:], enc.actions[8:], enc.task_states[8:])
    probes, states = {"task_state": (probe, slice(None))}, {"task_state": test.task_states}
    good = M.imagination_error(LinearDynamics(b), test, probes, states, history_len=2, k_max=4)
    copy = M.imagination_error(LinearDynamics(b, copy_last=True), test, probes, states, history_len=2,
                               k_max=4)
    assert good.k == [1, 2, 3, 4] and good.n_windows == 4 * (30 - 4 - 1 + 1) == copy.n_windows
    assert good.n_moving == good.n_windows  # every window moves: random actions, exact dynamics
    floor = good.probe_floor["task_state"]
    assert max(good.median["task_state"]) < 2 * floor + 1e-3
    assert copy.median["task_state"][0] > 5 * max(good.median["task_state"])
    assert np.all(np.diff(copy.median["task_state"]) > 0) and copy.p90["task_state"][0] > copy.median[
        "task_state"][0]
    # motion fidelity: the exact model imagines the state's displacement at its true size and direction,
    # copy-last imagines none
    assert good.n_displaced["task_state"] > 0
    assert good.displacement_slope["task_state"] == pytest.approx(1.0, abs=0.1)
    assert good.displacement_cosine["task_state"] > 0.95
    assert abs(copy.displacement_slope["task_state"]) < 0.1
    r2 = M.mlp_probe_r2(z_tr, s_tr, test.all_latents(), test.all_task_states(), probe=probe)
    assert r2.mean_r2 > 0.95
    with pytest.raises(ValueError, match="same quantities"):
        M.imagination_error(LinearDynamics(b), test, probes, {}, history_len=2, k_max=4)
    with pytest.raises(ValueError, match="no window"):
        M.imagination_error(LinearDynamics(b), test, probes, states, history_len=2, k_max=40)


# -- energy shape --------------------------------------------------------------------------------------------


def _state_episodes(latent_fn, n_eps=10, steps=50, seed=0):
    """Task state = a 2-D random walk; latents = latent_fn(state); goal = the last state."""
    rng = np.random.default_rng(seed)
    lat, acts, states = [], [], []
    for _ in range(n_eps):
        s = np.cumsum(rng.normal(scale=0.03, size=(steps + 1, 2)), axis=0) + rng.uniform(-0.3, 0.3, 2)
        states.append(s.astype(np.float32))
        lat.append(torch.as_tensor(latent_fn(s), dtype=torch.float32))
        acts.append(torch.zeros(steps, 2))
    goals = torch.stack([z[-1] for z in lat])
    return M.EncodedEpisodes(lat, acts, states, goals, np.stack([s[-1] for s in states]))


def test_energy_rank_correlation_about_one_for_state_latents_about_zero_for_random():
    exact = M.energy_rank_correlation(_state_episodes(lambda s: 3.0 * s), n_pairs=2000)
    for key in ("within", "across", "all", "goal"):
        assert exact.spearman[key] > 0.999, key
    assert exact.flat_ranges == [] and exact.goal_flat_ranges == []
    rng = np.random.default_rng(1)
    rand = M.energy_rank_correlation(_state_episodes(lambda s: rng.normal(size=(len(s), 8))), n_pairs=2000)
    assert abs(rand.spearman["all"]) < 0.1 and abs(rand.spearman["goal"]) < 0.15
    d = rand.to_dict()
    assert set(d) >= {"spearman", "bins", "flat_ranges", "goal_span", "goal_bins"}


def test_flatness_detector_flags_saturating_energy():
    # tanh saturates: latent distance keeps growing only while states are within ~0.1 m of each other
    res = M.energy_rank_correlation(_state_episodes(lambda s: np.tanh(s / 0.05)), n_pairs=4000)
    assert res.flat_ranges, "tanh-saturated latents must show flat bins"
    assert res.flat_ranges[0][0] > 0.05  # the near range still discriminates
    lin = M.energy_rank_correlation(_state_episodes(lambda s: s), n_pairs=4000)
    assert lin.flat_ranges == []
    bins = M.energy_bins(np.linspace(0, 1, 1000), np.minimum(np.linspace(0, 1, 1000), 0.3), hi=1.0)
    assert [b.flat for b in bins] == [False] * 4 + [True] * 6
    assert M.flat_ranges(bins) == [pytest.approx((0.4, 1.0))]


def test_goal_threshold_is_quantile_of_close_pairs():
    enc = _state_episodes(lambda s: 2.0 * s, n_eps=20)
    thr = M.calibrate_goal_energy_threshold(enc, success_threshold=0.05, boundary_accept=0.05)
    assert thr.source == "goal" and thr.n_close >= 20 and thr.n_band >= 20
    # latent distance = 2x true distance: the threshold sits just above 2 x 0.05, inside the near-miss band
    assert 2.0 * 0.05 <= thr.threshold < 2.0 * 0.05 * thr.band
    assert thr.recall == 1.0  # monotone energy: every truly close pair is accepted
    assert thr.false_accept_rate < 0.05  # only the nearest near misses are
    with pytest.raises(ValueError, match="pairs closer than"):
        M.calibrate_goal_energy_threshold(enc, success_threshold=1e-6, min_pairs=21)  # 20 goals reached


def test_goal_threshold_falls_back_to_state_pairs_without_goals():
    enc, _ = linear_episodes(with_goals=False)
    thr = M.calibrate_goal_energy_threshold(enc, success_threshold=0.5, min_pairs=5)
    assert thr.source == "states" and thr.n_close >= 5 and thr.threshold > 0


# -- encoding and plotting -----------------------------------------------------------------------------------


def test_encode_episodes_batches_and_keeps_goals():
    rng = np.random.default_rng(0)
    eps = [SimpleNamespace(images=rng.integers(0, 256, (11, 8, 8, 3), dtype=np.uint8),
                           actions=rng.uniform(-1, 1, (10, 2)).astype(np.float32),
                           task_state=rng.normal(size=(11, 3)).astype(np.float32),
                           goal_image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                           goal_task_state=np.zeros(3, np.float32)) for _ in range(3)]
    enc = M.encode_episodes(LinearDynamics(torch.zeros(2, 3)), eps, batch_size=4)
    expect = eps[1].images.reshape(11, -1, 3).mean(1) / 127.5 - 1.0
    assert torch.allclose(enc.latents[1], torch.as_tensor(expect, dtype=torch.float32), atol=1e-5)
    assert enc.has_goals and enc.goal_latents.shape == (3, 3) and enc.goal_task_states.shape == (3, 3)


def test_encoded_episodes_validates_lengths():
    with pytest.raises(ValueError, match="T\\+1"):
        M.EncodedEpisodes([torch.zeros(5, 2)], [torch.zeros(5, 2)], [np.zeros((5, 2))])


def test_plot_energy_curve_writes_png(tmp_path):
    res = M.energy_rank_correlation(_state_episodes(lambda s: np.tanh(s / 0.05)), n_pairs=500)
    out = M.plot_energy_curve(res, tmp_path / "sub" / "energy.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- integration: real WorldModel, real checkpoint, real store, the CLI ------------------------------------

SIZE, STEPS = 32, 12


def _square_episode(index: int):
    """A 4 px bright square that the actions move: task state = its (x, y) in [0, 1] (and 0)."""
    from planner.store import Episode

    rng = np.random.default_rng(index)
    pos = rng.uniform(0.2, 0.8, 2)
    actions = rng.uniform(-1, 1, (STEPS, 4)).astype(np.float32)
    states = [pos]
    for a in actions:
        states.append(np.clip(states[-1] + 0.06 * a[:2], 0.0, 1.0))
    goal = rng.uniform(0.2, 0.8, 2)

    def draw(p):
        img = np.full((SIZE, SIZE, 3), 30, np.uint8)
        r, c = (p * (SIZE - 4)).astype(int)
        img[r:r + 4, c:c + 4] = 230
        return img

    states = np.array(states)
    return Episode(
        images=np.stack([draw(p) for p in states]),
        proprio=np.concatenate([states, np.zeros((STEPS + 1, 1))], 1).astype(np.float32),
        actions=actions,
        task_state=np.concatenate([states, np.zeros((STEPS + 1, 1))], 1).astype(np.float32),
        snapshots=np.zeros((STEPS + 1, 2)),
        goal_image=draw(goal),
        goal_task_state=np.array([*goal, 0.0], np.float32),
        seed=index,
        index=index,
    )


def _tiny_checkpoint_and_store(tmp_path):
    """A real store of 12 square episodes and a randomly initialised real WorldModel checkpoint."""
    from planner import checkpoint
    from planner.preprocess import Preprocessing
    from planner.store import StoreMeta, TrajectoryStore
    from planner.world_model import WorldModel, WorldModelConfig

    meta = StoreMeta(env_id="ArmReach-v0", env_kwargs={}, preprocessing=Preprocessing(size=SIZE).to_dict(),
                     action_spec={"dim": 4, "low": [-0.05] * 4, "high": [0.05] * 4, "units": "m",
                                  "frame": "world"},
                     proprio_spec={"dim": 3}, task_state_spec={"dim": 3}, snapshot_dim=2, control_hz=10.0,
                     policy="random", seed=0, steps=STEPS)
    store = TrajectoryStore.create(tmp_path / "data", meta)
    for i in range(12):
        store.write(_square_episode(i))
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(image_size=SIZE, latent_dim=16, history_len=2,
                                        enc_channels=(8, 16, 16), pred_hidden=32)).eval()
    checkpoint.save(tmp_path / "ckpt", model, {
        "image": {"size": SIZE, "preprocessing": {"size": SIZE, "crop": "center"}},
        "action": {"dim": 4, "low": [-0.05] * 4, "high": [0.05] * 4, "units": "m"},
        "history_len": 2,
        "training_data": {"store": str(tmp_path / "data"), "val_episodes": [3, 7, 9, 11]},
    })
    return tmp_path / "ckpt", tmp_path / "data"


def test_quality_cli_on_real_model_checkpoint_and_store(tmp_path, capsys):
    import json

    from planner.cli import main

    _tiny_checkpoint_and_store(tmp_path)
    out_json, out_png = tmp_path / "q.json", tmp_path / "q.png"
    main(["quality", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(tmp_path / "data"),
          "--json", str(out_json), "--plot", str(out_png), "--pairs", "300", "--success-threshold", "0.1",
          "--device", "cpu", "--mlp-probe"])
    printed = capsys.readouterr().out
    assert "effective rank" in printed and "pred / copy-last" in printed
    rep = json.loads(out_json.read_text())
    assert rep["val_episodes"] == [3, 7, 9, 11] and rep["probe_train_episodes"] == 8
    assert rep["model"].startswith("ckpt@") and rep["env"] == "ArmReach-v0"
    assert 1.0 < rep["collapse"]["effective_rank"] <= 16
    # a (seeded) random conv net on a moving bright square carries part of its position linearly;
    # the constant third task-state dim has no variance: NaN R^2, written as null
    r2 = rep["probe"]["task_state"]["r2"]
    assert max(r2[:2]) > 0.3 and r2[2] is None and rep["probe"]["proprio"]["r2"] == r2
    mlp = rep["probe"]["task_state (MLP)"]["r2"]
    assert len(mlp) == 3 and mlp[2] is None and "probe R^2 task_state (MLP)" in printed
    k = rep["kstep"]
    assert k["k"] == [1, 2, 3, 4, 5] and k["n_windows"] == 4 * (STEPS - 5)
    assert all(c > 0 for c in k["copy_last_error"]) and all(r > 0 for r in k["ratio"])
    im = rep["imagination"]  # proprio dim 3 >= 3: the end effector is read too
    assert set(im["median"]) == {"task_state", "proprio[:3]"} and im["k"] == [1, 2, 3, 4, 5]
    assert im["n_windows"] == k["n_windows"] and all(v >= 0 for v in im["median"]["task_state"])
    assert "imagined task_state, median" in printed
    assert all(-1 <= v <= 1 for v in rep["energy"]["spearman"].values())
    assert set(rep["energy"]["spearman"]) == {"within", "across", "all", "goal"}
    assert "threshold" in rep["goal_threshold"] or "error" in rep["goal_threshold"]
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_split_indices_recorded_count_and_fallback():
    from planner.quality import split_indices

    idx = list(range(20))
    assert split_indices(idx, {"training_data": {"val_episodes": [2, 5]}})[1] == [2, 5]
    assert split_indices(idx, {"training_data": {"val_episodes": 3}})[1] == [17, 18, 19]
    recorded = {"training_data": {"val_episodes": 3, "val_indices": [16, 18]}}  # store grew after training
    assert split_indices(idx, recorded)[1] == [16, 17, 18]
    train, val, source = split_indices(idx, {})
    assert val == [18, 19] and train == list(range(18)) and "10%" in source
    with pytest.raises(ValueError, match="store lacks"):
        split_indices(idx, {"training_data": {"val_episodes": [99]}})


def test_quality_rejects_too_few_episodes(tmp_path):
    from planner.quality import QualityConfig, run

    ckpt, data = _tiny_checkpoint_and_store(tmp_path)
    with pytest.raises(ValueError, match="--episodes must be >= 2"):
        run(QualityConfig(checkpoint=ckpt, data=data, episodes=1, success_threshold=0.1, device="cpu"))


def test_linear_probe_leaves_out_targets_that_do_not_vary():
    """A block resting on the table (height jitter well under 1 mm) is not scored as an unexplained target."""
    rng = np.random.default_rng(1)
    xy_tr, xy_te = rng.normal(size=(500, 2)), rng.normal(size=(200, 2))
    mix = rng.normal(size=(2, 8))
    z_tr, z_te = 0.025 + 1e-5 * rng.normal(size=(500, 1)), 0.025 + 1e-5 * rng.normal(size=(200, 1))
    res = M.linear_probe_r2(xy_tr @ mix, np.hstack([xy_tr, z_tr]), xy_te @ mix, np.hstack([xy_te, z_te]))
    assert np.isnan(res.r2[2]) and res.mean_r2 > 0.99
