"""Stages fitted on a checkpoint's frozen encoder: `planner refit-predictor` (the predictor trains again on
frozen latents) and `planner fit-energy-head` (a new head, recalibrated); the rest of the checkpoint stays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from planner import checkpoint
from planner.refit_predictor import LatentWindows, RefitConfig, RefitError, run
from planner.train import run as train_run
from tests.test_train import make_store, tiny_cfg


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(store, checkpoint) of a tiny world model trained 20 steps on the synthetic dot store."""
    tmp = tmp_path_factory.mktemp("refit")
    store = make_store(tmp / "store")
    torch.manual_seed(0)
    return store, train_run(tiny_cfg(store, tmp))


def refit_cfg(store: Path, ckpt: Path, tmp: Path, **kw) -> RefitConfig:
    base = dict(checkpoint=ckpt, data=store, out=tmp / "refit", log_dir=tmp / "log", steps=60,
                rollout_steps=4, batch_size=32, lr=3e-3, warmup_steps=5, val_every=0, save_every=20,
                device="cpu", progress=False)
    base.update(kw)
    return RefitConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_refit_keeps_encoder_head_and_calibration_and_lowers_heldout_error(source, tmp_path):
    store, ckpt = source
    out = run(refit_cfg(store, ckpt, tmp_path))
    old, new = weights(ckpt), weights(out)
    for key in old:
        same = torch.equal(old[key], new[key])
        assert same != key.startswith("predictor."), key  # only the predictor changed
    src, cfg = checkpoint.read_config(ckpt), checkpoint.read_config(out)
    assert cfg["goal_energy_threshold"] == src["goal_energy_threshold"]
    assert cfg["architecture"] == src["architecture"] and "surprise" not in cfg
    rec = cfg["predictor_refit"]
    assert rec["source"] == checkpoint.checkpoint_name(ckpt) and rec["train_windows"] > 0
    before, after = rec["heldout_before"], rec["heldout_after"]
    assert set(before) == {"kstep_ratio_k1", "kstep_ratio_k4", "action_sensitivity_k1",
                           "action_sensitivity_k4", "energy_error_k4", "n_windows"}
    assert after["kstep_ratio_k4"] < before["kstep_ratio_k4"]  # 60 more steps on the predictor alone
    assert cfg["metrics"]["kstep_ratio_k4"] == after["kstep_ratio_k4"]
    assert cfg["metrics"]["action_sensitivity_k4"] == after["action_sensitivity_k4"]
    assert rec["config"]["steps"] == 60 and rec["config"]["data"] == str(store)
    assert "Predictor refit" in (out / "card.md").read_text()
    loaded = checkpoint.load(out)
    z = torch.zeros(3, 2, 16)
    assert loaded.model.predict(z, torch.zeros(3, 2, 2)).shape == (3, 16)


def test_refit_of_one_ensemble_member_writes_a_single_predictor_checkpoint(source, tmp_path):
    from planner.ensemble import EnsembleConfig
    from planner.ensemble import run as ensemble
    from planner.planner_defaults import PlannerDefaults
    from planner.set_planner import SetPlannerConfig
    from planner.set_planner import run as set_planner

    store, ckpt = source
    other = run(refit_cfg(store, ckpt, tmp_path / "a", steps=20, seed=1))
    ensemble(EnsembleConfig(checkpoint=ckpt, members=(other,), out=tmp_path / "ens"))
    set_planner(SetPlannerConfig(checkpoint=tmp_path / "ens", settings=PlannerDefaults(
        horizon=5, disagreement=2.0, evidence="test")))
    out = run(refit_cfg(store, tmp_path / "ens", tmp_path / "b", member=1))
    cfg, new, ens = checkpoint.read_config(out), weights(out), weights(tmp_path / "ens")
    assert cfg["architecture"]["pred_ensemble"] == 1 and "ensemble" not in cfg
    assert cfg["planner"]["horizon"] == 5 and "disagreement" not in cfg["planner"]  # one predictor: none
    rec = cfg["predictor_refit"]
    assert rec["member"] == 1 and rec["source"] == checkpoint.checkpoint_name(tmp_path / "ens")
    assert not any(k.startswith("extra_predictors.") for k in new)
    for key in new:
        if not key.startswith("predictor."):
            assert torch.equal(new[key], ens[key]), key  # encoder and head are the ensemble's
    assert checkpoint.load(out).model.cfg.pred_ensemble == 1
    # it starts from member 1's predictor: one step at a negligible rate leaves member 1, not member 0
    still = weights(run(refit_cfg(store, tmp_path / "ens", tmp_path / "c", member=1, steps=1, lr=1e-12,
                                  warmup_steps=0)))
    for key in (k for k in still if k.startswith("predictor.")):
        torch.testing.assert_close(still[key], ens["extra_predictors.0." + key.removeprefix("predictor.")])
    assert any(not torch.equal(still[k], ens[k]) for k in still if k.startswith("predictor."))


