"""A checkpoint's own planner settings (config.json `planner`): validation, precedence, and every entry point
that plans (MPCAgent, `planner eval`, the server backend) starting from them; `planner set-planner`."""

import json
import time
from types import SimpleNamespace

import pytest
import torch

from planner import checkpoint
from planner.evaluate import EvalConfig, evaluate
from planner.mpc import MPCAgent
from planner.planner_defaults import DEFAULT_HORIZON, PlannerDefaults
from planner.set_planner import SetPlannerConfig
from planner.set_planner import run as set_planner
from planner.solvers import make_solver
from planner.world_model import WorldModel, WorldModelConfig
from tests.tiny_checkpoint import tiny_reach_config


@pytest.fixture()
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    arch = WorldModelConfig(image_size=32, latent_dim=8, history_len=2, enc_channels=(8, 8), enc_groups=4,
                            pred_hidden=16)
    path = tmp_path / "tiny"
    checkpoint.save(path, WorldModel(arch).eval(), tiny_reach_config())
    (path / "card.md").write_text((path / "card.md").read_text() + "\n## Results\n\nhand-written\n")
    return path


def loaded_with(entry):
    config = {"action": {"dim": 2, "low": [-1, -1], "high": [1, 1]}, "history_len": 2, "image": {"size": 8}}
    if entry is not None:
        config["planner"] = entry
    return SimpleNamespace(model=None, config=config, name="m@0")


@pytest.mark.parametrize("entry, message", [
    ({"horizon": 0}, "horizon"),
    ({"horizon": 10**6}, "horizon"),
    ({"solver": "magic"}, "solver"),
    ({"samples": 64}, "need planner.solver"),
    ({"solver": "cem", "iterations": 2.5}, "iterations"),
    ({"horizon": 8, "speed": "fast"}, "unknown key"),
    ("8", "must be an object"),
    ({"binary_dims": 3}, "list of action dimensions"),
    ({"binary_dims": [3, 3]}, "repeats"),
    ({"binary_dims": [-1]}, "integers >= 0"),
    ({"fixed_dims": [3, 1.0]}, "must map action dimensions"),
    ({"fixed_dims": {"grip": 1.0}}, "keys must be action dimensions"),
    ({"fixed_dims": {"3": 2.0}}, "number in"),
    ({"binary_dims": [3], "fixed_dims": {"3": 1.0}}, "both binary and fixed"),
    ({"approach": -0.5}, "approach must be"),
    ({"approach": True}, "approach must be"),
])
def test_malformed_entries_are_rejected(entry, message):
    with pytest.raises(ValueError, match=message):
        PlannerDefaults.from_config({"planner": entry})


def test_precedence_explicit_then_checkpoint_then_planner_wide():
    d = PlannerDefaults(solver="mppi", horizon=8, samples=64, iterations=3)
    cfg, h = d.resolve()
    assert (cfg.name, cfg.samples, cfg.iterations, h) == ("mppi", 64, 3, 8)
    cfg, h = d.resolve(horizon=5, samples=32)
    assert (cfg.name, cfg.samples, cfg.iterations, h) == ("mppi", 32, 3, 5)
    cfg, h = d.resolve(solver="cem")  # the stored budget is mppi's: cem keeps its own
    default_cem = make_solver("cem")
    assert (cfg.name, h) == ("cem", 8)
    assert (cfg.samples, cfg.iterations) == (default_cem.samples, default_cem.iterations)
    cfg, h = PlannerDefaults.from_config({}).resolve()
    assert (cfg, h) == (default_cem, DEFAULT_HORIZON)


def test_mpc_agent_starts_from_the_checkpoint_entry():
    ag = MPCAgent(loaded_with({"solver": "cem", "horizon": 8, "samples": 32}))
    assert (ag.solver.name, ag.solver.samples, ag.horizon) == ("cem", 32, 8)
    assert MPCAgent(loaded_with({"horizon": 8}), horizon=4).horizon == 4
    explicit = make_solver("cem", samples=16)
    assert MPCAgent(loaded_with({"solver": "cem", "samples": 32}), explicit).solver.samples == 16
    assert MPCAgent(loaded_with(None)).horizon == DEFAULT_HORIZON
    with_head = loaded_with({"approach": 0.5})
    with_head.config |= {"architecture": {"energy_head_dim": 6},
                         "energy_head_fit": {"config": {"kind": "state", "state_proprio_dims": 3}}}
    assert MPCAgent(with_head).objective.approach == 0.5
    with pytest.raises(ValueError, match="state energy head"):  # refused at start-up, not at every plan
        MPCAgent(loaded_with({"approach": 0.5}))
    assert PlannerDefaults(approach=0.5).objective(approach=0.0).approach == 0.0  # a flag wins


