"""Adapter: any gymnasium MuJoCo env that renders rgb_array -> our env interface (docs/ARCHITECTURE.md).

`make_gym_env("gym:Reacher-v5")` or `make_gym_env("gym:my_pkg.envs:MyEnv-v0")` (the module is imported
first, as gymnasium does). The adapted env offers:

- observations `{"image": uint8[S,S,3], "proprio": float32[P]}`: the env's own renderer at S x S
  (`image_size`), and the env's own observation vector;
- normalized actions in Box(-1, 1, (A,)); `action_spec` holds the env's native bounds;
- snapshots of the full MuJoCo physics state (mj_getState / mj_setState), float64[S_snap];
- goals made from the start state, then restored: by replaying `goal_steps` seeded random actions
  (goal_mode "actions"), or by moving the goal body along its own slide joints by up to
  `goal_relocate_range` metres (goal_mode "relocate": Pusher-v5, whose object random actions never move);
- success when the goal body (or site) is within `success_threshold` metres of its goal position.

Defaults per env (documented in docs/ENVIRONMENTS.md, "Third-party environments") live in
`KNOWN_GOAL_TARGETS` and `KNOWN_CAMERAS`; anything else falls back to the last body of the model and the
env's own camera. Keyword arguments that are not adapter options go to `gymnasium.make` unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from envs.task import TaskSpec  # noqa: E402

GYM_PREFIX = "gym:"
HOW_TO = (
    "pass a gymnasium MuJoCo env as 'gym:<id>' (e.g. 'gym:Reacher-v5', 'gym:Pusher-v5') or "
    "'gym:<module>:<id>' to import <module> first (it must register <id> with gymnasium)"
)

# Which body the task measures, per gymnasium id: ("body" | "site", name).
KNOWN_GOAL_TARGETS: dict[str, tuple[str, str]] = {
    "Reacher-v5": ("body", "fingertip"),
    "Pusher-v5": ("body", "object"),
}

# Top-down cameras that fill a 64x64 frame with the workspace (the envs' own default views leave most of
# a small frame empty). Passing default_camera_config, camera_id or camera_name overrides them.
KNOWN_CAMERAS: dict[str, dict[str, Any]] = {
    "Reacher-v5": dict(distance=0.75, elevation=-90.0, azimuth=90.0, lookat=(0.0, 0.0, 0.0), trackbodyid=-1),
    "Pusher-v5": dict(distance=1.6, elevation=-90.0, azimuth=90.0, lookat=(0.45, -0.2, -0.3), trackbodyid=-1),
}

# How goals are made, per gymnasium id (default "actions"). In Pusher-v5, 4000 steps of random actions
# (40 starts x 100 steps) moved the object at most 9 mm, so its goals relocate the object instead.
KNOWN_GOAL_MODES: dict[str, str] = {"Pusher-v5": "relocate"}
GOAL_MODES = ("actions", "relocate")

FALLBACK_STEP_BUDGET = 50
# Everything a restore needs to reproduce the next image and step: the full physics state (time, qpos,
# qvel, act, plugin state, and history/plastic state where mujoco has them) plus mocap poses and
# equality activations (empty for models without them, e.g. Reacher-v5 and Pusher-v5).
_S = mujoco.mjtState
SNAPSHOT_SPEC = int(
    _S.mjSTATE_FULLPHYSICS | _S.mjSTATE_MOCAP_POS | _S.mjSTATE_MOCAP_QUAT | _S.mjSTATE_EQ_ACTIVE
)


@dataclass(frozen=True)
class GymAdapterOptions:
    """Adapter options (keyword arguments of make_gym_env); all other kwargs go to gymnasium.make."""

    image_size: int = 64
    """Rendered image side in pixels (the env renders at image_size x image_size)."""
    shadows: bool = True
    """Keep the model's shadow map; False skips it (Pusher-v5 renders several times faster, nearly the
    same image: see docs/ENVIRONMENTS.md)."""
    goal_body: str | None = None
    """Body whose world position the task measures (default: KNOWN_GOAL_TARGETS, else the last body)."""
    goal_site: str | None = None
    """Site whose world position the task measures, instead of a body."""
    success_threshold: float = 0.05
    """Success distance in metres."""
    step_budget: int | None = None
    """Steps per episode; default the env's max_episode_steps, else 50."""
    min_start_distance: float = 0.1
    """Goal sampling retries until the goal is at least this far (metres) from the start; must exceed
    success_threshold."""
    goal_mode: str | None = None
    """'actions' (replay random actions) or 'relocate' (move the goal body's slide joints); default
    KNOWN_GOAL_MODES, else 'actions'."""
    goal_steps: int = 25
    """Random actions replayed from the start state to make a goal (goal_mode 'actions')."""
    goal_relocate_range: float = 0.15
    """Largest move (metres) along each of the goal body's slide joints (goal_mode 'relocate')."""
    goal_tries: int = 20
    """Goal sampling attempts before keeping the farthest goal found."""

    def validate(self) -> None:
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be an int in [8, 1024], got {self.image_size!r}")
        if not isinstance(self.shadows, bool):
            raise ValueError(f"shadows must be true or false, got {self.shadows!r}")
        if self.goal_body is not None and self.goal_site is not None:
            raise ValueError("pass goal_body or goal_site, not both")
        for name in ("goal_body", "goal_site"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty name string, got {value!r}")
        if not isinstance(self.success_threshold, (int, float)) or not self.success_threshold > 0:
            raise ValueError(f"success_threshold must be > 0 metres, got {self.success_threshold!r}")
        if not isinstance(self.min_start_distance, (int, float)) or self.min_start_distance < 0:
            raise ValueError(f"min_start_distance must be >= 0 metres, got {self.min_start_distance!r}")
        if self.goal_mode is not None and self.goal_mode not in GOAL_MODES:
            raise ValueError(f"goal_mode must be one of {GOAL_MODES}, got {self.goal_mode!r}")
        if not isinstance(self.goal_relocate_range, (int, float)) or not self.goal_relocate_range > 0:
            raise ValueError(f"goal_relocate_range must be > 0 metres, got {self.goal_relocate_range!r}")
        for name in ("goal_steps", "goal_tries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.step_budget is not None and (not isinstance(self.step_budget, int) or self.step_budget < 1):
            raise ValueError(f"step_budget must be an int >= 1, got {self.step_budget!r}")


_ADAPTER_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(GymAdapterOptions))
_RESERVED_MAKE_KWARGS = frozenset({"render_mode", "width", "height"})
_CAMERA_KWARGS = frozenset({"default_camera_config", "camera_id", "camera_name"})


def parse_gym_spec(spec: str) -> str:
    """'gym:<id>' or 'gym:<module>:<id>' -> the id gymnasium.make takes ('<id>' or '<module>:<id>')."""
    if not isinstance(spec, str) or not spec.startswith(GYM_PREFIX) or not spec[len(GYM_PREFIX) :].strip():
        raise ValueError(f"not a gym env id: {spec!r}; {HOW_TO}")
    gym_id = spec[len(GYM_PREFIX) :].strip()
    if gym_id.count(":") > 1 or gym_id.startswith(":") or gym_id.endswith(":"):
        raise ValueError(f"malformed gym env id {spec!r}; {HOW_TO}")
    return gym_id


def make_gym_env(spec: str, **kwargs: Any) -> GymAdapterEnv:
    """Make the gymnasium MuJoCo env named by `spec` ('gym:<id>' / 'gym:<module>:<id>') in our interface.

    Adapter options are the fields of GymAdapterOptions; other kwargs go to gymnasium.make.
    """
    gym_id = parse_gym_spec(spec)
    options = GymAdapterOptions(**{k: v for k, v in kwargs.items() if k in _ADAPTER_OPTION_NAMES})
    options.validate()
    make_kwargs = {k: v for k, v in kwargs.items() if k not in _ADAPTER_OPTION_NAMES}
    reserved = sorted(_RESERVED_MAKE_KWARGS & make_kwargs.keys())
    if reserved:
        raise ValueError(
            f"{reserved} are set by the adapter (render_mode='rgb_array', width=height=image_size); "
            "use image_size to change the image side"
        )
    user_kwargs = sorted(make_kwargs)
    base_id = gym_id.split(":")[-1]
    if base_id in KNOWN_CAMERAS and not (_CAMERA_KWARGS & make_kwargs.keys()):
        camera = dict(KNOWN_CAMERAS[base_id])
        camera["lookat"] = np.asarray(camera["lookat"], dtype=np.float64)
        make_kwargs["default_camera_config"] = camera
    size = options.image_size
    try:
        made = gymnasium.make(gym_id, render_mode="rgb_array", width=size, height=size, **make_kwargs)
    except (gymnasium.error.Error, ImportError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"cannot make gym env {spec!r} with gymnasium.make kwargs {user_kwargs}: "
            f"{type(exc).__name__}: {exc}. {HOW_TO}; adapter options are {sorted(_ADAPTER_OPTION_NAMES)}, "
            "other kwargs go to gymnasium.make"
        ) from exc
    return GymAdapterEnv(made, options, name=GYM_PREFIX + gym_id)


class GymAdapterEnv(gymnasium.Env):
    """A gymnasium MuJoCo env in our interface: image + proprio observations, normalized actions, goals."""

    metadata = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(self, made: gymnasium.Env, options: GymAdapterOptions, name: str) -> None:
        self._made = made
        self.inner = made.unwrapped
        self.options = options
        model = getattr(self.inner, "model", None)
        data = getattr(self.inner, "data", None)
        if not isinstance(model, mujoco.MjModel) or not isinstance(data, mujoco.MjData):
            made.close()
            raise ValueError(f"{name} is not a MuJoCo env (its unwrapped env has no mujoco model/data)")
        self.model, self.data = model, data
        if not options.shadows:
            model.vis.quality.shadowsize = 0  # read when the renderer's context is made (first render)
        native = self.inner.action_space
        if not isinstance(native, spaces.Box) or native.shape is None or len(native.shape) != 1:
            made.close()
            raise ValueError(f"{name}: only flat Box action spaces can be adapted, got {native}")
        low, high = np.asarray(native.low, np.float64), np.asarray(native.high, np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            made.close()
            raise ValueError(f"{name}: native action bounds must be finite with high > low, got {native}")
        self._low, self._high, self._native_dtype = low, high, native.dtype
        inner_obs = self.inner.observation_space
        if not isinstance(inner_obs, spaces.Box):
            made.close()
            raise ValueError(f"{name}: only Box observation spaces can be adapted, got {inner_obs}")
        proprio_dim = int(np.prod(inner_obs.shape))
        size = options.image_size
        self.observation_space = spaces.Dict(
            image=spaces.Box(0, 255, (size, size, 3), np.uint8),
            proprio=spaces.Box(-np.inf, np.inf, (proprio_dim,), np.float32),
        )
        self.action_space = spaces.Box(-1.0, 1.0, (low.size,), np.float32)
        self.action_spec = dict(low=low.tolist(), high=high.tolist(), units="native", frame="env")
        self.control_hz = 1.0 / float(self.inner.dt)
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": self.control_hz}
        self._target_kind, self._target_name, self._target_id = self._resolve_target(name)
        self.goal_mode = options.goal_mode or KNOWN_GOAL_MODES.get(name.split(":")[-1], "actions")
        self._relocate_qpos = (
            self._relocate_joints(name) if self.goal_mode == "relocate" else np.zeros(0, int)
        )
        max_steps = made.spec.max_episode_steps if made.spec is not None else None
        budget = options.step_budget or max_steps or FALLBACK_STEP_BUDGET
        self.task = TaskSpec(
            name=name,
            success_threshold=float(options.success_threshold),
            step_budget=int(budget),
            min_start_distance=float(options.min_start_distance),
        )
        self.goal_task_state: np.ndarray | None = None
        self._snapshot_size = mujoco.mj_stateSize(model, SNAPSHOT_SPEC)
        self._steps = 0

    def _resolve_target(self, name: str) -> tuple[str, str, int]:
        opts = self.options
        if opts.goal_site is not None:
            kind, target = "site", opts.goal_site
        elif opts.goal_body is not None:
            kind, target = "body", opts.goal_body
        else:
            base_id = name.split(":")[-1]
            kind, target = KNOWN_GOAL_TARGETS.get(
                base_id, ("body", self.model.body(self.model.nbody - 1).name)
            )
        obj = mujoco.mjtObj.mjOBJ_SITE if kind == "site" else mujoco.mjtObj.mjOBJ_BODY
        index = mujoco.mj_name2id(self.model, obj, target)
        if index < 0:
            count = self.model.nsite if kind == "site" else self.model.nbody
            names = [mujoco.mj_id2name(self.model, obj, i) for i in range(count)]
            self._made.close()
            raise ValueError(f"{name} has no {kind} named {target!r}; its {kind}s are {names}")
        return kind, target, index

    def _target_body(self) -> int:
        return (
            int(self.model.site_bodyid[self._target_id]) if self._target_kind == "site" else self._target_id
        )

    def _relocate_joints(self, name: str) -> np.ndarray:
        """qpos addresses int[J] of the goal body's own slide joints (goal_mode 'relocate')."""
        body = self._target_body()
        joints = [j for j in range(self.model.njnt) if self.model.jnt_bodyid[j] == body]
        slides = [j for j in joints if self.model.jnt_type[j] == mujoco.mjtJoint.mjJNT_SLIDE]
        if not slides or len(slides) != len(joints):
            self._made.close()
            raise ValueError(
                f"{name}: goal_mode 'relocate' needs a goal body moved only by its own slide joints; body "
                f"{self.model.body(body).name!r} has {len(slides)} slide of {len(joints)} joints. "
                "Use goal_mode='actions' or another goal_body/goal_site"
            )
        return np.array([self.model.jnt_qposadr[j] for j in slides], dtype=int)

    # --- actions -------------------------------------------------------------------------------------

    def denormalize_action(self, action: np.ndarray) -> np.ndarray:
        """Normalized float[A] in [-1, 1] (clipped) -> native float64[A] in [low, high]."""
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        return self._low + (a + 1.0) * 0.5 * (self._high - self._low)

    def normalize_action(self, native: np.ndarray) -> np.ndarray:
        """Native float[A] (clipped to [low, high]) -> normalized float32[A] in [-1, 1]."""
        n = np.clip(np.asarray(native, np.float64), self._low, self._high)
        return (2.0 * (n - self._low) / (self._high - self._low) - 1.0).astype(np.float32)

    def _check_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a}")
        return a

    # --- gymnasium API -------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Seeded start state (the env's own reset) and a seeded goal made from it (see goal_mode)."""
        if options:
            raise ValueError(f"{self.task.name}: reset options are not supported, got {sorted(options)}")
        super().reset(seed=seed)
        inner_obs, _ = self.inner.reset(seed=seed)
        start = self.get_snapshot()
        start_state = self.task_state()
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        for _attempt in range(self.options.goal_tries):
            goal_proprio = self._make_goal_candidate()
            reach = float(np.linalg.norm(self.task_state() - start_state))
            if best is None or reach > best[0]:
                best = (reach, self.get_snapshot(), goal_proprio)
            self.set_snapshot(start)
            if reach >= self.task.min_start_distance:
                break
        assert best is not None  # goal_tries >= 1
        _, goal_snapshot, goal_proprio = best
        self.set_snapshot(goal_snapshot)
        self.goal_task_state = self.task_state()
        goal_image = self.render()
        self.set_snapshot(start)
        self._steps = 0
        obs = {"image": self.render(), "proprio": np.asarray(inner_obs, np.float32).ravel()}
        info = self._info()
        info.update(
            goal_image=goal_image, goal_proprio=goal_proprio, goal_task_state=self.goal_task_state.copy()
        )
        return obs, info

    def _make_goal_candidate(self) -> np.ndarray:
        """Move the sim from the start state to a candidate goal state; returns its proprio float32[P]."""
        if self.goal_mode == "actions":
            for _ in range(self.options.goal_steps):
                random_action = self.np_random.uniform(-1.0, 1.0, self.action_space.shape)
                goal_obs, *_ = self._inner_step(self.denormalize_action(random_action))
            return np.asarray(goal_obs, np.float32).ravel()
        reach = self.options.goal_relocate_range
        self.data.qpos[self._relocate_qpos] += self.np_random.uniform(-reach, reach, self._relocate_qpos.size)
        self.data.qvel[:] = 0.0
        mujoco.mj_forward(self.model, self.data)
        get_obs = getattr(self.inner, "_get_obs", None)
        if get_obs is None:
            raise ValueError(
                f"{self.task.name}: goal_mode 'relocate' needs the env's _get_obs(); use 'actions'"
            )
        return np.asarray(get_obs(), np.float32).ravel()

    def _inner_step(self, native: np.ndarray) -> tuple:
        """The env's own step, then mj_forward: mj_step leaves body poses from before its last integration,
        so without it images and task_state would lag qpos by one substep and differ from a restored
        snapshot's. The env's observation (proprio) is returned as the env computed it."""
        result = self.inner.step(native.astype(self._native_dtype))
        mujoco.mj_forward(self.model, self.data)
        return result

    def step(self, action):
        """Apply a normalized action for one control step; returns the gymnasium 5-tuple."""
        if self.goal_task_state is None:
            raise RuntimeError(f"{self.task.name}: call reset() before step()")
        native = self.denormalize_action(self._check_action(action))
        inner_obs, env_reward, env_terminated, _, _ = self._inner_step(native)
        self._steps += 1
        obs = {"image": self.render(), "proprio": np.asarray(inner_obs, np.float32).ravel()}
        info = self._info()
        info.update(env_reward=float(env_reward), env_terminated=bool(env_terminated))
        truncated = self._steps >= self.task.step_budget
        return obs, -info["distance"], False, truncated, info

    def render(self) -> np.ndarray:
        """uint8[S,S,3] from the env's own renderer."""
        # gymnasium's renderer makes its GL context current only on creation, so with several envs in one
        # process (or after another env closed its context) it would draw into the wrong one: make it current.
        viewer = getattr(self.inner, "mujoco_renderer", None) and self.inner.mujoco_renderer.viewer
        if viewer is not None:
            viewer.make_context_current()
        return np.ascontiguousarray(self.inner.render(), dtype=np.uint8)

    def close(self) -> None:
        self._made.close()

    # --- our interface -------------------------------------------------------------------------------

    def get_snapshot(self) -> np.ndarray:
        """Full MuJoCo physics state float64[S] (SNAPSHOT_SPEC: mjSTATE_FULLPHYSICS + mocap + eq_active)."""
        state = np.empty(self._snapshot_size, dtype=np.float64)
        mujoco.mj_getState(self.model, self.data, state, SNAPSHOT_SPEC)
        return state

    def set_snapshot(self, snapshot: np.ndarray) -> None:
        """Restore a get_snapshot() vector; positions, contacts and the next render follow (mj_forward)."""
        state = np.asarray(snapshot, dtype=np.float64)
        if state.shape != (self._snapshot_size,):
            raise ValueError(
                f"{self.task.name}: snapshot must be float64[{self._snapshot_size}] (the physics state of "
                f"this model under mujoco {mujoco.__version__}), got shape {state.shape}"
            )
        mujoco.mj_setState(self.model, self.data, np.ascontiguousarray(state), SNAPSHOT_SPEC)
        mujoco.mj_forward(self.model, self.data)

    def task_state(self) -> np.ndarray:
        """World position float64[3] of the goal body (or site)."""
        source = self.data.site_xpos if self._target_kind == "site" else self.data.xpos
        return source[self._target_id].copy()

    def distance(self) -> float:
        """Metres between the goal body/site and its goal position."""
        if self.goal_task_state is None:
            raise RuntimeError(f"{self.task.name}: call reset() before distance()")
        return float(np.linalg.norm(self.task_state() - self.goal_task_state))

    def scripted_action(self) -> np.ndarray:
        raise NotImplementedError(
            f"{self.task.name}: third-party envs have no scripted expert; use the 'random' or 'explore' "
            "policy, or plan with the simulator (get_snapshot/set_snapshot + distance())"
        )

    def _info(self) -> dict[str, Any]:
        distance = self.distance()
        return {
            "distance": distance,
            "is_success": self.task.is_success(distance),
            "task_state": self.task_state(),
        }