def test_fresh_predictor_of_another_size_and_bad_requests(source, tmp_path):
    store, ckpt = source
    out = run(refit_cfg(store, ckpt, tmp_path, init="fresh", pred_hidden=32, pred_blocks=2, steps=10))
    arch = checkpoint.read_config(out)["architecture"]
    assert (arch["pred_hidden"], arch["pred_blocks"]) == (32, 2)
    assert checkpoint.load(out).model.predictor.blocks[1].fc1.in_features == 32
    with pytest.raises(RefitError, match="--init fresh"):
        run(refit_cfg(store, ckpt, tmp_path, pred_hidden=32))
    with pytest.raises(RefitError, match="lower --rollout-steps"):
        run(refit_cfg(store, ckpt, tmp_path, rollout_steps=200))
    with pytest.raises(RefitError, match="--stop-at"):
        run(refit_cfg(store, ckpt, tmp_path, stop_at=0))


def test_stop_and_resume_equals_one_run(source, tmp_path):
    store, ckpt = source
    whole = run(refit_cfg(store, ckpt, tmp_path / "a", out=tmp_path / "a" / "out"))
    assert run(refit_cfg(store, ckpt, tmp_path / "b", out=tmp_path / "b" / "out", stop_at=40)) is None
    assert not (tmp_path / "b" / "out").exists()
    resumed = run(refit_cfg(store, ckpt, tmp_path / "b", out=tmp_path / "b" / "out", resume=True))
    a, b = weights(whole), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "b" / "log" / "refit_log.csv").read_text().splitlines()
    assert len(rows) == 1 + 60  # header + one row per step, no duplicates from the resumed segment


@pytest.fixture(scope="module")
def state_source(source, tmp_path_factory):
    """source's model with a state-readout energy head (2 proprio + 2 task-state columns)."""
    from planner.cli import main

    store, ckpt = source
    out = tmp_path_factory.mktemp("state") / "ckpt"
    main(["fit-energy-head", "--checkpoint", str(ckpt), "--data", str(store), "--out", str(out),
          "--energy-head.kind", "state", "--energy-head.state-proprio-dims", "2",
          "--energy-head.steps", "300", "--energy-head.hidden", "32", "--device", "cpu", "--no-progress"])
    return store, out


def test_energy_loss_is_the_heads_squared_error_over_the_scale():
    from planner.refit_predictor import energy_loss

    class Head:  # a fixed linear reading, so the loss can be computed by hand
        w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # D=3 -> E=2

        def energy_embed(self, z):
            return z @ self.w

    g = torch.Generator().manual_seed(0)
    z, tf, roll = torch.randn(4, 6, 3, generator=g), torch.randn(4, 4, 3, generator=g), torch.randn(4, 3, 3,
                                                                                                     generator=g)
    w, k = Head.w, 2
    by_hand = (((tf @ w - z[:, 2:] @ w) ** 2).mean() + ((roll @ w - z[:, 2:5] @ w) ** 2).mean()) / 0.5
    assert torch.allclose(energy_loss(Head(), {"z": z, "tf": tf, "roll": roll}, k, 0.5), by_hand)


def test_energy_weight_trains_the_predictor_in_the_heads_space(state_source, tmp_path):
    store, ckpt = state_source
    out = run(refit_cfg(store, ckpt, tmp_path, energy_weight=3.0))
    rec = checkpoint.read_config(out)["predictor_refit"]
    before, after = rec["heldout_before"]["energy_error_k4"], rec["heldout_after"]["energy_error_k4"]
    assert after < before  # the held-out error the planner reads went down
    assert checkpoint.read_config(out)["metrics"]["energy_error_k4"] == after
    log = (tmp_path / "log" / "refit_log.csv").read_text().splitlines()
    energy = [float(row.split(",")[log[0].split(",").index("energy")]) for row in log[1:]]
    assert sum(energy[-5:]) < sum(energy[:5])
    assert "energy head's-space loss at weight 3.0" in (out / "card.md").read_text()
    torch.manual_seed(0)
    no_head = train_run(tiny_cfg(store, tmp_path / "x", fit_energy_head=False))
    with pytest.raises(RefitError, match="needs an energy head"):
        run(refit_cfg(store, no_head, tmp_path / "x", energy_weight=1.0))
    with pytest.raises(RefitError, match="--energy-weight"):
        run(refit_cfg(store, ckpt, tmp_path / "y", energy_weight=-1.0))