def test_action_dims_reach_every_solver_and_are_checked_against_the_action():
    entry = {"horizon": 8, "binary_dims": [1], "fixed_dims": {"0": 0.5}}
    d = PlannerDefaults.from_config({"planner": entry})
    assert d.binary_dims == (1,) and d.fixed_dims == {0: 0.5} and d.to_dict() == entry  # JSON round trip
    for solver in ("cem", "mppi", None):
        cfg = d.resolve(solver=solver)[0]
        assert (cfg.binary_dims, cfg.fixed_dims) == ((1,), ((0, 0.5),))
    cfg = d.resolve(binary_dims=(), fixed_dims={})[0]  # explicit empties switch them off
    assert (cfg.binary_dims, cfg.fixed_dims) == ((), ())
    ag = MPCAgent(loaded_with(entry))
    assert (ag.solver.binary_dims, ag.solver.fixed_dims) == ((1,), ((0, 0.5),))
    other = ag.with_planner("icem", samples=16).solver
    assert (other.binary_dims, other.fixed_dims) == ((1,), ((0, 0.5),))
    with pytest.raises(ValueError, match="out of range for a 2-dimensional action"):
        MPCAgent(loaded_with({"binary_dims": [2]}))
    with pytest.raises(ValueError, match="out of range for a 2-dimensional action"):
        MPCAgent(loaded_with({"fixed_dims": {"2": 1.0}}))


def test_load_names_the_file_of_a_malformed_entry(tiny_ckpt):
    cfg_path = tiny_ckpt / "config.json"
    config = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(config | {"planner": {"horizon": -1}}))
    with pytest.raises(checkpoint.CheckpointError, match=r"config\.json: invalid `planner` entry"):
        checkpoint.load(tiny_ckpt)


def test_set_planner_round_trip_and_eval_uses_it(tiny_ckpt):
    before = checkpoint.load(tiny_ckpt).name
    settings = PlannerDefaults(horizon=3, solver="cem", samples=8, iterations=2, evidence="a test")
    entry = set_planner(SetPlannerConfig(checkpoint=tiny_ckpt, settings=settings))
    assert entry == {"solver": "cem", "horizon": 3, "samples": 8, "iterations": 2, "evidence": "a test"}
    loaded = checkpoint.load(tiny_ckpt)
    assert loaded.name == before and loaded.config["planner"] == entry
    card = (tiny_ckpt / "card.md").read_text()
    assert "## Planner defaults" in card and "horizon 3" in card and "Evidence: a test" in card
    assert card.rstrip().endswith("hand-written")

    res = evaluate(EvalConfig(checkpoint=str(tiny_ckpt), episodes=1, max_steps=2, progress=False))
    assert (res["solver"], res["samples"], res["iterations"], res["horizon"]) == ("cem", 8, 2, 3)
    assert res["checkpoint_planner_defaults"] == entry
    res = evaluate(EvalConfig(checkpoint=str(tiny_ckpt), episodes=1, max_steps=2, horizon=2, progress=False))
    assert res["horizon"] == 2 and res["samples"] == 8
    assert res["binary_dims"] == [] and res["fixed_dims"] == {}
    res = evaluate(EvalConfig(checkpoint=str(tiny_ckpt), episodes=1, max_steps=2, binary_dims=(1,),
                              fixed_dims={3: 1.0}, baselines=True, sim_episodes=1, sim_samples=4,
                              sim_iterations=1, sim_horizon=2, progress=False))
    sim = res["baselines"]["simulator"]
    assert res["binary_dims"] == sim["binary_dims"] == [1]
    assert res["fixed_dims"] == sim["fixed_dims"] == {"3": 1.0}
    with pytest.raises(ValueError, match="replan-every"):
        evaluate(EvalConfig(checkpoint=str(tiny_ckpt), episodes=1, max_steps=2, replan_every=4,
                            progress=False))

    from server.agent_backend import AgentBackend

    spec = AgentBackend(loaded).spec.default_planner
    assert (spec.solver, spec.horizon, spec.samples, spec.iterations) == ("cem", 3, 8, 2)

    assert set_planner(SetPlannerConfig(checkpoint=tiny_ckpt, clear=True)) == {}
    cleared = checkpoint.load(tiny_ckpt)
    assert "planner" not in cleared.config
    assert "## Planner defaults" not in (tiny_ckpt / "card.md").read_text()


