"""planner train: learns on a synthetic store, resumes exactly, runs under torchrun (2 procs, gloo),
stops on collapse, rejects bad stores. The store holds a moving-dot world (learnable, real dynamics)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from planner.checkpoint import load
from planner.data import WindowDataset, WindowSpec, moving_window_starts, split_episodes
from planner.energy_head import EnergyHeadConfig
from planner.store import Episode, StoreMeta, TrajectoryStore
from planner.train import CollapseError, CollapseMonitor, TrainConfig, TrainError, lr_at, run
from planner.world_model import ObjectiveConfig, WorldModelConfig

ROOT = Path(__file__).resolve().parents[1]
S, T = 32, 20


def dot_image(p: np.ndarray) -> np.ndarray:
    img = np.full((S, S, 3), 30, np.uint8)
    x, y = np.clip(np.round(p).astype(int), 2, S - 3)
    img[y - 2 : y + 3, x - 2 : x + 3] = (250, 120, 40)
    return img


def dot_episode(index: int, rng: np.random.Generator) -> Episode:
    """A dot moved by 2-D actions (2.5 px per unit), correlated random actions."""
    p = rng.uniform(6, S - 6, 2)
    goal = rng.uniform(6, S - 6, 2)
    a = np.zeros(2)
    pos, acts = [p.copy()], []
    for _ in range(T):
        a = np.clip(0.7 * a + 0.6 * rng.normal(size=2), -1, 1)
        p = np.clip(p + 2.5 * a, 3, S - 4)
        acts.append(a.copy())
        pos.append(p.copy())
    pos = np.array(pos)
    state = (pos / S).astype(np.float32)
    return Episode(
        images=np.stack([dot_image(q) for q in pos]), proprio=state.copy(),
        actions=np.array(acts, np.float32),
        task_state=state, snapshots=pos.astype(np.float64), goal_image=dot_image(goal),
        goal_task_state=(goal / S).astype(np.float32), seed=index, index=index,
    )


def make_store(path: Path, episodes: int = 24, image_size: int = S) -> Path:
    meta = StoreMeta(
        env_id="synthetic-dot", env_kwargs={}, preprocessing={"size": image_size, "crop": "center"},
        action_spec={"dim": 2, "low": [-2.5, -2.5], "high": [2.5, 2.5], "units": "px", "frame": "image"},
        proprio_spec={"dim": 2}, task_state_spec={"dim": 2}, snapshot_dim=2, control_hz=10.0,
        policy="random", seed=0, steps=T,
    )
    store = TrajectoryStore.create(path, meta)
    rng = np.random.default_rng(0)
    for i in range(episodes):
        store.write(dot_episode(i, rng))
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("dots") / "store")


MODEL = WorldModelConfig(image_size=S, action_dim=2, latent_dim=16, enc_channels=(8, 16, 16), pred_hidden=64)
OBJ = ObjectiveConfig(rollout_steps=3, temporal_span=5)


def tiny_cfg(store_path: Path, tmp: Path, **kw) -> TrainConfig:
    base = dict(data=store_path, out=tmp / "ckpt", log_dir=tmp / "log", steps=20, device="cpu", batch_size=16,
                warmup_steps=5, lr=3e-3, workers=0, episodes_per_batch=8, val_every=0, val_episodes=3,
                save_every=10, success_threshold=0.1, collapse_patience=5, model=MODEL, objective=OBJ,
                energy_head=EnergyHeadConfig(dim=4, hidden=16, steps=20, batch_size=32))
    base.update(kw)
    return TrainConfig(**base)


def cli_args(cfg_dir: Path, store_path: Path, steps: int) -> list[str]:
    return ["train", "--data", str(store_path), "--out", str(cfg_dir / "ckpt"),
            "--log-dir", str(cfg_dir / "log"),
            "--steps", str(steps), "--device", "cpu", "--batch-size", "8", "--warmup-steps", "2",
            "--workers", "1", "--episodes-per-batch", "4", "--val-every", "0", "--val-episodes", "3",
            "--success-threshold", "0.1", "--threads", "1", "--model.image-size", str(S),
            "--model.action-dim", "2", "--model.latent-dim", "16", "--model.enc-channels", "8", "16", "16",
            "--model.pred-hidden", "64", "--objective.rollout-steps", "3", "--objective.temporal-span", "5",
            "--energy-head.steps", "20", "--energy-head.hidden", "16", "--energy-head.batch-size", "32"]


def read_log(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_split_and_dataset_are_deterministic(store_path):
    train, val = split_episodes(list(range(24)), 0.1)
    assert val == [22, 23] and train == list(range(22))
    spec = WindowSpec(frames=6, batch_size=5, episodes_per_batch=3)
    ds = WindowDataset(store_path, train, [T] * len(train), spec, seed=1, end_step=4)
    b = ds.batch(3)
    assert b["images"].shape == (5, 6, S, S, 3) and b["images"].dtype == torch.uint8
    assert b["actions"].shape == (5, 5, 2)
    again = WindowDataset(store_path, train, [T] * len(train), spec, seed=1, start_step=3, end_step=4)
    assert torch.equal(next(iter(again))["images"], b["images"])
    assert not torch.equal(ds.batch(2)["images"], b["images"])


def test_task_motion_sampling_draws_contact_windows(store_path):
    state = np.zeros((T + 1, 3), np.float32)
    state[11:] = 0.01  # the "block" moves once, in step 10 (frame 10 -> 11)
    assert np.flatnonzero(moving_window_starts(state, 3, 0.002)).tolist() == [9, 10]
    n_starts = T + 1 - 2
    rng = np.random.default_rng(0)
    moving = np.flatnonzero(moving_window_starts(state, 3, 0.002))
    always = WindowDataset(store_path, [0], [T], WindowSpec(3, 4, task_motion_fraction=1.0), seed=0,
                           end_step=1)
    assert {always._window_start(moving, n_starts, rng) for _ in range(50)} == {9, 10}
    still = np.flatnonzero(moving_window_starts(np.zeros_like(state), 3, 0.002))  # nothing moves: uniform
    assert len({always._window_start(still, n_starts, rng) for _ in range(200)}) > 10
    half = WindowDataset(store_path, [0], [T], WindowSpec(3, 4, task_motion_fraction=0.5), seed=0, end_step=1)
    share = np.mean([half._window_start(moving, n_starts, rng) in (9, 10)
                     for _ in range(2000)])
    assert 0.45 < share < 0.6  # 0.5 forced, plus 2 of the 19 starts of the uniform half
    with pytest.raises(ValueError, match="task_motion_fraction"):
        WindowSpec(3, 4, task_motion_fraction=1.5)


def test_lr_schedule():
    cfg = TrainConfig(data=Path("x"), out=Path("y"), steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3) and lr_at(50, cfg) < lr_at(20, cfg)


def test_tiny_run_lowers_loss_keeps_rank_and_writes_checkpoint(store_path, tmp_path):
    cfg = tiny_cfg(store_path, tmp_path, steps=40, save_every=20)
    path = run(cfg)
    rows = read_log(tmp_path / "log" / "train_log.csv")
    assert len(rows) == 40
    pred = [float(r["pred"]) + float(r["rollout"]) for r in rows]
    assert np.mean(pred[-10:]) < 0.5 * np.mean(pred[:5])
    assert min(float(r["effective_rank"]) for r in rows[-10:]) > 2.0
    loaded = load(path)
    c = loaded.config
    assert c["model_type"] == "jepa" and c["action"]["dim"] == 2 and c["image"]["size"] == S
    assert c["training_data"]["env_id"] == "synthetic-dot" and c["training_data"]["val_episodes"] == 2
    assert c["goal_energy_threshold"] > 0 and "probe_r2_task_state" in c["metrics"]
    assert c["metrics"]["effective_rank"] > 2.0
    assert "energy_spearman_goal" in c["metrics"]
    # the energy head is fitted after training and ships in the same checkpoint
    assert c["architecture"]["energy_head_dim"] == 4 and loaded.model.energy_head is not None
    assert c["training"]["model"]["energy_head_dim"] == 0  # the caller's config is not mutated
    m = c["metrics"]
    assert 0 < m["energy_head_transition_distance"] < m["energy_head_random_pair_distance"]
    assert (path / "card.md").read_text().count("probe_r2_task_state") == 1
    logged = sum(float(r["sec_per_step"]) for r in read_log(tmp_path / "log" / "train_log.csv"))
    assert c["training_time"] == {"step_seconds": round(logged, 1), "device": "cpu (2 torch threads)"}
    assert "min of optimizer steps on cpu (2 torch threads)" in (path / "card.md").read_text()


def test_resume_is_exact(store_path, tmp_path):
    a = tiny_cfg(store_path, tmp_path / "a", stop_at=10)
    assert run(a) is None
    run(tiny_cfg(store_path, tmp_path / "a", resume=True))
    run(tiny_cfg(store_path, tmp_path / "b"))
    wa = load_file(str(tmp_path / "a" / "ckpt" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "ckpt" / "model.safetensors"))
    for k in wb:
        assert torch.equal(wa[k], wb[k]), k
    la = read_log(tmp_path / "a" / "log" / "train_log.csv")
    lb = read_log(tmp_path / "b" / "log" / "train_log.csv")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_resume_refuses_changed_config(store_path, tmp_path):
    run(tiny_cfg(store_path, tmp_path, stop_at=10))
    with pytest.raises(TrainError, match="different config.*lr"):
        run(tiny_cfg(store_path, tmp_path, resume=True, lr=1e-2))
    with pytest.raises(TrainError, match="does not exist"):
        run(tiny_cfg(store_path, tmp_path / "fresh", resume=True))


def test_resume_accepts_a_state_from_before_an_option_existed(store_path, tmp_path):
    """A state saved before the keypoint-spread options existed resumes; a changed option still fails."""
    run(tiny_cfg(store_path, tmp_path, stop_at=10))
    path = tmp_path / "log" / "train_state.pt"
    state = torch.load(path, weights_only=True)
    saved = json.loads(state["config"])
    del saved["objective"]["keypoint_spread_weight"], saved["objective"]["keypoint_spread_cells"]
    del saved["init_from"]
    state["config"] = json.dumps(saved)
    torch.save(state, path)
    changed = r"different config \(objective.keypoint_spread_cells: saved 4.0 vs now 8.0\)"
    with pytest.raises(TrainError, match=changed):
        run(tiny_cfg(store_path, tmp_path, resume=True,
                     objective=ObjectiveConfig(rollout_steps=3, temporal_span=5, keypoint_spread_cells=8.0)))
    run(tiny_cfg(store_path, tmp_path, resume=True))
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_bad_stores_are_clear_errors(store_path, tmp_path):
    with pytest.raises(TrainError, match="--model.image-size 32"):
        run(tiny_cfg(store_path, tmp_path, model=WorldModelConfig(image_size=64, action_dim=2)))
    with pytest.raises(TrainError, match="--model.action-dim 2"):
        run(tiny_cfg(store_path, tmp_path, model=WorldModelConfig(image_size=32, action_dim=4,
                                                                  enc_channels=(8, 16, 16))))
    with pytest.raises(TrainError, match="not a trajectory store"):
        run(tiny_cfg(tmp_path / "nothing", tmp_path))
    empty = make_store(tmp_path / "empty", episodes=0)
    with pytest.raises(TrainError, match="holds 0 episode"):
        run(tiny_cfg(empty, tmp_path))


def test_collapse_stops_without_checkpoint(store_path, tmp_path):
    """No anti-collapse term, no temporal term, a huge LR: the encoder collapses and training must stop."""
    obj = ObjectiveConfig(regularizer="none", temporal_weight=0.0, rollout_steps=3)
    cfg = tiny_cfg(store_path, tmp_path, objective=obj, steps=200, lr=0.05, warmup_steps=1,
                   collapse_rank_floor=1.5, collapse_patience=5)
    with pytest.raises(CollapseError, match="collapsed at step"):
        run(cfg)
    assert not (tmp_path / "ckpt").exists()


def test_collapse_monitor_needs_sustained_collapse():
    mon = CollapseMonitor(rank_floor=2.0, patience=3)
    bad = {"effective_rank": 0.5, "std_mean": 1e-5}
    good = {"effective_rank": 10.0, "std_mean": 1.0}
    for s in range(5):
        mon.update(mon.is_collapsed(bad if s % 2 else good), bad, s)
    mon.update(True, bad, 5)
    mon.update(True, bad, 6)
    with pytest.raises(CollapseError, match="step 7"):
        mon.update(True, bad, 7)


def test_cli_torchrun_two_process_ddp(store_path, tmp_path):
    """2-process DDP over gloo through the real CLI; ranks stay in sync and rank 0 writes the checkpoint."""
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "planner.cli", *cli_args(tmp_path, store_path, 6)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["training"]["steps"] == 6 and cfg["commands"][0].startswith("planner train --data")
    assert len(read_log(tmp_path / "log" / "train_log.csv")) == 6
    load(tmp_path / "ckpt")


def test_calibrate_rewrites_the_threshold_and_keeps_the_weights(store_path, tmp_path):
    from planner.calibrate import CalibrateConfig
    from planner.calibrate import run as calibrate

    path = run(tiny_cfg(store_path, tmp_path, goal_margin=1.0))
    before = load(path)
    card = Path(path) / "card.md"
    card.write_text(card.read_text() + "\n## Results (measured by hand)\n\n| success | 42% |\n")
    result = calibrate(CalibrateConfig(checkpoint=path, data=store_path, margin=0.5, episodes=20))
    after = load(path)
    assert after.name == before.name  # same weights, same name
    text = card.read_text()  # re-rendered (new threshold) with the hand-written results kept once
    assert text.count("## Results (measured by hand)") == 1 and text.rstrip().endswith("| success | 42% |")
    assert f"goal_energy_threshold: {result['threshold']:.4g}" in text
    assert after.config["goal_energy_threshold"] == result["threshold"]
    assert result["margin"] == 0.5 and result["success_threshold"] == 0.05  # 0.5 x the task's 0.1
    assert after.config["goal_energy_threshold"] <= before.config["goal_energy_threshold"]
    with pytest.raises(ValueError, match="margin"):
        calibrate(CalibrateConfig(checkpoint=path, data=store_path, margin=0.0))


def test_energy_head_dim_is_not_set_by_hand(store_path, tmp_path):
    import dataclasses

    with pytest.raises(TrainError, match="energy-head-dim is set by the energy-head fit"):
        run(tiny_cfg(store_path, tmp_path, model=dataclasses.replace(MODEL, energy_head_dim=4)))


def test_keypoint_spread_hinge_trains_logs_and_is_on_the_card(store_path, tmp_path):
    import dataclasses

    objective = dataclasses.replace(OBJ, keypoint_spread_weight=1.0, keypoint_spread_cells=2.0)
    with pytest.raises(TrainError, match="the model has none"):
        run(tiny_cfg(store_path, tmp_path, objective=objective))
    model = dataclasses.replace(MODEL, enc_keypoints=2, enc_keypoint_latent=True)
    path = run(tiny_cfg(store_path, tmp_path, model=model, objective=objective))
    rows = read_log(tmp_path / "log" / "train_log.csv")
    assert float(rows[-1]["keypoint_cells"]) < float(rows[0]["keypoint_cells"])
    assert float(rows[0]["keypoint_spread"]) > 0
    assert "keypoint-spread hinge weight 1.0 (above 2.0 cells)" in (path / "card.md").read_text()


def test_init_from_starts_at_a_checkpoints_weights_and_checks_its_architecture(store_path, tmp_path):
    import dataclasses

    first = run(tiny_cfg(store_path, tmp_path / "a"))
    path = run(tiny_cfg(store_path, tmp_path / "b", init_from=first, steps=1, lr=1e-12,
                        fit_energy_head=False))
    before, after = load(first).model.state_dict(), load(path).model.state_dict()
    assert "energy_head.net.0.weight" in before and not any(k.startswith("energy_head.") for k in after)
    for k, v in after.items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-6)  # one step at lr 1e-12 moves nothing
    assert f"starting from the weights of `{first}` (--init-from)" in (path / "card.md").read_text()
    wider = dataclasses.replace(MODEL, latent_dim=24)
    with pytest.raises(TrainError, match=r"different architecture \(latent_dim: 16 there, 24 here\)"):
        run(tiny_cfg(store_path, tmp_path / "c", init_from=first, model=wider))
    with pytest.raises(TrainError, match="--init-from: .* is missing|--init-from: .*does not exist"):
        run(tiny_cfg(store_path, tmp_path / "d", init_from=tmp_path / "nowhere"))