def test_extra_data_joins_training_keeps_the_held_out_split_and_must_match(source, tmp_path):
    from tests.test_train import T

    store, ckpt = source
    extra = make_store(tmp_path / "extra", episodes=6)
    with_extra = run(refit_cfg(store, ckpt, tmp_path / "a", out=tmp_path / "a" / "out", steps=5,
                               extra_data=(extra,)))
    alone = run(refit_cfg(store, ckpt, tmp_path / "b", out=tmp_path / "b" / "out", steps=5))
    rec, rec0 = (checkpoint.read_config(p)["predictor_refit"] for p in (with_extra, alone))
    assert rec["train_windows"] - rec0["train_windows"] == 6 * (T + 1 - (2 + 4) + 1)  # K + R = 6 frames
    assert rec["extra_episodes"] == {str(extra): 6} and rec0["extra_episodes"] == {}
    assert rec["heldout_before"] == rec0["heldout_before"]  # the same held-out episodes of --data
    assert f"+ `{extra}`" in (with_extra / "card.md").read_text()
    import dataclasses

    from planner.store import TrajectoryStore

    meta = dataclasses.replace(TrajectoryStore.open(store).meta, env_id="another-env")
    wrong = TrajectoryStore.create(tmp_path / "wrong", meta)
    wrong.write(TrajectoryStore.open(store).read(0))
    with pytest.raises(RefitError, match="env_id: store has 'another-env'"):
        run(refit_cfg(store, ckpt, tmp_path / "w", extra_data=(wrong.path,)))


def test_standardize_keypoints_unit_std_same_energy_one_encoder_per_source(source, tmp_path):
    from dataclasses import replace

    from planner import metrics as M
    from planner.data import split_episodes
    from planner.store import TrajectoryStore
    from tests.test_train import MODEL

    store, plain = source
    torch.manual_seed(0)
    kp_model = replace(MODEL, enc_keypoints=2, enc_keypoint_latent=True)
    src = train_run(tiny_cfg(store, tmp_path / "src", model=kp_model))
    a = run(refit_cfg(store, src, tmp_path / "a", init="fresh", standardize_keypoints=True, steps=10))
    b = run(refit_cfg(store, src, tmp_path / "b", init="fresh", standardize_keypoints=True, steps=5, seed=1))
    st = TrajectoryStore.open(store)
    train_idx, _ = split_episodes(st.indices(), 0.1)  # the tiny run's split (val_fraction 0.1)
    old, new = checkpoint.load(src).model, checkpoint.load(a).model
    enc_old, enc_new = (M.encode_episodes(m, st.iter_episodes(train_idx)) for m in (old, new))
    z_old, z_new = enc_old.all_latents(), enc_new.all_latents()
    kp = new.keypoint_dims
    assert kp == slice(12, 16)
    torch.testing.assert_close(z_new[:, kp].std(0), torch.ones(4), atol=1e-3, rtol=0)
    torch.testing.assert_close(z_new[:, :12], z_old[:, :12])
    with torch.no_grad():
        torch.testing.assert_close(new.energy_embed(z_new), old.energy_embed(z_old), atol=1e-4, rtol=1e-4)
    rec = checkpoint.read_config(a)["predictor_refit"]
    assert torch.allclose(torch.tensor(rec["keypoint_std_before"]), z_old[:, kp].std(0), rtol=1e-3)
    assert "rescaled to unit std" in (a / "card.md").read_text()
    wa, wb = weights(a), weights(b)  # two members of one source: the same encoder, bit for bit
    assert all(torch.equal(wa[k], wb[k]) for k in wa if k.startswith("encoder."))
    with pytest.raises(RefitError, match="use --init fresh"):
        run(refit_cfg(store, src, tmp_path / "c", standardize_keypoints=True))
    with pytest.raises(RefitError, match="needs keypoints in the latent"):
        run(refit_cfg(store, plain, tmp_path / "d", init="fresh", standardize_keypoints=True))


