"""Imported data trains: LeRobot v3.0 and robomimic fixtures -> store -> `planner train` -> loadable."""

from __future__ import annotations

import dataclasses

import pytest

from planner.importers import ImportConfig, import_dataset
from tests.dataset_fixtures import synthetic_episode, write_lerobot_v30, write_robomimic


@pytest.mark.parametrize("fmt", ["lerobot", pytest.param("robomimic", marks=pytest.mark.slow)])
def test_imported_store_trains_and_checkpoint_loads(tmp_path, fmt):
    from planner.checkpoint import load
    from planner.energy_head import EnergyHeadConfig
    from planner.train import TrainConfig, run
    from planner.world_model import WorldModelConfig

    episodes = [synthetic_episode(i, 16) for i in range(6)]
    if fmt == "lerobot":
        src = tmp_path / "src"
        write_lerobot_v30(src, episodes)
        camera = "observation.images.front"
    else:
        src = tmp_path / "src.hdf5"
        write_robomimic(src, episodes)
        camera = None
    store = import_dataset(ImportConfig(format=fmt, src=src, out=tmp_path / "store", camera=camera,
                                        progress=False))  # fmt: skip
    cfg = TrainConfig(
        data=store.path, out=tmp_path / "ckpt", steps=4, batch_size=4, warmup_steps=1, val_episodes=2,
        val_every=0, workers=0, episodes_per_batch=2, log_dir=tmp_path / "log", success_threshold=3.0,
        device="cpu", energy_head=EnergyHeadConfig(hidden=16, steps=10, batch_size=32),
        model=dataclasses.replace(WorldModelConfig(), action_dim=store.meta.action_dim,
                                  enc_channels=(8, 16, 32, 32), latent_dim=32, pred_hidden=64),
    )  # fmt: skip
    run(cfg)
    loaded = load(tmp_path / "ckpt", "cpu")
    assert loaded.name.startswith("ckpt@")
    assert loaded.config["action"]["low"] == store.meta.action_spec["low"]  # native bounds reach the server
