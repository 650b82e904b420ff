"""Predictor ensembles: `planner ensemble` assembly and checks, save/load, the disagreement objective, and
the planner picking its weight from the checkpoint."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from planner import checkpoint
from planner.ensemble import EnsembleConfig, member_model
from planner.ensemble import run as ensemble
from planner.mpc import MPCAgent
from planner.objectives import ObjectiveConfig, horizon_weights, latent_distance, make_objective
from planner.planner_defaults import PlannerDefaults
from planner.set_planner import SetPlannerConfig
from planner.set_planner import run as set_planner
from planner.world_model import WorldModel, WorldModelConfig
from tests.tiny_checkpoint import tiny_reach_config

ARCH = dict(image_size=32, latent_dim=8, history_len=2, enc_channels=(8, 8), enc_groups=4, pred_hidden=16)


def perturbed(model: WorldModel, seed: int) -> WorldModel:
    """The same encoder, another predictor (as a refit would give)."""
    other = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in other.predictor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return other


@pytest.fixture()
def parts(tmp_path):
    torch.manual_seed(0)
    base = WorldModel(WorldModelConfig(**ARCH)).eval()
    paths = {}
    for name, model in (("base", base), ("m1", perturbed(base, 1)), ("m2", perturbed(base, 2))):
        paths[name] = tmp_path / name
        checkpoint.save(paths[name], model, tiny_reach_config() | {"commands": [f"planner train {name}"]})
    return paths


def test_assembled_ensemble_round_trips_and_keeps_member_0_as_the_model(parts, tmp_path):
    out = tmp_path / "ens"
    name = ensemble(EnsembleConfig(checkpoint=parts["base"], members=(parts["m1"], parts["m2"]), out=out))
    loaded = checkpoint.load(out)
    assert loaded.name == name and loaded.model.cfg.pred_ensemble == 3
    srcs = [checkpoint.load(parts[n]).model for n in ("base", "m1", "m2")]
    z, a_prev, acts = torch.randn(2, 2, 8), torch.randn(2, 1, 4), torch.rand(2, 5, 3, 4) * 2 - 1
    with torch.no_grad():
        every = loaded.model.rollout_members(z, a_prev, acts)
        assert every.shape == (3, 2, 5, 3, 8)
        for m, src in enumerate(srcs):
            torch.testing.assert_close(every[m], src.rollout(z, a_prev, acts), rtol=0, atol=0)
        a_hist = torch.rand(2, 2, 4) * 2 - 1
        own = loaded.model.predict(z, a_hist)
        torch.testing.assert_close(own, srcs[0].predict(z, a_hist), rtol=0, atol=0)
    names = [checkpoint.load(parts[n]).name for n in ("base", "m1", "m2")]
    assert loaded.config["ensemble"]["members"] == names
    assert loaded.config["ensemble"]["refitted_from"] == {names[1]: None, names[2]: None}  # not refits
    assert loaded.config["commands"] == ["planner train base", "planner train m1", "planner train m2"]
    assert "## Predictor ensemble" in (out / "card.md").read_text()


def test_members_must_share_the_encoder_and_predictor_shape(parts, tmp_path):
    torch.manual_seed(5)
    for name, model in (("other_encoder", WorldModel(WorldModelConfig(**ARCH))),
                        ("wider", WorldModel(WorldModelConfig(**ARCH | {"pred_hidden": 32})))):
        checkpoint.save(tmp_path / name, model, tiny_reach_config())
    def bad(member):
        return EnsembleConfig(checkpoint=parts["base"], members=(tmp_path / member,), out=tmp_path / "x")

    with pytest.raises(ValueError, match="its encoder is not"):
        ensemble(bad("other_encoder"))
    with pytest.raises(ValueError, match=r"predictor shape differs .*pred_hidden"):
        ensemble(bad("wider"))
    ensemble(EnsembleConfig(checkpoint=parts["base"], members=(parts["m1"],), out=tmp_path / "ens"))
    with pytest.raises(ValueError, match="is itself an ensemble"):
        ensemble(bad("ens"))
    grown = ensemble(EnsembleConfig(checkpoint=tmp_path / "ens", members=(parts["m2"],),
                                    out=tmp_path / "ens3"))  # an ensemble may grow
    card = (tmp_path / "ens3" / "card.md").read_text()
    assert card.count("## Predictor ensemble") == 1 and "3 predictors" in card and grown.startswith("ens3@")
    assert not (tmp_path / "x").exists()


def test_disagreement_cost_is_members_mean_plus_weighted_spread(parts, tmp_path):
    members = (parts["m1"], parts["m2"])
    ensemble(EnsembleConfig(checkpoint=parts["base"], members=members, out=tmp_path / "ens"))
    model = checkpoint.load(tmp_path / "ens").model
    z, a_prev, goal = torch.randn(1, 2, 8), torch.randn(1, 1, 4), torch.randn(1, 8)
    acts = torch.rand(1, 6, 4, 4) * 2 - 1
    cfg = ObjectiveConfig(disagreement=2.0)
    with torch.no_grad():
        cost = make_objective(model, z, a_prev, goal, cfg)(acts)
        w = horizon_weights(4, cfg)
        per = torch.stack([
            (latent_distance(model.rollout(z, a_prev, acts, member=m), goal[:, None, None], "l2") * w).sum(-1)
            for m in range(3)])
        torch.testing.assert_close(cost, per.mean(0) + 2.0 * per.std(0))
        plain = make_objective(model, z, a_prev, goal, ObjectiveConfig())(acts)
        torch.testing.assert_close(plain, per[0])
    single = checkpoint.load(parts["base"]).model
    with pytest.raises(ValueError, match="needs an ensemble"):
        make_objective(single, z, a_prev, goal, cfg)
    with pytest.raises(ValueError, match="disagreement must be"):
        ObjectiveConfig(disagreement=-1.0)


def test_the_planner_takes_the_disagreement_weight_from_the_checkpoint(parts, tmp_path):
    out = tmp_path / "ens"
    ensemble(EnsembleConfig(checkpoint=parts["base"], members=(parts["m1"],), out=out))
    with pytest.raises(ValueError, match="needs an ensemble checkpoint"):
        set_planner(SetPlannerConfig(checkpoint=parts["base"],
                                     settings=PlannerDefaults(disagreement=1.0, evidence="x")))
    set_planner(SetPlannerConfig(checkpoint=out, settings=PlannerDefaults(disagreement=1.5, horizon=3,
                                                                          evidence="a test")))
    agent = MPCAgent(checkpoint.load(out))
    assert agent.objective.disagreement == 1.5 and agent.horizon == 3
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1, 2, 32, 32, 3), dtype=np.uint8)
    goal = agent.encode_goal(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))[None]
    plan = agent.plan(images, np.zeros((1, 1, 4), np.float32), goal)
    assert plan.actions.shape == (1, 3, 4) and np.isfinite(plan.energy).all()


def test_refit_predictor_needs_a_member_of_an_ensemble(parts, tmp_path):
    from planner.refit_predictor import RefitConfig, RefitError
    from planner.refit_predictor import run as refit

    ensemble(EnsembleConfig(checkpoint=parts["base"], members=(parts["m1"],), out=tmp_path / "ens"))
    with pytest.raises(RefitError, match="holds an ensemble.*--member 0..1"):
        refit(RefitConfig(checkpoint=tmp_path / "ens", data=tmp_path / "no-store", out=tmp_path / "r"))
    with pytest.raises(RefitError, match="--member must be in 0..1"):
        refit(RefitConfig(checkpoint=tmp_path / "ens", data=tmp_path / "no-store", out=tmp_path / "r",
                          member=2))
    with pytest.raises(RefitError, match="--member must be in 0..0"):
        refit(RefitConfig(checkpoint=parts["base"], data=tmp_path / "no-store", out=tmp_path / "r", member=1))


def test_member_model_takes_one_members_predictor_back_out(parts, tmp_path):
    members = (parts["m1"], parts["m2"])
    ensemble(EnsembleConfig(checkpoint=parts["base"], members=members, out=tmp_path / "ens"))
    ens = checkpoint.load(tmp_path / "ens").model
    z, a_hist = torch.randn(3, 2, 8), torch.rand(3, 2, 4) * 2 - 1
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    for k, name in enumerate(("base", "m1", "m2")):
        single, src = member_model(ens, k), checkpoint.load(parts[name]).model
        assert single.cfg.pred_ensemble == 1 and len(single.extra_predictors) == 0
        with torch.no_grad():
            torch.testing.assert_close(single.predict(z, a_hist), src.predict(z, a_hist), rtol=0, atol=0)
            torch.testing.assert_close(single.encode(images), src.encode(images), rtol=0, atol=0)
    with pytest.raises(ValueError, match="member must be in 0..2"):
        member_model(ens, 3)