def test_latent_windows_stay_inside_episodes():
    from planner.metrics import EncodedEpisodes

    lat = [torch.arange(6.0)[:, None].repeat(1, 2), 10 + torch.arange(4.0)[:, None].repeat(1, 2)]
    act = [torch.ones(5, 1), 2 * torch.ones(3, 1)]
    task = [torch.zeros(6, 1).numpy(), torch.zeros(4, 1).numpy()]
    task[0][5] = 1.0  # the task state moves in episode 0's last step: only its last window holds it
    w = LatentWindows.from_encoded(EncodedEpisodes(lat, act, task), length=4)
    assert w.starts.tolist() == [0, 1, 2, 6]  # episode 0: 3 windows of 4 in 6 frames; episode 1: one
    assert w.moving_starts.tolist() == [2]
    zm, _ = w.batch(torch.Generator().manual_seed(0), 10, motion_fraction=0.5)
    assert (zm[:, 0, 0] == 2.0).sum() >= 5  # half the batch from the one moving window
    z, a = w.batch(torch.Generator().manual_seed(0), 64)
    assert z.shape == (64, 4, 2) and a.shape == (64, 3, 1)
    first = z[:, 0, 0]
    assert torch.equal(z[:, :, 0] - first[:, None], torch.arange(4.0).expand(64, 4))  # consecutive frames
    assert torch.equal(a[:, :, 0], torch.where(first >= 10, 2.0, 1.0)[:, None].expand(64, 3))
    with pytest.raises(RefitError, match="--rollout-steps"):
        LatentWindows.from_encoded(EncodedEpisodes(lat, act, [torch.zeros(6, 1).numpy(),
                                                               torch.zeros(4, 1).numpy()]), length=7)


def test_cli_refuses_a_model_without_a_predictor(tmp_path, capsys):
    from planner.cli import main

    with pytest.raises(SystemExit):
        main(["refit-predictor", "--checkpoint", str(tmp_path / "missing"), "--data", str(tmp_path),
              "--out", str(tmp_path / "o")])
    assert "refit-predictor: error" in capsys.readouterr().err


def test_fit_energy_head_state_kind_keeps_the_world_model_and_recalibrates(source, tmp_path, capsys):
    from planner.cli import main

    store, ckpt = source
    out = tmp_path / "state"
    main(["fit-energy-head", "--checkpoint", str(ckpt), "--data", str(store), "--out", str(out),
          "--energy-head.kind", "state", "--energy-head.state-proprio-dims", "2",
          "--energy-head.steps", "300", "--energy-head.hidden", "32", "--device", "cpu", "--no-progress"])
    assert "state head" in capsys.readouterr().out
    old, new = weights(ckpt), weights(out)
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith("energy_head."))
    cfg = checkpoint.read_config(out)
    assert cfg["architecture"]["energy_head_dim"] == 4  # 2 proprio columns + 2 task-state columns
    assert cfg["energy_head_fit"]["config"]["kind"] == "state"
    assert "energy_head_median_error" in cfg["metrics"] and cfg["goal_energy_calibration"]["margin"] == 0.5
    # the head reads the dot's position: the energy between two frames is about their distance (store units)
    model = checkpoint.load(out).model
    from planner.metrics import encode_images
    from planner.store import TrajectoryStore

    ep = TrajectoryStore.open(store).read(0)
    with torch.no_grad():
        m = model.energy_embed(encode_images(model, ep.images))
    read = m[:, 2:].numpy()
    assert abs(read - ep.task_state).mean() < abs(ep.task_state - ep.task_state.mean(0)).mean()
    with pytest.raises(SystemExit):
        main(["fit-energy-head", "--checkpoint", str(ckpt), "--data", str(store), "--out", str(out),
              "--margin", "2"])


