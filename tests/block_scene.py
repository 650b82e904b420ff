"""The red block rendered where a test puts it: the arm parked out of the way, the block's free joint set
directly (no physics step), and its pixels found by colour."""

from __future__ import annotations

import mujoco
import numpy as np

import envs

ARM_PARKED = np.array([0.15, 0.25, 0.30])
"""End-effector position that keeps the arm clear of the block region in every fixed camera."""


def red_mask(image: np.ndarray) -> np.ndarray:
    """[H, W] bool: the block's red pixels of an RGB uint8 image [H, W, 3]."""
    im = image.astype(int)
    return (im[..., 0] > 150) & (im[..., 1] < 80) & (im[..., 2] < 80)


def red_centroid(image: np.ndarray, min_pixels: int = 1) -> np.ndarray:
    """(column, row) mean of the red pixels; fails the test when fewer than min_pixels are red."""
    rows, cols = np.nonzero(red_mask(image))
    assert rows.size >= min_pixels, f"{rows.size} block pixels in view"
    return np.array([cols.mean(), rows.mean()])


def block_scene(camera: str, image_size: int = 128):
    """An unwrapped ArmPickPlace-v0 env seen from `camera` with the arm parked."""
    env = envs.make_env("ArmPickPlace-v0", camera=camera, image_size=image_size).unwrapped
    env.reset(seed=0)
    env._place_arm(ARM_PARKED, gripper=1.0)
    return env


def render_block_at(env, xyz) -> np.ndarray:
    """RGB image with the block's centre at world position xyz (upright)."""
    adr = env.model.joint("block").qposadr[0]
    env.data.qpos[adr : adr + 7] = [*xyz, 1.0, 0.0, 0.0, 0.0]
    mujoco.mj_forward(env.model, env.data)
    return env.render()
