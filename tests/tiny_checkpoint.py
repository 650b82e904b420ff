"""The config of the tiny ArmReach-v0 checkpoints the eval, pixel-model and GCBC tests save (32 px, A = 4)."""

from __future__ import annotations


def tiny_reach_config(goal_energy_threshold: float | None = 0.0) -> dict:
    """checkpoint.save config (everything but the architecture) of a tiny 32x32 ArmReach-v0 model."""
    config = {
        "image": {"size": 32, "preprocessing": {"size": 32, "crop": "center"}},
        "action": {"dim": 4, "low": [-0.05] * 3 + [-1.0], "high": [0.05] * 3 + [1.0], "units": "m, gripper"},
        "history_len": 2,
        "training_data": {"env_id": "ArmReach-v0", "env_kwargs": {"image_size": 32}},
    }
    if goal_energy_threshold is not None:
        config["goal_energy_threshold"] = goal_energy_threshold
    return config


def save_tiny_reach_model(path, goal_energy_threshold: float | None = 0.0):
    """Save a seeded, untrained tiny 32x32 ArmReach-v0 world model (latent 8) at `path`; returns path."""
    import torch

    from planner.checkpoint import save
    from planner.world_model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    arch = WorldModelConfig(image_size=32, latent_dim=8, history_len=2, enc_channels=(8, 8), enc_groups=4,
                            pred_hidden=16)
    save(path, WorldModel(arch).eval(), tiny_reach_config(goal_energy_threshold))
    return path


def save_tiny_two_view_model(path):
    """Save a seeded, untrained tiny ArmPickPlace-v0 world model that sees the table and workspace cameras
    as two whole 32 x 32 views side by side (image_views=2, 32 x 64 images); returns path."""
    import torch

    from planner.checkpoint import save
    from planner.world_model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    arch = WorldModelConfig(image_size=32, image_views=2, latent_dim=16, history_len=2, enc_channels=(8, 8),
                            enc_groups=4, pred_hidden=16, enc_keypoints=2, enc_keypoint_latent=True)
    config = tiny_reach_config()
    config["image"] = {"size": 32, "preprocessing": {"size": 32, "crop": "center", "views": 2}}
    config["training_data"] = {"env_id": "ArmPickPlace-v0", "env_kwargs": {
        "image_size": 32, "camera": "table+workspace", "view_layout": "wide"}}
    save(path, WorldModel(arch).eval(), config)
    return path