def test_fit_energy_head_extra_data_joins_the_fit_and_must_match(source, tmp_path):
    import dataclasses
    import shutil

    from planner.energy_head import EnergyHeadConfig
    from planner.fit_energy_head import FitEnergyHeadConfig
    from planner.fit_energy_head import run as fit_run
    from planner.store import TrajectoryStore

    store, ckpt = source[0], tmp_path / "source"
    shutil.copytree(source[1], ckpt)  # a surprise calibration in the old head's space must not survive
    calibration = {"surprise": {"score": "energy", "typical_error": 1.0, "threshold": 9.0}}
    checkpoint.update_config(ckpt, checkpoint.load(ckpt), calibration)
    head = EnergyHeadConfig(kind="state", state_proprio_dims=2, steps=50, hidden=16)
    kw = dict(checkpoint=ckpt, data=store, energy_head=head, device="cpu", progress=False)
    extra = make_store(tmp_path / "extra", episodes=4)
    alone = fit_run(FitEnergyHeadConfig(out=tmp_path / "alone", **kw))
    joined = fit_run(FitEnergyHeadConfig(out=tmp_path / "joined", extra_data=(extra,), **kw))
    rec, rec0 = (checkpoint.read_config(p)["energy_head_fit"] for p in (joined, alone))
    assert rec["extra_episodes"] == {str(extra): 4} and rec0["extra_episodes"] == {}
    assert f"+ `{extra}`" in (joined / "card.md").read_text()
    assert "surprise" not in checkpoint.read_config(joined)
    w, w0 = weights(joined), weights(alone)
    assert not torch.equal(w["energy_head.net.0.weight"], w0["energy_head.net.0.weight"])  # more data
    meta = dataclasses.replace(TrajectoryStore.open(store).meta, env_id="another-env")
    wrong = TrajectoryStore.create(tmp_path / "wrong", meta)
    wrong.write(TrajectoryStore.open(store).read(0))
    with pytest.raises(ValueError, match="env_id: store has 'another-env'"):
        fit_run(FitEnergyHeadConfig(out=tmp_path / "w", extra_data=(wrong.path,), **kw))


def test_open_frozen_refuses_mismatched_stores_and_non_world_models(source, tmp_path):
    from planner.frozen import open_frozen
    from planner.gcbc import GCBCConfig, GCBCPolicy
    from planner.world_model import WorldModel, WorldModelConfig
    from tests.test_train import S

    store, _ = source
    wide = WorldModel(WorldModelConfig(image_size=2 * S, action_dim=2, latent_dim=8, enc_channels=(8, 8)))
    checkpoint.save(tmp_path / "wide", wide,
                    {"image": {"size": 2 * S}, "action": {"dim": 2}, "history_len": 2})
    with pytest.raises(ValueError, match="use the store it was trained on"):
        open_frozen(tmp_path / "wide", store, torch.device("cpu"), "refit-predictor")
    policy = GCBCPolicy(GCBCConfig(image_size=S, action_dim=2, enc_channels=(8, 16, 16)))
    checkpoint.save(tmp_path / "policy", policy,
                    {"image": {"size": S}, "action": {"dim": 2}, "history_len": 1})
    with pytest.raises(ValueError, match="jepa"):
        open_frozen(tmp_path / "policy", store, torch.device("cpu"), "fit-energy-head")


def test_calibrate_goal_proprio_weight_records_both_thresholds_and_the_agent_uses_them(state_source, source,
                                                                                      tmp_path):
    import shutil

    from planner.calibrate import CalibrateConfig
    from planner.calibrate import run as calibrate
    from planner.mpc import MPCAgent

    store, src = state_source
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    plain = checkpoint.read_config(src)["goal_energy_calibration"]
    result = calibrate(CalibrateConfig(checkpoint=ckpt, data=store, goal_proprio_weight=0.0))
    cfg = checkpoint.read_config(ckpt)
    calib = cfg["goal_energy_calibration"]
    assert calib["proprio_weight"] == 0.0 and calib["proprio_dims"] == 2
    assert calib["subgoal_threshold"] == pytest.approx(plain["threshold"])  # sub-goals keep the plain energy
    assert cfg["goal_energy_threshold"] == result["threshold"] != calib["subgoal_threshold"]
    agent = MPCAgent(checkpoint.load(ckpt), "cem", horizon=2)
    assert agent.goal_energy_weights.tolist() == [0.0, 0.0, 1.0, 1.0]  # hand columns off, task state on
    assert agent.subgoal_energy_threshold == calib["subgoal_threshold"]
    # the same frame to the same goal: as a final goal only the task-state columns count
    from planner.store import TrajectoryStore

    ep = TrajectoryStore.open(store).read(0)
    images = np.stack([ep.images[:2], ep.images[:2]])  # [B=2, K=2, S, S, 3]
    goal = agent.encode_goal(ep.images[5])[None].repeat(2, 1)
    plan = agent.plan(images, np.zeros((2, 1, 2), np.float32), goal, subgoal=[False, True])
    embed = agent.model.energy_embed
    with torch.no_grad():
        now, g = embed(agent.encode(ep.images[1:2]))[0], embed(goal[:1])[0]
    assert plan.current_energy[0] == pytest.approx(float((now - g)[2:].norm()), rel=1e-4)
    assert plan.current_energy[1] == pytest.approx(float((now - g).norm()), rel=1e-4)
    plain_ckpt = tmp_path / "plain"
    shutil.copytree(src, plain_ckpt)
    for bad, match in ((float("nan"), "finite number"), (-1.0, "finite number")):
        with pytest.raises(ValueError, match=match):
            calibrate(CalibrateConfig(checkpoint=plain_ckpt, data=store, goal_proprio_weight=bad))
    with pytest.raises(ValueError, match="needs a state energy head"):
        calibrate(CalibrateConfig(checkpoint=source[1], data=source[0], goal_proprio_weight=0.5))


