"""Generative (pixel) world model: shapes, pixel objective, checkpoint round trip, training, eval dispatch.

Training runs on the moving-dot store of tests/test_train.py (real dynamics, learnable); evaluation on the
real ArmReach-v0 env with a tiny random model (one short episode)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from planner.checkpoint import load, save
from planner.evaluate import EvalConfig, evaluate
from planner.objectives import ObjectiveConfig, make_objective
from planner.pixel_model import PixelObjectiveConfig, PixelWorldModel, pixel_loss, pixel_prediction_error
from planner.preprocess import images_to_model_input
from planner.store import TrajectoryStore
from planner.train_baselines import BaselineTrainConfig, parameter_counts, run, schedule_step
from planner.world_model import WorldModel, WorldModelConfig
from tests.test_train import make_store
from tests.tiny_checkpoint import tiny_reach_config

S = 32
ARCH = WorldModelConfig(
    image_size=S,
    action_dim=2,
    latent_dim=16,
    history_len=2,
    enc_channels=(8, 16, 16),
    enc_groups=4,
    pred_hidden=64,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded shared CPU, idle threads spin-wait (docs/PLANNING.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("dots") / "store", episodes=12)


def test_shapes_and_loss_parts():
    torch.manual_seed(0)
    m = PixelWorldModel(ARCH)
    images = torch.rand(3, 6, 3, S, S) * 2 - 1
    actions = torch.rand(3, 5, 2) * 2 - 1
    z = m.encode(images[:, 0])
    assert z.shape == (3, 16)
    assert m.decode(z).shape == (3, 3, S, S)
    assert m.rollout(
        z[:, None].expand(3, 2, 16), actions[:, :1], actions[:, None, :4].expand(3, 5, 4, 2)
    ).shape == (3, 5, 4, 16)
    loss, parts = pixel_loss(m, images, actions, PixelObjectiveConfig(rollout_steps=4))
    assert set(parts) == {"recon", "pred", "rollout", "loss"} and torch.isfinite(loss)
    assert parts["loss"] == pytest.approx(parts["recon"] + parts["pred"] + parts["rollout"], rel=1e-5)
    with pytest.raises(ValueError, match="decode expects z"):
        m.decode(torch.zeros(2, 5))
    # same encoder and predictor as JEPA, plus a decoder
    counts, jepa = parameter_counts(m), parameter_counts(WorldModel(ARCH))
    assert counts["encoder"] == jepa["encoder"] and counts["predictor"] == jepa["predictor"]
    assert counts["total"] == jepa["total"] + counts["decoder"] and counts["decoder"] > 0


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    m = PixelWorldModel(ARCH).eval()
    cfg = {"image": {"size": S}, "action": {"dim": 2, "low": [-1, -1], "high": [1, 1]}, "history_len": 2}
    save(tmp_path / "px", m, cfg)
    assert json.loads((tmp_path / "px" / "config.json").read_text())["model_type"] == "pixel"
    loaded = load(tmp_path / "px")
    assert isinstance(loaded.model, PixelWorldModel) and loaded.name.startswith("px@")
    z = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model.decode(z), m.decode(z))


def test_pixel_objective_scores_decoded_frames():
    torch.manual_seed(2)
    m = PixelWorldModel(ARCH).eval()
    z_hist, a_prev, z_goal = torch.randn(2, 2, 16), torch.zeros(2, 1, 2), torch.randn(2, 16)
    actions = torch.rand(2, 5, 3, 2) * 2 - 1
    cost = make_objective(m, z_hist, a_prev, z_goal, ObjectiveConfig(space="pixel", reduce="final"))(actions)
    with torch.no_grad():
        final = m.rollout(z_hist, a_prev, actions)[:, :, -1]  # [2,5,16]
        frames = m.decode(final.flatten(0, 1)).view(2, 5, -1)
        goal = m.decode(z_goal).flatten(1)[:, None]
        want = (frames - goal).pow(2).mean(-1).sqrt()
    assert cost.shape == (2, 5)
    torch.testing.assert_close(cost, want)
    latent = make_objective(m, z_hist, a_prev, z_goal, ObjectiveConfig(reduce="final"))(actions)
    assert not torch.allclose(latent, cost)
    weighted = make_objective(m, z_hist, a_prev, z_goal, ObjectiveConfig(space="pixel"))(actions)
    assert weighted.shape == (2, 5) and torch.isfinite(weighted).all()
    with pytest.raises(ValueError, match="needs a model with decode"):
        make_objective(WorldModel(ARCH), z_hist, a_prev, z_goal, ObjectiveConfig(space="pixel"))
    with pytest.raises(ValueError, match="space must be one of"):
        ObjectiveConfig(space="pixels")


def test_tiny_training_lowers_pixel_loss(store_path):
    """A few steps on a fixed batch of real dot-world windows lower the pixel loss (it learns)."""
    torch.manual_seed(3)
    store = TrajectoryStore.open(store_path)
    eps = [store.read(i) for i in range(2)]
    images = images_to_model_input(torch.from_numpy(np.stack([e.images[:5] for e in eps])))
    actions = torch.from_numpy(np.stack([e.actions[:4] for e in eps]))
    m = PixelWorldModel(ARCH)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    obj = PixelObjectiveConfig(rollout_steps=3)
    losses = []
    for _ in range(20):
        loss, _ = pixel_loss(m, images, actions, obj)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_train_baseline_pixel_end_to_end(store_path, tmp_path):
    cfg = BaselineTrainConfig(
        data=store_path,
        out=tmp_path / "ckpt",
        log_dir=tmp_path / "log",
        model_type="pixel",
        steps=6,
        device="cpu",
        batch_size=4,
        warmup_steps=2,
        workers=0,
        episodes_per_batch=4,
        val_episodes=2,
        threads=1,
        success_threshold=0.1,
        pixel=ARCH,
        pixel_objective=PixelObjectiveConfig(rollout_steps=3),
    )
    run(cfg)
    loaded = load(tmp_path / "ckpt")
    ck = loaded.config
    assert isinstance(loaded.model, PixelWorldModel) and ck["model_type"] == "pixel"
    assert ck["training_run"]["steps_done"] == 6 and ck["parameters"]["decoder"] > 0
    assert "gcbc" not in ck["training"] and ck["training"]["model_type"] == "pixel"
    for key in ("recon_mse", "kstep_ratio_k1", "kstep_ratio_k5", "probe_r2_task_state", "effective_rank"):
        assert np.isfinite(ck["metrics"][key]), key
    assert np.isfinite(ck["goal_energy_threshold"])
    assert "pixel" in (tmp_path / "ckpt" / "card.md").read_text().split("\n")[2]
    # a time budget stops training early and is recorded
    run(BaselineTrainConfig(**{**cfg.__dict__, "steps": 10_000, "time_budget": 0.5, "out": tmp_path / "tb"}))
    run_info = load(tmp_path / "tb").config["training_run"]
    assert 1 <= run_info["steps_done"] < 10_000 and run_info["time_budget_s"] == 0.5
    assert run_info["budget_clock"] == "wall" and run_info["budget_seconds_used"] >= 0.5
    # on the CPU clock (this process's CPU time) the same budget also stops it, and says so
    run(BaselineTrainConfig(**{**cfg.__dict__, "steps": 10_000, "time_budget": 0.5, "budget_clock": "cpu",
                               "out": tmp_path / "tbc"}))
    run_info = load(tmp_path / "tbc").config["training_run"]
    assert 1 <= run_info["steps_done"] < 10_000 and run_info["budget_clock"] == "cpu"
    assert run_info["budget_seconds_used"] >= 0.5


def test_time_budget_schedule():
    cfg = BaselineTrainConfig(data=Path("d"), out=Path("o"), steps=1000, warmup_steps=10)
    assert [schedule_step(s, 99.0, None, cfg) for s in (0, 5, 500)] == [0, 5, 500]  # no budget: the step
    assert schedule_step(5, 50.0, 100.0, cfg) == 5  # warmup counts steps
    assert schedule_step(20, 50.0, 100.0, cfg) == 505  # then the cosine follows the elapsed time
    assert schedule_step(20, 100.0, 100.0, cfg) == 1000  # and ends with the budget
    assert schedule_step(800, 10.0, 100.0, cfg) == 800  # whichever is further along


def test_match_train_log_and_bad_inputs(store_path, tmp_path):
    from planner.train import TrainError

    base = dict(
        data=store_path,
        out=tmp_path / "c",
        log_dir=tmp_path / "log",
        steps=2,
        device="cpu",
        workers=0,
        threads=1,
        success_threshold=0.1,
        pixel=ARCH,
    )
    with pytest.raises(TrainError, match="does not exist"):
        run(BaselineTrainConfig(**base, match_train_log=tmp_path / "nope.csv"))
    log = tmp_path / "jepa_log.csv"
    log.write_text("step,loss\n0,1.0\n")
    with pytest.raises(TrainError, match="sec_per_step"):
        run(BaselineTrainConfig(**base, match_train_log=log))
    with pytest.raises(TrainError, match="--pixel.image-size 32"):
        run(BaselineTrainConfig(**{**base, "pixel": WorldModelConfig(image_size=64, action_dim=2)}))


def test_pixel_prediction_error_copy_last_is_exact(store_path):
    store = TrajectoryStore.open(store_path)
    m = PixelWorldModel(ARCH).eval()
    out = pixel_prediction_error(m, store.iter_episodes([0, 1]), k_max=3)
    ep = store.read(0)
    x = images_to_model_input(ep.images)
    # copy-last at k=1 is the mean squared difference of consecutive frames over the windows used
    assert out["copy_last_mse_k1"] > 0 and out["kstep_ratio_k3"] == pytest.approx(
        out["kstep_mse_k3"] / out["copy_last_mse_k3"]
    )
    assert out["recon_mse"] > 0 and x.shape[0] == 21
    with pytest.raises(ValueError, match="episodes of at least"):
        pixel_prediction_error(m, store.iter_episodes([0]), k_max=40)


@pytest.fixture(scope="module")
def reach_pixel_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    arch = WorldModelConfig(
        image_size=32, latent_dim=8, history_len=2, enc_channels=(8, 8), enc_groups=4, pred_hidden=16
    )
    config = tiny_reach_config()
    path = tmp_path_factory.mktemp("ckpt") / "tinypx"
    save(path, PixelWorldModel(arch).eval(), config)
    return path


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_eval_runs_pixel_checkpoint(reach_pixel_ckpt, space):
    res = evaluate(
        EvalConfig(
            checkpoint=str(reach_pixel_ckpt),
            episodes=1,
            max_steps=2,
            samples=8,
            iterations=2,
            horizon=3,
            objective_space=space,
            progress=False,
        )
    )
    assert res["model_type"] == "pixel" and res["objective"]["space"] == space and res["solver"] == "cem"
    ep = res["per_episode"][0]
    assert ep["steps"] == 2 and np.isfinite(ep["final_distance"]) and res["plan_ms_median"] > 0
