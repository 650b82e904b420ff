"""planner.pictures / `planner plots`: energy landscape, success vs budget, latent PCA, decoder probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from envs import make_env
from planner.checkpoint import CheckpointError, load
from planner.cli import main
from planner.mpc import MPCAgent
from planner.pictures import (
    PlotsConfig,
    decode_latents,
    energy_landscape,
    landscape_candidates,
    latent_trajectories,
    mpc_state,
    pca_fit,
    plot_energy_landscape,
    plot_latent_pca,
    plot_success_vs_budget,
    read_sweeps,
    record_episode,
    run,
    state_objective,
    train_decoder_probe,
    wilson_interval,
)
from planner.preprocess import Preprocessing
from planner.solvers import make_solver
from tests.tiny_checkpoint import save_tiny_reach_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_tiny_reach_model(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def env():
    e = make_env("ArmReach-v0", image_size=32)
    yield e
    e.close()


@pytest.fixture(scope="module")
def agent(tiny_ckpt):
    return MPCAgent(load(tiny_ckpt), make_solver("cem", samples=8, iterations=2), horizon=3)


def test_landscape_grid_and_plan_cell_consistency(agent, env, tmp_path):
    state = mpc_state(agent, env, seed=3, steps=2)
    assert state.step == 2 and state.images.shape == (2, 32, 32, 3)
    land = energy_landscape(agent, state, dims=(0, 1), grid=7, span=1.0, env=env)
    assert land.cost.shape == (7, 7) and land.true_cost.shape == (7, 7)
    assert np.all(np.isfinite(land.cost)) and np.all(np.isfinite(land.true_cost))
    assert land.cost.std() > 0  # offsets change the imagined outcome
    # the plan's own cell: the objective of the plan, recomputed independently of the grid
    plan = torch.as_tensor(state.plan.actions_normalized)  # [1,H,A]
    with torch.no_grad():
        direct = float(state_objective(agent, state)(plan[:, None])[0, 0])
    assert land.cost[land.center] == pytest.approx(direct, rel=1e-5, abs=1e-6)
    assert land.plan_cost == pytest.approx(direct, rel=1e-5, abs=1e-6)
    # ... and the same as the energy MPCAgent reports for the plan's final latent when reduce is 'final'
    final_agent = MPCAgent(agent.loaded, agent.solver, horizon=3,
                           objective=type(agent.objective)(reduce="final"))
    final_land = energy_landscape(final_agent, state, grid=3)
    assert final_land.cost[final_land.center] == pytest.approx(float(state.plan.energy[0]), rel=1e-4)
    # the simulator's cell for the plan is a real distance in metres, and the env's state was restored
    assert 0.0 < land.true_cost[land.center] < 1.0
    assert -1.0 <= land.spearman() <= 1.0
    twin = type(land)(land.offsets, land.dims, land.cost, land.plan, land.plan_cost, land.cost * 3 + 1)
    assert twin.spearman() == pytest.approx(1.0)
    assert np.allclose(env.unwrapped.get_snapshot(), state.snapshot)
    path = plot_energy_landscape(land, tmp_path / "land.png")
    assert path.stat().st_size > 1000


def test_landscape_candidates_offset_whole_sequence_and_clip():
    plan = np.array([[0.5, -0.2, 0.1, 0.0], [0.9, 0.0, 0.0, 1.0]], np.float32)  # [H=2,A=4]
    offsets = np.array([-1.0, 0.0, 1.0])
    c = landscape_candidates(plan, (0, 2), offsets).reshape(3, 3, 2, 4)  # [y,x,H,A]
    np.testing.assert_allclose(c[1, 1], plan)
    np.testing.assert_allclose(c[1, 2, :, 0], [1.0, 1.0])  # +1 on dx, clipped
    np.testing.assert_allclose(c[0, 1, :, 2], [-0.9, -1.0])  # -1 on dz at every step
    np.testing.assert_allclose(c[..., 1], np.broadcast_to(plan[:, 1], (3, 3, 2)))  # other dims untouched


def test_landscape_bad_dims_and_grid(agent, env):
    state = mpc_state(agent, env, seed=3, steps=0)
    with pytest.raises(ValueError, match="two different action dimensions"):
        energy_landscape(agent, state, dims=(0, 0))
    with pytest.raises(ValueError, match="two different action dimensions"):
        energy_landscape(agent, state, dims=(0, 4))
    with pytest.raises(ValueError, match="odd"):
        energy_landscape(agent, state, grid=8)


def test_latent_pca_shapes_and_first_steps(tiny_ckpt, env, tmp_path):
    model = load(tiny_ckpt).model
    frames, actions = record_episode(env, Preprocessing(size=32), "explore", seed=5, steps=6)
    assert frames.shape == (7, 32, 32, 3) and frames.dtype == np.uint8 and actions.shape == (6, 4)
    tr = latent_trajectories(model, frames, actions)
    assert tr.actual.shape == tr.predicted.shape == (7, 8)
    assert tr.actual_pc.shape == tr.predicted_pc.shape == (7, 2) and tr.error.shape == (7,)
    np.testing.assert_allclose(tr.predicted[: tr.context], tr.actual[: tr.context])
    np.testing.assert_allclose(tr.predicted_pc[0], tr.actual_pc[0], atol=1e-9)
    assert tr.error[0] == 0.0 and np.all(tr.error[tr.context:] > 0)
    assert np.all(np.isnan(tr.copy_last_error[: tr.context])) and np.all(np.isfinite(tr.copy_last_error[2:]))
    # the first predicted step is exactly the model's predict on the context window
    with torch.no_grad():
        z = torch.as_tensor(tr.actual[:2], dtype=torch.float32)[None]
        step = model.predict(z, torch.as_tensor(actions[:2])[None])[0].numpy()
    np.testing.assert_allclose(tr.predicted[2], step, rtol=1e-4, atol=1e-5)
    assert plot_latent_pca(tr, tmp_path / "pca.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="actions"):
        latent_trajectories(model, frames, actions[:3])


def test_pca_fit_recovers_main_axis():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1)) * np.array([[3.0, 0.0, 4.0]]) + rng.normal(scale=0.01, size=(200, 3))
    mean, comps, ratio = pca_fit(x, 2)
    assert comps.shape == (2, 3) and abs(abs(comps[0] @ np.array([0.6, 0.0, 0.8])) - 1) < 1e-3
    assert ratio[0] > 0.99 and ratio.sum() <= 1.0 + 1e-9
    with pytest.raises(ValueError, match="PCA"):
        pca_fit(x[:1])


def _sweep(tmp_path, name, solver, samples, rate, episodes=20, checkpoint="m@1"):
    d = dict(env="ArmReach-v0", checkpoint=checkpoint, solver=solver, samples=samples, iterations=5,
             horizon=15, episodes=episodes, success_rate=rate, plan_ms_median=10.0)
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def test_success_vs_budget_from_fake_sweeps(tmp_path):
    files = [_sweep(tmp_path, "a.json", "cem", 32, 0.7), _sweep(tmp_path, "b.json", "cem", 16, 0.5),
             _sweep(tmp_path, "c.json", "icem", 16, 0.25)]
    curves = read_sweeps(files)
    assert set(curves) == {"cem", "icem"}
    assert curves["cem"].samples.tolist() == [16, 32] and curves["cem"].success_rate.tolist() == [0.5, 0.7]
    assert np.all(curves["cem"].low <= curves["cem"].success_rate)
    assert np.all(curves["cem"].success_rate <= curves["cem"].high)
    assert plot_success_vs_budget(curves, tmp_path / "b.png").stat().st_size > 1000
    lo, hi = wilson_interval(10, 20)
    assert lo == pytest.approx(0.299, abs=2e-3) and hi == pytest.approx(0.701, abs=2e-3)


def test_success_vs_budget_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no sweep files"):
        read_sweeps([])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"solver": "cem"}))
    with pytest.raises(ValueError, match="bad.json.*needs keys"):
        read_sweeps([bad])
    dup = [_sweep(tmp_path, "x.json", "cem", 16, 0.5), _sweep(tmp_path, "y.json", "cem", 16, 0.6)]
    with pytest.raises(ValueError, match="both hold solver cem at 16"):
        read_sweeps(dup)
    mixed = [_sweep(tmp_path, "p.json", "cem", 16, 0.5),
             _sweep(tmp_path, "q.json", "cem", 32, 0.6, checkpoint="o@2")]
    with pytest.raises(ValueError, match="differ"):
        read_sweeps(mixed)


def test_decoder_probe_trains_on_frozen_latents(tiny_ckpt, env):
    model = load(tiny_ckpt).model
    frames, _ = record_episode(env, Preprocessing(size=32), "explore", seed=6, steps=15)
    z = model.encode(torch.as_tensor(frames).movedim(-1, 1).float() / 127.5 - 1)  # grad-tracking latents
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dec, losses = train_decoder_probe(z, frames, steps=40, batch=8)
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert all(p.grad is None for p in model.parameters())  # nothing flowed into the encoder
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    out = decode_latents(dec, z.detach().numpy()[:3])
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8


def test_cli_writes_files(tiny_ckpt, tmp_path):
    _sweep(tmp_path, "s1.json", "cem", 16, 0.5)
    _sweep(tmp_path, "s2.json", "cem", 32, 0.6)
    out = tmp_path / "plots"
    main(["plots", "--checkpoint", str(tiny_ckpt), "--out", str(out), "--sweeps", str(tmp_path / "s*.json"),
          "--steps", "6", "--landscape-step", "1", "--grid", "5", "--samples", "8", "--iterations", "2",
          "--horizon", "3", "--decoder-steps", "5", "--decoder-episodes", "1", "--threads", "1",
          "--no-progress"])
    for name in ("energy_landscape.png", "latent_pca.png", "success_vs_budget.png", "decoder_probe.png"):
        assert (out / name).stat().st_size > 1000, name
    data = json.loads((out / "plots.json").read_text())
    assert set(data["files"]) == {"energy_landscape", "latent_pca", "success_vs_budget", "decoder_probe"}
    land = data["energy_landscape"]
    assert np.asarray(land["cost"]).shape == (5, 5) and land["cost"][2][2] == pytest.approx(land["plan_cost"])
    assert len(data["latent_pca"]["error"]) == 7 and data["latent_pca"]["error"][0] == 0.0
    assert data["success_vs_budget"]["cem"]["samples"] == [16, 32]
    assert not list(out.glob(".*"))  # no temp files left behind


def test_cli_bad_input(tiny_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plots", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert e.value.code == 1 and "nope" in capsys.readouterr().err
    with pytest.raises(ValueError, match="two different action dimensions"):
        run(PlotsConfig(checkpoint=str(tiny_ckpt), out=str(tmp_path / "o"), dims=(1, 7), progress=False))
    with pytest.raises(ValueError, match="unknown --policy"):
        run(PlotsConfig(checkpoint=str(tiny_ckpt), out=str(tmp_path / "o"), policy="wander"))
    with pytest.raises(ValueError, match="--grid must be odd"):
        run(PlotsConfig(checkpoint=str(tiny_ckpt), out=str(tmp_path / "o"), grid=4))
    with pytest.raises(ValueError, match="matched no files"):
        run(PlotsConfig(checkpoint=str(tiny_ckpt), out=str(tmp_path / "o"),
                        sweeps=str(tmp_path / "none*.json")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError):
        run(PlotsConfig(checkpoint=str(empty), out=str(tmp_path / "o"), progress=False))


def test_compare_chart_groups_eval_results_with_wilson_intervals(tmp_path, capsys):
    from planner.compare_chart import parse_entry

    for name, rate, n in (("a", 0.1, 50), ("b", 0.04, 50), ("c", 0.0, 20)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"env": "ArmPush-v0", "success_rate": rate,
                                                           "episodes": n}))
    ceiling = {"success_rate": 0.9, "episodes": 40}
    (tmp_path / "d.json").write_text(json.dumps({"env": "ArmPush-v0", "success_rate": 0.1, "episodes": 50,
                                                 "baselines": {"simulator": ceiling}}))
    out = tmp_path / "cmp.png"
    main(["compare-chart", "--out", str(out), "--results", f"red::jepa={tmp_path / 'a.json'}",
          f"red::gcbc={tmp_path / 'b.json'}", f"green::jepa={tmp_path / 'c.json'}",
          f"red::ceiling={tmp_path / 'd.json'}#simulator"])
    printed = capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "10% of 50" in printed and "[0%, 16%]" in printed  # Wilson interval of 0 of 20
    assert "90% of 40" in printed  # the baseline block, not the agent
    with pytest.raises(SystemExit):  # a baseline the result does not have
        main(["compare-chart", "--out", str(out), "--results", f"red::floor={tmp_path / 'a.json'}#random"])
    with pytest.raises(ValueError, match="CONDITION::MODEL=PATH"):
        parse_entry("jepa=a.json")
    with pytest.raises(SystemExit):  # a missing file is a clear CLI error, not a traceback
        main(["compare-chart", "--out", str(out), "--results", f"red::jepa={tmp_path / 'missing.json'}"])