def test_calibrate_subgoal_success_threshold_calibrates_subgoals_on_hand_and_task_state(state_source, source,
                                                                                       tmp_path):
    import shutil

    from planner.calibrate import CalibrateConfig
    from planner.calibrate import run as calibrate
    from planner.data import split_episodes
    from planner.metrics import (
        calibrate_goal_energy_threshold,
        encode_episodes,
        in_energy_space,
        with_proprio_in_state,
    )
    from planner.mpc import MPCAgent
    from planner.store import TrajectoryStore
    from planner.train import spread

    store, src = state_source
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    before = checkpoint.read_config(src)
    success = 2 * before["goal_energy_calibration"]["success_threshold"]
    result = calibrate(CalibrateConfig(checkpoint=ckpt, data=store, subgoal_success_threshold=success))
    calib = checkpoint.read_config(ckpt)["goal_energy_calibration"]
    # by hand: the same rule on the plain energy, pairs measured on [hand (2 proprio columns), task state]
    loaded = checkpoint.load(src)
    opened = TrajectoryStore.open(store)
    train_eps, _ = split_episodes(opened.indices(), 0.1)
    with torch.no_grad():
        enc = in_energy_space(loaded.model, encode_episodes(loaded.model, opened.iter_episodes(
            spread(train_eps, 200))))
    by_hand = calibrate_goal_energy_threshold(with_proprio_in_state(enc, 2), success)
    assert calib["subgoal_threshold"] == pytest.approx(by_hand.threshold)
    assert calib["subgoal_calibration"]["success_threshold"] == success
    assert calib["subgoal_calibration"]["proprio_dims"] == 2
    assert result["threshold"] == pytest.approx(before["goal_energy_threshold"])  # the final goal's unchanged
    agent = MPCAgent(checkpoint.load(ckpt), "cem", horizon=2)
    assert agent.subgoal_energy_threshold == calib["subgoal_threshold"] != agent.goal_energy_threshold
    with pytest.raises(ValueError, match="finite distance"):
        calibrate(CalibrateConfig(checkpoint=ckpt, data=store, subgoal_success_threshold=0.0))
    with pytest.raises(ValueError, match="needs a state energy head"):
        calibrate(CalibrateConfig(checkpoint=source[1], data=source[0], subgoal_success_threshold=0.02))


def test_with_proprio_in_state_puts_the_hand_before_the_task_state():
    from planner.metrics import EncodedEpisodes, with_proprio_in_state

    enc = EncodedEpisodes(latents=[torch.zeros(3, 4)], actions=[torch.zeros(2, 1)],
                          task_states=[np.full((3, 2), 7.0, np.float32)],
                          goal_latents=torch.zeros(1, 4), goal_task_states=np.zeros((1, 2), np.float32),
                          proprio=[np.arange(9, dtype=np.float32).reshape(3, 3)])
    out = with_proprio_in_state(enc, 2)
    assert out.task_states[0].tolist() == [[0, 1, 7, 7], [3, 4, 7, 7], [6, 7, 7, 7]]
    assert out.goal_latents is None and out.goal_task_states is None  # pairs of states, not goals
    with pytest.raises(ValueError, match="dims >= 1"):
        with_proprio_in_state(enc, 0)
    with pytest.raises(ValueError, match="no proprio"):
        with_proprio_in_state(EncodedEpisodes(latents=enc.latents, actions=enc.actions,
                                              task_states=enc.task_states), 2)
