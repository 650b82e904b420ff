"""GCBC policy: shapes, hindsight relabelling, losses, checkpoint round trip, training, eval dispatch.

Training runs on the moving-dot store of tests/test_train.py; evaluation acts with a tiny random policy in
the real ArmReach-v0 env (one short episode)."""

import json
import math

import numpy as np
import pytest
import torch

from planner.checkpoint import load, save
from planner.evaluate import EvalConfig, evaluate
from planner.gcbc import (
    GCBCConfig,
    GCBCObjectiveConfig,
    GCBCPolicy,
    PolicyAgent,
    gcbc_loss,
    relabel,
)
from planner.preprocess import images_to_model_input
from planner.store import TrajectoryStore
from planner.train_baselines import BaselineTrainConfig, parameter_counts, run
from planner.world_model import WorldModel, WorldModelConfig
from tests.test_train import make_store
from tests.tiny_checkpoint import tiny_reach_config

S = 32
ARCH = GCBCConfig(
    image_size=S,
    action_dim=2,
    latent_dim=16,
    history_len=1,
    enc_channels=(8, 16, 16),
    enc_groups=4,
    hidden=64,
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


@pytest.mark.parametrize("head", ["mse", "gaussian"])
def test_shapes_and_encoder_matches_jepa(head):
    torch.manual_seed(0)
    cfg = GCBCConfig(**{**ARCH.to_dict(), "history_len": 2, "head": head})
    m = GCBCPolicy(cfg)
    mean, log_std = m(torch.rand(3, 2, 3, S, S) * 2 - 1, torch.rand(3, 3, S, S) * 2 - 1)
    assert mean.shape == (3, 2)
    assert (log_std is None) == (head == "mse")
    if head == "gaussian":
        assert log_std.shape == (3, 2)
    with pytest.raises(ValueError, match="obs"):
        m(torch.rand(3, 1, 3, S, S), torch.rand(3, 3, S, S))
    jepa = WorldModel(
        WorldModelConfig(image_size=S, action_dim=2, latent_dim=16, enc_channels=(8, 16, 16), enc_groups=4)
    )
    assert parameter_counts(m)["encoder"] == parameter_counts(jepa)["encoder"]
    with pytest.raises(ValueError, match="head must be one of"):
        GCBCConfig(head="laplace")
    with pytest.raises(ValueError, match="divisible"):
        GCBCConfig(image_size=30)


def test_relabel_takes_future_frame_of_same_window():
    b, k = 64, 2
    obj = GCBCObjectiveConfig(min_goal_offset=2, max_goal_offset=5)
    t = obj.window_len(k)
    frames = torch.arange(t).float()[None, :, None].expand(b, t, 1) + 100 * torch.arange(b)[:, None, None]
    actions = torch.arange(t - 1).float()[None, :, None].expand(b, t - 1, 1)
    obs, goal, act = relabel(frames, actions, k, obj, torch.Generator().manual_seed(0))
    assert obs.shape == (b, k, 1) and goal.shape == (b, 1) and act.shape == (b, 1)
    assert torch.equal(obs[:, :, 0] % 100, torch.arange(k).float().expand(b, k))  # frames 0..K-1
    assert torch.equal(act[:, 0], torch.full((b,), float(k - 1)))  # the action at the last obs frame
    offset = goal[:, 0] - 100 * torch.arange(b) - (k - 1)
    assert torch.equal(goal[:, 0] // 100, torch.arange(b).float())  # the same trajectory
    assert offset.min() >= 2 and offset.max() <= 5 and len(offset.unique()) == 4
    with pytest.raises(ValueError, match="windows of"):
        relabel(frames[:, :4], actions[:, :3], k, obj, torch.Generator())
    with pytest.raises(ValueError, match="min_goal_offset"):
        GCBCObjectiveConfig(min_goal_offset=3, max_goal_offset=2)


def test_losses():
    mean, target = torch.randn(5, 3), torch.randn(5, 3)
    mse, parts = gcbc_loss(mean, None, target)
    assert mse.item() == pytest.approx(((mean - target) ** 2).mean().item()) and parts["loss"] == mse.item()
    log_std = torch.randn(5, 3) * 0.3
    nll, parts = gcbc_loss(mean, log_std, target)
    want = -torch.distributions.Normal(mean, log_std.exp()).log_prob(target).mean()
    assert nll.item() == pytest.approx(want.item(), rel=1e-5) and parts["mse"] == pytest.approx(mse.item())
    assert gcbc_loss(target, torch.zeros(5, 3), target)[0].item() == pytest.approx(
        0.5 * math.log(2 * math.pi)
    )


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    m = GCBCPolicy(ARCH).eval()
    cfg = {"image": {"size": S}, "action": {"dim": 2, "low": [-1, -1], "high": [1, 1]}, "history_len": 1}
    save(tmp_path / "bc", m, cfg)
    assert json.loads((tmp_path / "bc" / "config.json").read_text())["model_type"] == "gcbc"
    loaded = load(tmp_path / "bc")
    assert isinstance(loaded.model, GCBCPolicy) and loaded.model.cfg == ARCH
    obs, goal = torch.rand(2, 1, 3, S, S), torch.rand(2, 3, S, S)
    with torch.no_grad():
        assert torch.equal(loaded.model(obs, goal)[0], m(obs, goal)[0])


def test_tiny_training_lowers_loss(store_path):
    """Steps on a fixed batch of relabelled dot-world windows lower the action MSE (it learns)."""
    torch.manual_seed(2)
    store = TrajectoryStore.open(store_path)
    obj = GCBCObjectiveConfig(max_goal_offset=4)
    eps = [store.read(i) for i in range(8)]
    images = torch.from_numpy(np.stack([e.images[:5] for e in eps]))
    actions = torch.from_numpy(np.stack([e.actions[:4] for e in eps]))
    obs, goal, target = relabel(images, actions, 1, obj, torch.Generator().manual_seed(0))
    obs, goal = images_to_model_input(obs), images_to_model_input(goal)
    m = GCBCPolicy(ARCH)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = gcbc_loss(*m(obs, goal), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_train_baseline_gcbc_end_to_end(store_path, tmp_path):
    run(
        BaselineTrainConfig(
            data=store_path,
            out=tmp_path / "ckpt",
            log_dir=tmp_path / "log",
            model_type="gcbc",
            steps=5,
            device="cpu",
            batch_size=8,
            warmup_steps=2,
            workers=0,
            episodes_per_batch=4,
            threads=1,
            gcbc=GCBCConfig(**{**ARCH.to_dict(), "head": "gaussian"}),
            gcbc_objective=GCBCObjectiveConfig(max_goal_offset=8),
        )
    )
    loaded = load(tmp_path / "ckpt")
    ck = loaded.config
    assert isinstance(loaded.model, GCBCPolicy) and ck["model_type"] == "gcbc"
    assert ck["training_run"]["steps_done"] == 5 and "pixel" not in ck["training"]
    assert ck["training"]["gcbc_objective"]["max_goal_offset"] == 8
    assert all(
        np.isfinite(ck["metrics"][k]) for k in ("val_action_mse", "val_mean_action_mse", "val_mse_ratio")
    )
    assert "goal_energy_threshold" not in ck
    assert "behaviour-cloning" in (tmp_path / "ckpt" / "card.md").read_text()
    with pytest.raises(ValueError, match="max-goal-offset"):
        run(
            BaselineTrainConfig(
                data=store_path,
                out=tmp_path / "c2",
                log_dir=tmp_path / "log2",
                model_type="gcbc",
                steps=2,
                device="cpu",
                workers=0,
                threads=1,
                gcbc=ARCH,
                gcbc_objective=GCBCObjectiveConfig(max_goal_offset=40),
            )
        )


@pytest.fixture(scope="module")
def reach_gcbc_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    arch = GCBCConfig(
        image_size=32, latent_dim=8, history_len=2, enc_channels=(8, 8), enc_groups=4, hidden=16
    )
    config = tiny_reach_config(goal_energy_threshold=None)
    path = tmp_path_factory.mktemp("ckpt") / "tinybc"
    save(path, GCBCPolicy(arch).eval(), config)
    return path


def test_policy_agent_acts_in_native_units(reach_gcbc_ckpt):
    agent = PolicyAgent(load(reach_gcbc_ckpt))
    rng = np.random.default_rng(0)
    goal = agent.encode_goal(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))[None]
    plan = agent.plan(rng.integers(0, 256, (1, 2, 32, 32, 3), dtype=np.uint8), np.zeros((1, 1, 4)), goal)
    assert plan.actions.shape == (1, 1, 4) and plan.actions_normalized.shape == (1, 1, 4)
    np.testing.assert_allclose(plan.actions, agent.action_spec.to_native(plan.actions_normalized), rtol=1e-6)
    assert np.all(np.abs(plan.actions_normalized) <= 1) and not plan.goal_reached[0]
    with pytest.raises(ValueError, match=r"\[B,2,S,S,3\]"):
        agent.plan(np.zeros((1, 1, 32, 32, 3), np.uint8), np.zeros((1, 0, 4)), goal)


def test_eval_acts_with_gcbc_policy(reach_gcbc_ckpt):
    res = evaluate(EvalConfig(checkpoint=str(reach_gcbc_ckpt), episodes=1, max_steps=3, progress=False))
    assert res["model_type"] == "gcbc" and res["solver"] == "policy" and res["objective"] is None
    assert res["samples"] == 0 and res["horizon"] == 1
    ep = res["per_episode"][0]
    assert ep["steps"] == 3 and len(ep["energy_curve"]) == 3 and np.isfinite(ep["final_distance"])
    with pytest.raises(ValueError, match="replan-every must be 1"):
        evaluate(
            EvalConfig(
                checkpoint=str(reach_gcbc_ckpt), episodes=1, max_steps=2, replan_every=2, progress=False
            )
        )


def test_serve_refuses_a_policy_checkpoint_before_binding(reach_gcbc_ckpt):
    from server.serve import ServeConfig
    from server.serve import run as serve

    with pytest.raises(SystemExit, match="goal-conditioned policy"):
        serve(ServeConfig(checkpoint=reach_gcbc_ckpt, port=1))
