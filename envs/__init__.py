"""MuJoCo arm tasks with a gymnasium API (never imports torch).

`make_env(env_id, **kwargs)` builds ArmReach-v0 / ArmPush-v0 / ArmPickPlace-v0 or adapts a third-party
gymnasium MuJoCo env given as `gym:<id>` or `gym:module:Id`. Importing this package registers our ids
with gymnasium, so `gymnasium.make("ArmReach-v0")` works too.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium  # noqa: E402

_ENTRY_POINTS = {
    "ArmReach-v0": "envs.reach:ArmReachEnv",
    "ArmPush-v0": "envs.push:ArmPushEnv",
    "ArmPickPlace-v0": "envs.pick_place:ArmPickPlaceEnv",
}


def known_env_ids() -> list[str]:
    """Our task ids (third-party envs are reachable as `gym:<id>`)."""
    return list(_ENTRY_POINTS)


def _env_class(env_id: str):
    module, name = _ENTRY_POINTS[env_id].split(":")
    return getattr(importlib.import_module(module), name)


def make_env(env_id: str, **kwargs) -> gymnasium.Env:
    """Build an env by id; kwargs: image_size (64), camera ("workspace"|"table"|"table_high"|"wrist", or
    several joined by "+", e.g. "table+workspace": the views side by side in one image; default: the
    task's, "table" for the block tasks), render_goal (True), camera_offset ((0, 0, 0) metres, shifts the
    camera), camera_turn_deg (0, turns it about the vertical axis), block_rgba (None; block tasks),
    goal_region ("train" | "shifted"; reach), block_scale_range (None, or (low, high): each episode's
    block is the nominal one times U(low, high); push; training-data randomization, see task_kwargs),
    and a task's own (the class's `task_kwargs`: push's subgoal_spacing)."""
    if not isinstance(env_id, str):
        raise ValueError(f"env id must be a string, got {env_id!r}")
    if env_id.startswith("gym:"):
        from envs.gym_adapter import make_gym_env

        return make_gym_env(env_id, **kwargs)
    if env_id not in _ENTRY_POINTS:
        raise ValueError(
            f"unknown env id {env_id!r}; known ids: {', '.join(known_env_ids())} "
            "(or gym:<id> / gym:module:Id for a gymnasium MuJoCo env)"
        )
    from envs.arm import KWARGS

    env_class = _env_class(env_id)
    accepted = KWARGS + env_class.task_kwargs
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{env_id}: unknown kwargs {unknown}; accepted: {', '.join(accepted)}")
    return env_class(**kwargs)


def image_camera(env_id: str, env_kwargs: dict) -> str | None:
    """The camera a store's (or checkpoint's) images show: its env kwargs' `camera` (e.g.
    "table+workspace"), else our task's default one; None when neither names one (a gymnasium env's own
    view)."""
    if env_kwargs.get("camera") is not None:
        return str(env_kwargs["camera"])
    return _env_class(env_id).default_camera if env_id in _ENTRY_POINTS else None


def task_kwargs(kwargs: dict) -> dict:
    """A checkpoint's training env kwargs without the training-only randomization (envs.arm
    TRAINING_ONLY_KWARGS): what an evaluation of that checkpoint builds its env with."""
    from envs.arm import TRAINING_ONLY_KWARGS

    return {k: v for k, v in kwargs.items() if k not in TRAINING_ONLY_KWARGS}


for _id, _entry in _ENTRY_POINTS.items():
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry)