@pytest.mark.parametrize("flags, code, message", [
    (["--horizon", "8"], 1, "--evidence is required"),
    (["--evidence", "x"], 1, "at least one"),
    (["--clear", "--horizon", "8"], 1, "--clear takes no other"),
    (["--horizon", "0", "--evidence", "x"], 2, "horizon must be between 1"),  # tyro: a parse error
    (["--samples", "64", "--evidence", "x"], 2, "need planner.solver"),
    (["--binary-dims", "4", "--evidence", "x"], 1, "out of range for a 4-dimensional action"),
    (["--fixed-dims", "4", "1.0", "--evidence", "x"], 1, "out of range for a 4-dimensional action"),
    (["--fixed-dims", "3", "1.5", "--evidence", "x"], 2, "number in"),
    (["--approach", "1.0", "--evidence", "x"], 1, "--approach needs a state energy head"),
])
def test_set_planner_refuses_bad_requests_and_leaves_the_checkpoint(tiny_ckpt, flags, code, message, capsys):
    from planner.cli import main

    before = (tiny_ckpt / "config.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["set-planner", "--checkpoint", str(tiny_ckpt), *flags])
    out = capsys.readouterr()
    assert exit_info.value.code == code and message in " ".join((out.out + out.err).split())
    assert (tiny_ckpt / "config.json").read_bytes() == before


def test_set_planner_stores_action_dims_from_the_command_line(tiny_ckpt):
    from planner.cli import main

    main(["set-planner", "--checkpoint", str(tiny_ckpt), "--fixed-dims", "3", "1.0", "--evidence", "x"])
    loaded = checkpoint.load(tiny_ckpt)
    assert loaded.config["planner"] == {"fixed_dims": {"3": 1.0}, "evidence": "x"}
    assert MPCAgent(loaded).solver.fixed_dims == ((3, 1.0),)
    main(["set-planner", "--checkpoint", str(tiny_ckpt), "--binary-dims", "3", "--evidence", "y"])
    assert checkpoint.load(tiny_ckpt).config["planner"] == {"binary_dims": [3], "evidence": "y"}


def test_server_reports_and_keeps_the_action_dims(tiny_ckpt):
    """GET /v1/models tells clients which dimensions the planner snaps or holds, and a plan asked of
    another solver holds them too (the real AgentBackend behind the real app)."""
    from dataclasses import asdict

    import numpy as np
    from fastapi.testclient import TestClient

    from planner.cli import main
    from server.agent_backend import AgentBackend
    from server.app import create_app
    from server.images import encode_base64_png
    from server.settings import Settings

    main(["set-planner", "--checkpoint", str(tiny_ckpt), "--horizon", "3", "--solver", "cem",
          "--samples", "8", "--iterations", "1", "--fixed-dims", "3", "1.0", "--evidence", "x"])
    backend = AgentBackend(checkpoint.load(tiny_ckpt))
    with TestClient(create_app(Settings(max_wait_ms=1), lambda s: backend)) as client:
        end = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < end
            time.sleep(0.05)
        model = client.get("/v1/models").json()["models"][0]
        limits = model["planner_limits"]
        assert limits["fixed_dims"] == {"3": 1.0} and limits["binary_dims"] == []
        # the cost the plans are scored by, and the sub-goals' threshold (no sub-goal calibration: the goal's)
        assert model["objective"] == asdict(backend.agent.objective) and model["objective"]["approach"] == 0
        assert model["subgoal_energy_threshold"] == model["goal_energy_threshold"]
        assert model["camera"] == "workspace"  # the images to send: the training env's (reach: its default)
        frame, goal = (encode_base64_png(np.full((32, 32, 3), v, np.uint8)) for v in (90, 160))
        r = client.post("/v1/plan", json={"observation": {"image": frame}, "goal": {"image": goal},
                                          "planner": {"solver": "mppi"}})
        assert r.status_code == 200, r.text
        high = backend.spec.action_high[3]
        assert np.allclose(np.array(r.json()["actions"])[:, 3], high)
        # a request's stage hold works on top of the checkpoint's: dimension 0 held at its low bound too
        r = client.post("/v1/plan", json={"observation": {"image": frame}, "goal": {"image": goal},
                                          "stage_fixed_dims": [{"0": -1.0}]})
        actions = np.array(r.json()["actions"])
        assert np.allclose(actions[:, 3], high) and np.allclose(actions[:, 0], backend.spec.action_low[0])
