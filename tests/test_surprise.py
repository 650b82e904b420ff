"""Physical-surprise detection: impossible/possible clips (envs.impossible) and `planner surprise`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import envs
from envs.arm import BLOCK_HALF
from envs.impossible import KINDS, RECOLOR_PALETTE, ClipConfig, make_clips, mean_pixel_change
from planner.surprise import (
    auroc,
    history_windows,
    pairwise_accuracy,
    peak_within,
    prediction_errors,
    score_clip,
    summarize,
)

CFG = ClipConfig(steps=8, violation_min=3, violation_max=5)


@pytest.fixture(scope="module")
def env():
    e = envs.make_env("ArmPush-v0", render_goal=False)
    yield e
    e.close()


@pytest.fixture(scope="module")
def clips(env):
    return make_clips(env, 7, cfg=CFG)


def red_pixels(frame: np.ndarray) -> int:
    """Pixels of the red block (the fingers are orange, the arm blue, the table grey)."""
    f = frame.astype(int)
    return int(((f[..., 0] > 150) & (f[..., 1] < 70) & (f[..., 2] < 70)).sum())


def test_clip_generation_is_deterministic(env, clips):
    again = make_clips(env, 7, kinds=("teleport", "resize"), cfg=CFG)
    assert np.array_equal(again.possible.frames, clips.possible.frames)
    assert np.array_equal(again.possible.actions, clips.possible.actions)
    for kind in ("teleport", "resize"):
        assert np.array_equal(again.impossible[kind].frames, clips.impossible[kind].frames)
        assert np.array_equal(again.impossible[kind].block_position, clips.impossible[kind].block_position)
    other = make_clips(env, 8, kinds=("vanish",), cfg=CFG)
    assert not np.array_equal(other.possible.frames, clips.possible.frames)


def test_possible_clip_has_no_violation_and_the_arm_moves_the_block_at_v(clips):
    p = clips.possible
    t = CFG.steps
    assert p.kind == "possible" and p.violation_step is None
    assert p.frames.shape == (t + 1, 64, 64, 3) and p.frames.dtype == np.uint8
    assert p.actions.shape == (t, 4) and np.all(np.abs(p.actions) <= 1.0)
    assert np.all(p.block_rgba == p.block_rgba[0]) and p.block_rgba[0, 3] == 1.0
    assert np.all(p.block_size == BLOCK_HALF) and p.block_contacts.all()
    assert np.all(p.block_position[:, 2] > BLOCK_HALF - 0.005)  # resting on (not in) the table
    v = clips.impossible["vanish"].violation_step
    assert red_pixels(p.frames[v]) >= 8 and red_pixels(p.frames[v + 1]) >= 8  # in view around v
    assert CFG.violation_min <= v <= CFG.violation_max
    step = np.linalg.norm(p.block_position[v + 1, :2] - p.block_position[v, :2])
    assert step >= CFG.min_block_motion_m  # the possible clip's block is pushed at the violation step


@pytest.mark.parametrize("kind", KINDS)
def test_violation_changes_the_state_exactly_at_step_v(clips, kind):
    p, c = clips.possible, clips.impossible[kind]
    v = c.violation_step
    assert c.kind == kind and np.array_equal(c.actions, p.actions)
    # identical up to and including frame v, different from frame v+1 on
    assert np.array_equal(c.frames[: v + 1], p.frames[: v + 1])
    assert np.array_equal(c.block_position[: v + 1], p.block_position[: v + 1])
    assert np.array_equal(c.block_rgba[: v + 1], p.block_rgba[: v + 1])
    assert not np.array_equal(c.frames[v + 1], p.frames[v + 1])
    before, after, after_p = c.block_position[v], c.block_position[v + 1], p.block_position[v + 1]
    if kind == "vanish":
        assert c.block_rgba[v + 1, 3] == 0.0 and not c.block_contacts[v + 1]
        assert red_pixels(c.frames[v + 1]) == 0 < red_pixels(p.frames[v + 1])
    elif kind == "teleport":
        jump = np.linalg.norm(after[:2] - after_p[:2])
        assert CFG.teleport_min_m - 1e-9 <= jump <= CFG.teleport_max_m + 1e-9
        assert abs(after[2] - after_p[2]) < 1e-9 and c.block_contacts.all()
        assert red_pixels(c.frames[v + 1]) >= 8  # lands in view
    elif kind == "recolor":
        assert any(np.allclose(c.block_rgba[v + 1], col) for col in RECOLOR_PALETTE)
        assert np.array_equal(c.block_position[v + 1], after_p)
        assert red_pixels(c.frames[v + 1]) == 0 < red_pixels(p.frames[v + 1])
    elif kind == "resize":
        scale = c.block_size[v + 1] / c.block_size[v]
        assert np.allclose(scale, scale[0]) and CFG.resize_min <= scale[0] <= CFG.resize_max
        assert abs((after[2] - c.block_size[v + 1, 2]) - (after_p[2] - BLOCK_HALF)) < 2e-3  # on the table
        assert red_pixels(c.frames[v + 1]) > 1.5 * red_pixels(p.frames[v + 1])
    elif kind == "fall_through":
        assert after[2] < BLOCK_HALF - 0.03 < before[2] and not c.block_contacts[v + 1]
        assert np.all(np.diff(c.block_position[v + 1 :, 2]) < 0)  # keeps falling through the table
        assert c.block_position[-1, 2] < -BLOCK_HALF
    # the violation persists; nothing else about the block changed at v+1
    if kind in ("vanish", "recolor"):
        assert np.all(c.block_rgba[v + 1 :] == c.block_rgba[v + 1])
    if kind != "resize":
        assert np.all(c.block_size == BLOCK_HALF)


def test_clips_render_a_side_by_side_camera_and_see_the_block_in_its_views():
    """The block-visibility check counts the block in each view of camera="table+workspace"."""
    env = envs.make_env("ArmPush-v0", camera="table+workspace", render_goal=False)
    c = make_clips(env, 7, kinds=("vanish",), cfg=CFG)
    v = c.impossible["vanish"].violation_step
    assert c.possible.frames.shape == (CFG.steps + 1, 64, 64, 3)
    seen, vanished = c.possible.frames[v + 1], c.impossible["vanish"].frames[v + 1]
    for half in (slice(0, 32), slice(32, 64)):
        assert red_pixels(seen[:, half]) > 0 == red_pixels(vanished[:, half])
    env.close()


def test_model_changes_are_restored(env):
    m = env.unwrapped.model
    g = m.geom("block").id
    names = ("geom_rgba", "geom_matid", "geom_size", "geom_rbound", "geom_aabb", "geom_contype",
             "geom_conaffinity")
    before = {n: getattr(m, n)[g].copy() for n in names}
    make_clips(env, 3, cfg=CFG)
    for n in names:
        assert np.array_equal(getattr(m, n)[g], before[n]), n


def test_bad_inputs_are_clear_errors(env):
    with pytest.raises(ValueError, match="choose from"):
        make_clips(env, 0, kinds=("melt",), cfg=CFG)
    with pytest.raises(ValueError, match="block tasks"):
        make_clips(envs.make_env("ArmReach-v0", render_goal=False), 0, cfg=CFG)
    with pytest.raises(ValueError, match="violation_max"):
        ClipConfig(steps=4, violation_min=3, violation_max=5)
    with pytest.raises(ValueError, match="frames must be"):
        mean_pixel_change(np.zeros((1, 8, 8, 3), np.uint8))


def test_mean_pixel_change_known_values():
    f = np.zeros((3, 2, 2, 3), np.uint8)
    f[1] = 10
    f[2, 0, 0] = 10
    assert np.allclose(mean_pixel_change(f), [10.0, 7.5])


# ----------------------------------------------------------------------------------------------------------
# metrics on synthetic scores with known answers


def test_auroc_known_answers():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([5, 5], [5, 5]) == 0.5
    assert auroc([1, 3], [2]) == 0.5
    assert auroc([2, 3, 4], [1, 3]) == pytest.approx((1 + 1.5 + 2) / 6)
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 400), rng.normal(0, 1, 400)
    # N(1,1) vs N(0,1): AUROC = Phi(1 / sqrt 2) = 0.760
    assert auroc(pos, neg) == pytest.approx(0.760, abs=0.04)
    with pytest.raises(ValueError, match="positive and negative"):
        auroc([], [1])


def test_pairwise_accuracy_and_peak_within_known_answers():
    assert pairwise_accuracy([2, 1, 3], [1, 1, 4]) == pytest.approx(0.5)
    assert pairwise_accuracy([2, 2], [1, 1]) == 1.0
    with pytest.raises(ValueError, match="matched"):
        pairwise_accuracy([1, 2], [1])
    assert peak_within([5, 7, 2], [6, 6, 6]) == pytest.approx(2 / 3)
    assert peak_within([5, 7, 2], [6, 6, 6], tolerance=0) == 0.0
    assert peak_within([8, 8], [6, 6], tolerance=2) == 1.0


def test_summarize_normalizes_peaks_and_flags_after_the_context_steps():
    errors = np.array([50.0, 1.0, 2.0, 1.0, 9.0, 1.0])
    r = summarize(errors, typical_error=2.0, threshold=3.0, first_step=1)
    assert np.allclose(r.normalized, errors / 2.0)
    assert r.peak_step == 4 and r.score == 4.5 and r.flagged == [4]  # step 0 (padded context) ignored
    with pytest.raises(ValueError, match="typical_error"):
        summarize(errors, 0.0, 3.0, 1)


# ----------------------------------------------------------------------------------------------------------
# scoring with a real (tiny, random) world model


def tiny_model(image_size=64, k=2):
    from planner.world_model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(image_size=image_size, latent_dim=8, history_len=k, enc_channels=(8, 8, 8, 8),
                           pred_hidden=16)
    return WorldModel(cfg).eval()


def save_checkpoint(path, model, training_data: dict | None = None) -> None:
    """Save a tiny push-sized world model as a checkpoint (its image size, the arm's action bounds)."""
    from planner import checkpoint

    size = model.cfg.image_size
    config = {
        "image": {"size": size, "preprocessing": {"size": size, "crop": "center"}},
        "action": {"dim": 4, "low": [-0.025] * 3 + [-1.0], "high": [0.025] * 3 + [1.0], "units": "m"},
        "history_len": 2,
    }
    if training_data is not None:
        config["training_data"] = training_data
    checkpoint.save(path, model, config)


def test_history_windows_align_and_pad_like_the_mpc():
    z = torch.arange(5.0).unsqueeze(1)  # [T+1=5, D=1]
    a = torch.arange(1.0, 5.0).unsqueeze(1)  # [T=4, A=1]
    zh, ah = history_windows(z, a, 3)
    assert zh.shape == (4, 3, 1) and ah.shape == (4, 3, 1)
    assert zh[0, :, 0].tolist() == [0, 0, 0] and ah[0, :, 0].tolist() == [0, 0, 1]
    assert zh[3, :, 0].tolist() == [1, 2, 3] and ah[3, :, 0].tolist() == [2, 3, 4]


def test_prediction_errors_match_the_model_step_by_step(clips):
    from planner.preprocess import images_to_model_input

    model = tiny_model()
    p = clips.possible
    errors = prediction_errors(model, p.frames, p.actions)
    with torch.no_grad():
        z = model.encode(images_to_model_input(p.frames))
        a = torch.as_tensor(p.actions)
        t = 5
        pred = model.predict(z[t - 1 : t + 1].unsqueeze(0), a[t - 1 : t + 1].unsqueeze(0))[0]
    assert errors.shape == (CFG.steps,)
    assert errors[t] == pytest.approx(float((pred - z[t + 1]).pow(2).sum()), rel=1e-4)
    r = score_clip(model, p.frames, p.actions)  # self-normalized by the clip's median
    assert np.median(r.normalized[1:]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="frames must be uint8"):
        score_clip(model, p.frames[:, :32, :32], p.actions)
    with pytest.raises(ValueError, match="actions must be"):
        score_clip(model, p.frames, p.actions[:-1])


def test_planner_surprise_end_to_end_on_a_tiny_random_model(tmp_path, capsys):
    from planner.cli import main

    model = tiny_model(image_size=32)
    save_checkpoint(tmp_path / "ckpt", model)
    out = tmp_path / "s.json"
    main(["surprise", "--checkpoint", str(tmp_path / "ckpt"), "--env", "ArmPush-v0", "--episodes", "2",
          "--calibration-episodes", "1", "--whitening-episodes", "2", "--steps", "8",
          "--kinds", "vanish", "teleport", "--json", str(out),
          "--figure", str(tmp_path / "s.png"), "--no-progress", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "world_model" in printed and "pixel" in printed and "untrained" in printed
    res = json.loads(out.read_text())
    for key in ("env", "checkpoint", "checkpoint_sha256", "episodes", "seed", "kinds", "typical_error",
                "flags", "detectors", "targets", "meets_targets", "beats_baselines",
                "pixel_change_at_violation", "per_clip"):
        assert key in res, key
    assert res["kinds"] == ["vanish", "teleport"] and res["episodes"] == 2
    assert set(res["detectors"]) == {"world_model", "world_model_l2", "untrained", "pixel"}
    assert res["scoring"] == {"whiten": True, "shrinkage": 0.1, "covariance_from": "whitening clips",
                              "episodes": 2}
    for d in res["detectors"].values():
        assert set(d["per_kind"]) == {"vanish", "teleport"}
        for m in (d["overall"], *d["per_kind"].values()):
            assert set(m) == {"auroc", "pairwise_accuracy", "peak_within_1"}
            assert all(0.0 <= x <= 1.0 for x in m.values())
    assert len(res["per_clip"]) == 4 and res["typical_error"] > 0
    judged = res["detectors"][res["judged_detector"]]["overall"]  # the served score, no energy head here
    assert res["judged_detector"] == res["serving_calibration"]["detector"] == "world_model_l2"
    assert res["meets_targets"] == {m: judged[m] >= t for m, t in res["targets"].items()}
    assert res["pixel_change_at_violation"]["teleport"]["impossible"] > 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_whitening_weights_each_latent_direction_by_its_typical_error():
    from planner.surprise import Whitening

    rng = np.random.default_rng(0)
    residuals = rng.normal(size=(4000, 2)) * np.array([10.0, 0.1])  # a noisy and a precise direction
    w = Whitening.fit(residuals, shrinkage=0.0)
    noisy, precise = w(np.array([[1.0, 0.0]])), w(np.array([[0.0, 1.0]]))
    assert noisy[0] == pytest.approx(0.01, rel=0.1) and precise[0] == pytest.approx(100.0, rel=0.1)
    shrunk = Whitening.fit(residuals, shrinkage=1.0)  # all variance pooled: plain L2 / mean variance
    assert shrunk(np.array([[1.0, 0.0]]))[0] == pytest.approx(shrunk(np.array([[0.0, 1.0]]))[0])
    assert np.all(w(residuals[:10]) >= 0)
    with pytest.raises(ValueError, match="finite residuals"):
        Whitening.fit(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="shrinkage"):
        Whitening.fit(residuals, shrinkage=2.0)


def test_held_out_episodes_read_the_end_of_a_store_at_the_model_size(tmp_path):
    from planner.preprocess import Preprocessing
    from planner.store import TrajectoryStore
    from planner.surprise import held_out_episodes
    from tests.test_train import S, make_store

    path = make_store(tmp_path / "store", episodes=4)
    got = held_out_episodes(path, episodes=2, rule=Preprocessing(size=16), action_dim=2)
    store = TrajectoryStore.open(path)
    eps = [store.read(i) for i in store.indices()[-2:]]
    assert len(got) == 2
    for (frames, actions), ep in zip(got, eps, strict=True):
        assert frames.shape == (len(ep.images), 16, 16, 3) and frames.dtype == np.uint8
        np.testing.assert_array_equal(actions, ep.actions)
    same_size = held_out_episodes(path, episodes=2, rule=Preprocessing(size=S), action_dim=2)
    np.testing.assert_array_equal(same_size[1][0], eps[1].images)
    with pytest.raises(ValueError, match="dim"):
        held_out_episodes(path, episodes=2, rule=Preprocessing(size=S), action_dim=4)


def test_planner_surprise_without_whitening_reports_the_plain_error(tmp_path):
    from planner.surprise import SurpriseConfig, benchmark

    save_checkpoint(tmp_path / "ckpt", tiny_model(image_size=32))
    res = benchmark(SurpriseConfig(checkpoint=tmp_path / "ckpt", env="ArmPush-v0", episodes=2,
                                   calibration_episodes=1, steps=8, kinds=("teleport",), whiten=False,
                                   progress=False, threads=1))
    assert set(res["detectors"]) == {"world_model", "untrained", "pixel"}
    assert res["scoring"] == {"whiten": False}


def test_save_calibration_is_what_the_server_backend_scores_with(tmp_path, clips):
    from planner import checkpoint
    from planner.surprise import SurpriseConfig, run
    from server.agent_backend import AgentBackend

    ck = tmp_path / "ckpt"
    save_checkpoint(ck, tiny_model(image_size=64))
    (ck / "card.md").write_text((ck / "card.md").read_text() + "\n## Results\n\nmeasured by hand\n")
    before = checkpoint.load(ck).name
    run(SurpriseConfig(checkpoint=ck, env="ArmPush-v0", episodes=2, calibration_episodes=2,
                       whitening_episodes=2, steps=8, kinds=("teleport",), save_calibration=True,
                       progress=False, threads=1))
    loaded = checkpoint.load(ck)
    calib = loaded.config["surprise"]
    assert loaded.name == before and (ck / "card.md").read_text().rstrip().endswith("measured by hand")
    assert calib["score"] == "l2" and calib["typical_error"] > 0 and calib["threshold"] > 0
    p = clips.possible
    out = AgentBackend(loaded).surprise(p.frames, AgentBackend(loaded).agent.action_spec.to_native(p.actions))
    assert out["typical_error"] == pytest.approx(calib["typical_error"])
    assert out["threshold"] == pytest.approx(calib["threshold"])
    np.testing.assert_allclose(out["normalized"], np.array(out["errors"]) / calib["typical_error"], rtol=1e-6)


def test_planner_surprise_rejects_bad_arguments(tmp_path):
    from planner.surprise import SurpriseConfig, benchmark

    with pytest.raises(ValueError, match="--episodes"):
        benchmark(SurpriseConfig(checkpoint=tmp_path, env="ArmPush-v0", episodes=1))
    with pytest.raises(ValueError, match="--kinds"):
        benchmark(SurpriseConfig(checkpoint=tmp_path, env="ArmPush-v0", kinds=("melt",)))
    with pytest.raises(ValueError, match="--shrinkage"):
        benchmark(SurpriseConfig(checkpoint=tmp_path, env="ArmPush-v0", shrinkage=-0.1))


def test_energy_space_surprise_reads_the_prediction_through_the_energy_head(tmp_path, clips):
    from planner.cli import main
    from planner.energy_head import EnergyHead
    from planner.preprocess import images_to_model_input
    from planner.surprise import energy_space_errors, predictions

    torch.manual_seed(0)
    model = tiny_model()
    model.attach_energy_head(EnergyHead(model.cfg.latent_dim, 3, 16).eval())
    p = clips.possible
    errors = energy_space_errors(model, *predictions(model, p.frames, p.actions))
    with torch.no_grad():
        z = model.encode(images_to_model_input(p.frames))
        a = torch.as_tensor(p.actions)
        t = 5
        pred = model.predict(z[t - 1 : t + 1].unsqueeze(0), a[t - 1 : t + 1].unsqueeze(0))
        want = float((model.energy_embed(pred)[0] - model.energy_embed(z[t + 1])).pow(2).sum())
    assert errors.shape == (CFG.steps,) and errors[t] == pytest.approx(want, rel=1e-4)

    small = tiny_model(image_size=32)
    small.attach_energy_head(EnergyHead(small.cfg.latent_dim, 3, 16).eval())
    save_checkpoint(tmp_path / "ckpt", small)
    out = tmp_path / "s.json"
    main(["surprise", "--checkpoint", str(tmp_path / "ckpt"), "--env", "ArmPush-v0", "--episodes", "2",
          "--calibration-episodes", "1", "--whitening-episodes", "2", "--steps", "8", "--kinds", "teleport",
          "--json", str(out), "--no-progress", "--threads", "1"])
    res = json.loads(out.read_text())
    assert set(res["detectors"]) == {"world_model", "world_model_l2", "world_model_energy",
                                     "world_model_head_features", "world_model_energy_features",
                                     "untrained", "pixel"}
    assert res["judged_detector"] == "world_model_energy_features"


def test_a_checkpoint_with_an_energy_head_is_served_in_energy_space(tmp_path, clips):
    """Uncalibrated, score_clip scores such a checkpoint in the energy space; --save-calibration stores the
    energy_features calibration (the best detector) with its feature weight, and POST /v1/surprise then
    serves exactly energy + weight x head features; --score energy saves the plain energy score; a
    latent-only checkpoint keeps the plain latent score."""
    from planner import checkpoint
    from planner.energy_head import EnergyHead
    from planner.surprise import (
        ServingScore,
        SurpriseConfig,
        energy_space_errors,
        head_feature_errors,
        predictions,
        run,
    )
    from server.agent_backend import AgentBackend

    torch.manual_seed(0)
    model = tiny_model()
    assert ServingScore.from_checkpoint({}, model).space == "latent"
    model.attach_energy_head(EnergyHead(model.cfg.latent_dim, 3, 16).eval())
    p = clips.possible
    pred, z_next = predictions(model, p.frames, p.actions)
    want = energy_space_errors(model, pred, z_next)
    features = head_feature_errors(model, pred, z_next)
    assert features.shape == want.shape and np.all(features > 0)
    np.testing.assert_allclose(score_clip(model, p.frames, p.actions).errors, want)
    np.testing.assert_allclose(prediction_errors(model, p.frames, p.actions, space="energy"), want)
    assert not np.allclose(score_clip(model, p.frames, p.actions, space="latent").errors, want)

    ck = tmp_path / "ckpt"
    save_checkpoint(ck, model)
    for score in (None, "energy"):
        run(SurpriseConfig(checkpoint=ck, env="ArmPush-v0", episodes=2, calibration_episodes=2,
                           whitening_episodes=2, steps=8, kinds=("teleport",), save_calibration=True,
                           progress=False, threads=1, score=score))
        loaded = checkpoint.load(ck)
        calib = loaded.config["surprise"]
        backend = AgentBackend(loaded)
        out = backend.surprise(p.frames, backend.agent.action_spec.to_native(p.actions))
        assert out["typical_error"] == pytest.approx(calib["typical_error"])
        if score is None:
            assert calib["score"] == "energy_features" and calib["detector"] == "world_model_energy_features"
            assert out["space"] == "energy_features" and calib["feature_weight"] > 0
            np.testing.assert_allclose(out["errors"], want + calib["feature_weight"] * features, rtol=1e-5)
        else:
            assert calib["score"] == "energy" and "feature_weight" not in calib
            assert out["space"] == "energy"
            np.testing.assert_allclose(out["errors"], want, rtol=1e-5)


@pytest.mark.parametrize("calib, message", [
    ({"score": "pixels", "typical_error": 1.0}, "surprise.score must be one of"),
    ({"score": "energy", "typical_error": 1.0}, "no energy head"),
    ({"score": "energy_features", "typical_error": 1.0, "feature_weight": 1.0}, "no energy head"),
])
def test_a_serving_calibration_that_does_not_fit_the_model_is_refused(calib, message):
    from planner.surprise import ServingScore

    with pytest.raises(ValueError, match=message):
        ServingScore.from_checkpoint({"surprise": calib}, tiny_model())
    with pytest.raises(ValueError, match="space must be one of"):
        prediction_errors(tiny_model(), np.zeros((3, 64, 64, 3), np.uint8), np.zeros((2, 4), np.float32),
                          space="pixels")


def test_energy_features_needs_a_positive_feature_weight():
    from planner.energy_head import EnergyHead
    from planner.surprise import ServingScore

    model = tiny_model()
    model.attach_energy_head(EnergyHead(model.cfg.latent_dim, 3, 16).eval())
    for weight in (None, 0.0, -1.0, float("nan")):
        calib = {"score": "energy_features", "typical_error": 1.0}
        if weight is not None:
            calib["feature_weight"] = weight
        with pytest.raises(ValueError, match="positive feature_weight"):
            ServingScore.from_checkpoint({"surprise": calib}, model)
    frames, actions = np.zeros((3, 64, 64, 3), np.uint8), np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="positive feature_weight"):
        prediction_errors(model, frames, actions, space="energy_features")
    calib = {"score": "energy_features", "typical_error": 1.0, "feature_weight": 2.0}
    assert ServingScore.from_checkpoint({"surprise": calib}, model).feature_weight == 2.0


def test_a_score_the_checkpoint_cannot_compute_is_refused(tmp_path):
    from planner.surprise import SurpriseConfig, benchmark

    save_checkpoint(tmp_path / "ckpt", tiny_model())
    with pytest.raises(ValueError, match="--score energy needs a checkpoint with an energy head"):
        benchmark(SurpriseConfig(checkpoint=tmp_path / "ckpt", env="ArmPush-v0", episodes=2, score="energy",
                                 progress=False))
    with pytest.raises(ValueError, match="--score must be one of"):
        benchmark(SurpriseConfig(checkpoint=tmp_path / "ckpt", env="ArmPush-v0", episodes=2, score="pixels",
                                 progress=False))


def test_clips_come_from_the_task_not_the_training_datas_randomization(tmp_path):
    """A checkpoint trained on size-randomized blocks is judged on the same clips as any other."""
    from planner.surprise import SurpriseConfig, benchmark

    results = []
    for name, kwargs in (("plain", {}), ("sizes", {"block_scale_range": [1.38, 1.4]})):
        save_checkpoint(tmp_path / name, tiny_model(), {"env_id": "ArmPush-v0", "env_kwargs": kwargs})
        res = benchmark(SurpriseConfig(checkpoint=tmp_path / name, env="ArmPush-v0", episodes=2,
                                       calibration_episodes=1, whitening_episodes=2, steps=8,
                                       kinds=("resize",), progress=False, threads=1))
        results.append([r["pixel"] for r in res["per_clip"]])
    assert results[0] == results[1]
