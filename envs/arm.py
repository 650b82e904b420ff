"""The shared tabletop arm: model loading, differential-IK controller, cameras, snapshots, goal rendering.

`ArmEnv` is the base class of the three tasks. A task subclass supplies `task` (TaskSpec),
`_sample_episode(rng)` (puts the start state into `self.data` and returns the goal physics state),
`task_state()` and `scripted_action()`.

Control (one `step`, 10 Hz): normalized action a = (dx, dy, dz, gripper) in [-1, 1]^4.
(dx, dy, dz) * MAX_STEP_M moves the commanded end-effector position (world frame, metres), clamped to the
workspace box; damped-least-squares IK (one Jacobian per control step, `mj_jacSite`) turns it into joint
position targets that also keep the hand pointing straight down. gripper: -1 fully open, +1 closed.
The commanded joint targets live in `data.ctrl`, so they are part of the snapshot.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from importlib import resources  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from envs.task import TaskSpec  # noqa: E402

MAX_STEP_M = 0.025
"""End-effector displacement of one unit of normalized action per control step, metres."""
N_SUBSTEPS = 20
"""Physics steps (0.005 s each) per control step: 0.1 s, i.e. 10 Hz control."""
WORKSPACE_LOW = np.array([0.18, -0.25, 0.02])
WORKSPACE_HIGH = np.array([0.58, 0.25, 0.35])
"""Box (world frame, metres) that clamps the commanded end-effector position."""
MAX_LAG_M = 0.04
"""The command never runs further than this ahead of the actual end effector (no wind-up on contact)."""
GRIPPER_DIM = 3
"""Index of the gripper command in the action (dx, dy, dz, gripper)."""
FINGER_OPEN = 0.04
"""Finger joint travel: each finger's inner face is this far from the centre when fully open."""
HOME_EE = np.array([0.30, 0.0, 0.25])
"""Rest position of the end effector used as IK seed."""
HOME_Q = np.array([0.0, 0.2, 1.9, 1.04])
BLOCK_HALF = 0.025
"""Half the block's side (metres); must match envs/assets/arm.xml."""
ARM_JOINTS = ("yaw", "shoulder", "elbow", "wrist")
DOWN = np.array([0.0, 0.0, -1.0])
_ROT_WEIGHT = 0.2  # metres per radian: weight of the hand-pointing-down row in the IK
_DAMPING = 0.02  # DLS damping lambda
KWARGS = ("image_size", "camera", "view_layout", "render_goal", "camera_offset", "camera_turn_deg",
          "render_mode", "block_rgba", "goal_region", "block_scale_range")
TRAINING_ONLY_KWARGS = ("block_scale_range",)
"""Kwargs that vary the training data (domain randomization), not the task: evaluations that take a
checkpoint's env kwargs from its training data drop them (`task_kwargs`) and test on the task itself."""
BLOCK_SCALE_LIMITS = (0.7, 1.4)
"""block_scale_range must lie within these factors of the nominal block (the push expert's geometry, the
goal pose PUSH_REST_BEHIND_M behind the block centre, holds for them)."""
BOX_SIZE_FIELDS = ("geom_size", "geom_rbound", "geom_aabb")
"""The MjModel geom fields that hold a box's size: half sides, bounding radius, bounding box."""


def box_geom_size(model: mujoco.MjModel, geom: int) -> dict[str, np.ndarray]:
    """Copies of one geom's BOX_SIZE_FIELDS, for `scale_box_geom`."""
    return {name: getattr(model, name)[geom].copy() for name in BOX_SIZE_FIELDS}


def scale_box_geom(model: mujoco.MjModel, geom: int, base: dict[str, np.ndarray], scale: float) -> None:
    """Set box `geom` to `base` (box_geom_size) times `scale`, in collision and rendering alike (the
    bounding box's centre offset, geom_aabb[:3], is kept)."""
    model.geom_size[geom] = base["geom_size"] * scale
    model.geom_rbound[geom] = base["geom_rbound"] * scale
    model.geom_aabb[geom, 3:] = base["geom_aabb"][3:] * scale


GOAL_REGIONS = ("train", "shifted")
"""`train`: goals from the task's own region (what evaluation uses); `shifted`: a generalization test, goals
from a region next to it (reach only, envs/reach.py)."""
CAMERAS = ("workspace", "table", "table_high", "wrist")
AIMED_CAMERAS = {"workspace": "look_target", "table": "table_target", "table_high": "table_target"}
"""Fixed cameras that aim at a target body (camera_offset and camera_turn_deg apply to these)."""
VIEW_SEPARATOR = "+"
"""Joins several CAMERAS into one `camera` kwarg (e.g. "table+workspace"): the views side by side."""
VIEW_LAYOUTS = ("squeeze", "wide")
"""How several views share the image: `squeeze`, one square image_size x image_size, each view squeezed to
image_size / V columns (side_by_side); `wide`, V whole image_size x image_size views, an image_size x
(V * image_size) image."""


def camera_views(camera: str) -> tuple[str, ...]:
    """The cameras a `camera` kwarg names: one of CAMERAS, or distinct ones joined by VIEW_SEPARATOR."""
    views = tuple(camera.split(VIEW_SEPARATOR)) if isinstance(camera, str) else ()
    if not views or any(v not in CAMERAS for v in views) or len(set(views)) != len(views):
        raise ValueError(f"camera must be one of {CAMERAS} or distinct ones joined by {VIEW_SEPARATOR!r} "
                         f"(e.g. 'table+workspace'), got {camera!r}")
    return views


def image_views(env_kwargs: dict) -> int:
    """V: whole square views side by side in the images of an arm env made with env_kwargs (1 unless
    `view_layout="wide"` with several cameras); a store's preprocessing rule records it."""
    camera = env_kwargs.get("camera")
    if env_kwargs.get("view_layout", "squeeze") != "wide" or camera is None:
        return 1
    return len(camera_views(camera))


def side_by_side(frames: list[np.ndarray]) -> np.ndarray:
    """n uint8 [S,S,3] views -> uint8 [S,S,3]: each squeezed to S/n columns (mean of n neighbouring
    columns, so the whole field of view stays), left to right. S must be divisible by n."""
    n = len(frames)
    size = frames[0].shape[0]
    squeezed = [f.reshape(size, size // n, n, 3).mean(axis=2) for f in frames]
    return np.rint(np.concatenate(squeezed, axis=1)).astype(np.uint8)


def snapshot_spec() -> int:
    """mj_getState signature: full physics + controls (commanded joint targets) + solver warm start.

    The controls and warm start make a restored state reproduce the next `step` bit for bit.
    mujoco 3.x and 4.x name the enum members alike; older bindings exposed them at module level.
    """
    enum = getattr(mujoco, "mjtState", mujoco)
    return int(enum.mjSTATE_FULLPHYSICS) | int(enum.mjSTATE_CTRL) | int(enum.mjSTATE_WARMSTART)


def load_model(with_block: bool, camera_offset=(0.0, 0.0, 0.0), camera_turn_deg: float = 0.0,
               camera: str = "workspace", block_rgba=None) -> mujoco.MjModel:
    """Compile envs/assets/arm.xml; drop the block body when the task has none; shift each aimed view of
    `camera` (camera_views) by `camera_offset` (it keeps aiming at its target) and turn it by
    `camera_turn_deg` about the vertical axis through the camera (its target swings around it; positive =
    to the left)."""
    path = resources.files("envs") / "assets" / "arm.xml"
    spec = mujoco.MjSpec.from_file(str(path))
    if not with_block:
        spec.delete(spec.body("block"))
    elif block_rgba is not None:
        spec.material("block").rgba = np.asarray(block_rgba, dtype=float)
    views = camera_views(camera)
    moved = bool(np.any(np.asarray(camera_offset, dtype=float)) or camera_turn_deg)
    if moved and any(v not in AIMED_CAMERAS for v in views):
        raise ValueError(f"camera_offset and camera_turn_deg apply to {sorted(AIMED_CAMERAS)}, "
                         f"not {camera!r}")
    for view in views if moved else ():
        cam = spec.camera(view)
        cam.pos = np.asarray(cam.pos) + np.asarray(camera_offset, dtype=float)
        if camera_turn_deg:
            target = spec.body(AIMED_CAMERAS[view])
            c, s = np.cos(np.radians(camera_turn_deg)), np.sin(np.radians(camera_turn_deg))
            v = np.asarray(target.pos) - np.asarray(cam.pos)
            target.pos = np.asarray(cam.pos) + np.array([c * v[0] - s * v[1], s * v[0] + c * v[1], v[2]])
    return spec.compile()


class ArmEnv(gym.Env):
    """Base class of the arm tasks (gymnasium API plus the members of docs/ARCHITECTURE.md "envs")."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    task: TaskSpec
    has_block: bool = False
    default_camera: str = "workspace"
    """Camera used when the `camera` kwarg is not given (the block tasks use the closer "table" view)."""
    supports_shifted_goals: bool = False
    """The task can sample goals from a region outside its training one (kwarg goal_region="shifted")."""
    supports_block_scale: bool = False
    """The task can draw its block's size per episode (kwarg block_scale_range)."""
    task_kwargs: tuple[str, ...] = ()
    """Keyword arguments of this task's own constructor, accepted by `make_env` beside `KWARGS`."""
    grip_held_from_stage: int | None = None
    """Planning stage (sub-goal index; the final goal is the last stage) from which planners hold the gripper
    command closed (reset info `stage_fixed_dims`): a grasp made is kept, not re-sampled every step."""
    control_hz = 1.0 / (N_SUBSTEPS * 0.005)

    def __init__(
        self,
        image_size: int = 64,
        camera: str | None = None,
        view_layout: str = "squeeze",
        render_goal: bool = True,
        camera_offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
        camera_turn_deg: float = 0.0,
        render_mode: str | None = "rgb_array",
        block_rgba: tuple[float, float, float, float] | None = None,
        goal_region: str = "train",
        block_scale_range: tuple[float, float] | None = None,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
            raise ValueError(f"image_size must be an int (pixels), got {image_size!r}")
        if not 8 <= image_size <= 640:
            raise ValueError(f"image_size must be between 8 and 640 pixels, got {image_size}")
        camera = self.default_camera if camera is None else camera
        views = camera_views(camera)
        if view_layout not in VIEW_LAYOUTS:
            raise ValueError(f"view_layout must be one of {VIEW_LAYOUTS}, got {view_layout!r}")
        if view_layout == "squeeze" and image_size % len(views):
            raise ValueError(f"camera {camera!r} puts {len(views)} views side by side: image_size must be "
                             f"divisible by {len(views)}, got {image_size}")
        if not isinstance(render_goal, bool):
            raise ValueError(f"render_goal must be True or False, got {render_goal!r}")
        offset = np.asarray(camera_offset, dtype=float)
        if offset.shape != (3,) or not np.all(np.isfinite(offset)) or np.abs(offset).max() > 0.1:
            raise ValueError(f"camera_offset must be 3 finite metres, each within 0.1, got {camera_offset!r}")
        if not (isinstance(camera_turn_deg, (int, float)) and abs(camera_turn_deg) <= 10):
            raise ValueError(f"camera_turn_deg must be a number of degrees within 10, got "
                             f"{camera_turn_deg!r}")
        if block_rgba is not None:
            rgba = np.asarray(block_rgba, dtype=float)
            if not self.has_block:
                raise ValueError(f"block_rgba: {self.task.name} has no block")
            if rgba.shape != (4,) or not np.all((rgba >= 0) & (rgba <= 1)):
                raise ValueError(f"block_rgba must be 4 numbers in [0, 1] (r, g, b, a), got {block_rgba!r}")
        if goal_region not in GOAL_REGIONS:
            raise ValueError(f"goal_region must be one of {GOAL_REGIONS}, got {goal_region!r}")
        if goal_region != "train" and not self.supports_shifted_goals:
            raise ValueError(f"goal_region={goal_region!r}: {self.task.name} has only its training goal "
                             "region")
        self.goal_region = goal_region
        self.block_scale_range = self._check_block_scale_range(block_scale_range)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' (or None), got {render_mode!r}")
        self.image_size = int(image_size)
        self.camera = camera
        self.views = views
        """The cameras rendered into each image, left to right (camera_views)."""
        self.view_layout = view_layout
        wide = image_views({"camera": camera, "view_layout": view_layout})
        self.image_shape = (self.image_size, wide * self.image_size, 3)
        """(H, W, 3) of every rendered image."""
        self.render_goal = render_goal
        self.render_mode = "rgb_array"
        self.model = load_model(self.has_block, offset, float(camera_turn_deg), camera, block_rgba)
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)
        self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._site = self.model.site("ee").id
        self._hand = self.model.body("hand").id
        self._qadr = np.array([self.model.joint(n).qposadr[0] for n in ARM_JOINTS])
        self._dadr = np.array([self.model.joint(n).dofadr[0] for n in ARM_JOINTS])
        self._finger_adr = self.model.joint("finger_left").qposadr[0]
        self._qlow = self.model.jnt_range[[self.model.joint(n).id for n in ARM_JOINTS], 0].copy()
        self._qhigh = self.model.jnt_range[[self.model.joint(n).id for n in ARM_JOINTS], 1].copy()
        self._block_geom = self.model.geom("block").id if self.has_block else None
        self._block_nominal = box_geom_size(self.model, self._block_geom) if self.has_block else None
        self.block_half = BLOCK_HALF
        """Half the side of this episode's block (metres): BLOCK_HALF unless block_scale_range draws it."""
        self._spec = snapshot_spec()
        self._state_size = mujoco.mj_stateSize(self.model, self._spec)
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))

        n_proprio = 4 + len(ARM_JOINTS)
        self.observation_space = gym.spaces.Dict(
            image=gym.spaces.Box(0, 255, self.image_shape, np.uint8),
            proprio=gym.spaces.Box(-np.inf, np.inf, (n_proprio,), np.float32),
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_spec = dict(
            low=[-MAX_STEP_M] * 3 + [-1.0],
            high=[MAX_STEP_M] * 3 + [1.0],
            units="m,m,m,gripper(-1 open,+1 closed)",
            frame="world: x forward from the arm base, y left, z up (table top z=0); per 0.1 s control step",
        )
        self.goal_task_state = np.zeros(3)
        self.goal_proprio = np.zeros(n_proprio, np.float32)
        self._goal_state: np.ndarray | None = None
        self._steps = 0

    def _check_block_scale_range(self, scale_range) -> tuple[float, float] | None:
        if scale_range is None:
            return None
        if not self.supports_block_scale:
            raise ValueError(f"block_scale_range: {self.task.name} keeps its block's size "
                             "(ArmPush-v0 draws it)")
        r = np.asarray(scale_range, dtype=float)
        lo, hi = BLOCK_SCALE_LIMITS
        if r.shape != (2,) or not np.all(np.isfinite(r)) or not lo <= r[0] <= r[1] <= hi:
            raise ValueError(f"block_scale_range must be (low, high) with {lo} <= low <= high <= {hi}, got "
                             f"{scale_range!r}")
        return float(r[0]), float(r[1])

    def _draw_block_scale(self, rng: np.random.Generator) -> None:
        """Size this episode's block: nominal x U(block_scale_range) (size, bounding radius and box)."""
        scale = rng.uniform(*self.block_scale_range)
        scale_box_geom(self.model, self._block_geom, self._block_nominal, scale)
        self.block_half = BLOCK_HALF * scale

    # ----- task hooks -------------------------------------------------------------------------------
    def _sample_episode(self, rng: np.random.Generator) -> np.ndarray:
        """Set `self.data` to a start state; return the goal's physics snapshot."""
        raise NotImplementedError

    def task_state(self) -> np.ndarray:
        """What the task measures, float64[3] (metres, world frame)."""
        raise NotImplementedError

    def _subgoal_snapshots(self) -> list[np.ndarray]:
        """Physics snapshots of intermediate goals on the way from the current (start) state to the goal
        (`self.goal_task_state`), in order, without the final goal; [] (the default) for tasks planned in
        one piece. Leaves the start state as it was; must not draw from the episode rng (seeded episodes
        stay the same with or without sub-goals)."""
        return []

    def _stage_fixed_dims(self, n_subgoals: int) -> list[dict[int, float]]:
        """Per planning stage (each sub-goal, then the goal): {action dimension: normalized value} to hold."""
        start = self.grip_held_from_stage
        return [{GRIPPER_DIM: 1.0} if start is not None and k >= start else {} for k in range(n_subgoals + 1)]

    def scripted_action(self) -> np.ndarray:
        """Privileged expert action toward the goal, float32[4] normalized."""
        raise NotImplementedError

    # ----- gymnasium API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        if self.block_scale_range is not None:
            self._draw_block_scale(self.np_random)
        self._goal_state = self._sample_episode(self.np_random)
        self._steps = 0
        start = self.get_snapshot()
        self.set_snapshot(self._goal_state)
        self.goal_task_state = self.task_state().copy()
        self.goal_proprio = self._proprio()
        goal_image = self.render() if self.render_goal else None
        self.set_snapshot(start)
        subgoal_images, subgoal_proprio, subgoal_task_states = [], [], []
        for snap in self._subgoal_snapshots():
            self.set_snapshot(snap)
            subgoal_images.append(self.render() if self.render_goal else None)
            subgoal_proprio.append(self._proprio())
            subgoal_task_states.append(self.task_state().copy())
        if subgoal_images:
            self.set_snapshot(start)
        dist = self.distance()
        info = dict(
            goal_image=goal_image,
            subgoal_images=subgoal_images,
            subgoal_proprio=subgoal_proprio,
            subgoal_task_states=subgoal_task_states,
            stage_fixed_dims=self._stage_fixed_dims(len(subgoal_images)),
            goal_proprio=self.goal_proprio.copy(),
            goal_task_state=self.goal_task_state.copy(),
            distance=dist,
            is_success=self.task.is_success(dist),
        )
        return self._obs(), info

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (4,):
            raise ValueError(f"action must have shape (4,) = (dx, dy, dz, gripper), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        if self._goal_state is None:
            raise RuntimeError("call reset() before step()")
        self.simulate(a)
        self._steps += 1
        dist = self.distance()
        info = dict(distance=dist, is_success=self.task.is_success(dist), task_state=self.task_state().copy())
        truncated = self._steps >= self.task.step_budget
        return self._obs(), -dist, False, truncated, info

    def simulate(self, action: np.ndarray) -> None:
        """Physics only: one control step (IK + N_SUBSTEPS physics steps), no rendering, no step count.

        For planners that use the true simulator (restore a snapshot, simulate candidates, read
        `distance()`); `action` is a normalized float[4], clipped to [-1, 1], not validated here.
        """
        self._apply_action(np.clip(action, -1.0, 1.0))
        for _ in range(N_SUBSTEPS):
            mujoco.mj_step(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)

    def render(self) -> np.ndarray:
        """RGB uint8 image_shape from the chosen camera, or its views side by side (squeezed by side_by_side,
        or whole with view_layout="wide")."""
        frames = []
        for view in self.views:
            self._renderer.update_scene(self.data, camera=view)
            frames.append(self._renderer.render().copy())
        if len(frames) == 1:
            return frames[0]
        return np.concatenate(frames, axis=1) if self.view_layout == "wide" else side_by_side(frames)

    def close(self) -> None:
        self._renderer.close()

    # ----- members of docs/ARCHITECTURE.md ------------------------------------------------------------
    def distance(self) -> float:
        return float(np.linalg.norm(self.task_state() - self.goal_task_state))

    def subgoal_distance(self, proprio: np.ndarray, task_state: np.ndarray) -> float:
        """Metres from a sub-goal (its `subgoal_proprio` and `subgoal_task_states` entries of reset info):
        end-effector distance + gripper-opening difference + task-state distance."""
        ee = np.linalg.norm(self.ee_position() - proprio[:3])
        task = np.linalg.norm(self.task_state() - task_state)
        return float(ee + abs(self.gripper_opening() - proprio[3]) + task)

    def get_snapshot(self) -> np.ndarray:
        """float64[S]: full physics state + commanded targets + warm start (see `snapshot_spec`)."""
        s = np.empty(self._state_size)
        mujoco.mj_getState(self.model, self.data, s, self._spec)
        return s

    def set_snapshot(self, snapshot: np.ndarray) -> None:
        s = np.asarray(snapshot, dtype=np.float64)
        if s.shape != (self._state_size,):
            raise ValueError(
                f"snapshot must have shape ({self._state_size},) for {self.task.name}, got {s.shape}"
            )
        if not np.all(np.isfinite(s)):
            raise ValueError("snapshot contains NaN or inf")
        mujoco.mj_setState(self.model, self.data, s, self._spec)
        mujoco.mj_forward(self.model, self.data)

    def ee_position(self) -> np.ndarray:
        return self.data.site_xpos[self._site].copy()

    def gripper_opening(self) -> float:
        """Distance between the fingers' inner faces, metres."""
        return float(2.0 * self.data.qpos[self._finger_adr])

    # ----- controller -------------------------------------------------------------------------------
    def _jacobian(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        """Position and hand-axis-stacked Jacobian [6,4] over the arm joints, and the pointing error [3]."""
        mujoco.mj_jacSite(self.model, data, self._jacp, self._jacr, self._site)
        axis = data.site_xmat[self._site].reshape(3, 3)[:, 2]
        jac = np.vstack([self._jacp[:, self._dadr], _ROT_WEIGHT * self._jacr[:, self._dadr]])
        return jac, np.cross(axis, DOWN)

    @staticmethod
    def _dls(jac: np.ndarray, err: np.ndarray) -> np.ndarray:
        jjt = jac @ jac.T + _DAMPING**2 * np.eye(jac.shape[0])
        return jac.T @ np.linalg.solve(jjt, err)

    def _apply_action(self, a: np.ndarray) -> None:
        """Normalized action [4] -> data.ctrl (joint targets + finger target); one Jacobian."""
        q = self.data.qpos[self._qadr]
        q_cmd = self.data.ctrl[:4]
        x = self.data.site_xpos[self._site]
        jac, rot_err = self._jacobian(self.data)
        x_cmd = x + jac[:3] @ (q_cmd - q)
        target = np.clip(x_cmd + MAX_STEP_M * a[:3], WORKSPACE_LOW, WORKSPACE_HIGH)
        lead = target - x
        n = np.linalg.norm(lead)
        if n > MAX_LAG_M:
            target = x + lead * (MAX_LAG_M / n)
        dq = self._dls(jac, np.concatenate([target - x, _ROT_WEIGHT * rot_err]))
        self.data.ctrl[:4] = np.clip(q + dq, self._qlow, self._qhigh)
        self.data.ctrl[4] = FINGER_OPEN * (1.0 - a[3]) / 2.0

    def solve_ik(self, target: np.ndarray, q_init: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Kinematic IK (hand down) for an end-effector position; returns (joint angles [4], error metres)."""
        d = self._ik_data
        d.qpos[:] = self.data.qpos
        q = (HOME_Q if q_init is None else np.asarray(q_init)).astype(float).copy()
        err = np.inf
        for _ in range(200):
            d.qpos[self._qadr] = q
            mujoco.mj_kinematics(self.model, d)
            mujoco.mj_comPos(self.model, d)
            jac, rot_err = self._jacobian(d)
            e = np.concatenate([target - d.site_xpos[self._site], _ROT_WEIGHT * rot_err])
            err = float(np.linalg.norm(e))
            if err < 1e-5:
                break
            q = np.clip(q + self._dls(jac, e), self._qlow, self._qhigh)
        return q, float(np.linalg.norm(target - d.site_xpos[self._site]))

    def _place_arm(self, ee: np.ndarray, gripper: float = -1.0, q_init=None) -> None:
        """Put the arm at rest with the end effector at `ee` (kinematic IK); raises if unreachable."""
        q, err = self.solve_ik(ee, q_init)
        if err > 2e-3:
            raise RuntimeError(f"IK could not reach {ee.round(3).tolist()} (error {err * 1e3:.1f} mm)")
        self.data.qpos[self._qadr] = q
        self.data.qvel[:] = 0.0
        self.data.ctrl[:4] = q
        self._set_fingers(FINGER_OPEN * (1.0 - gripper) / 2.0, gripper)

    # ----- the block (tasks with has_block) -------------------------------------------------------------
    def block_position(self) -> np.ndarray:
        """Block centre, float64[3] (metres, world frame)."""
        return self.data.xpos[self.model.body("block").id].copy()

    def holding(self) -> bool:
        """The closed fingers hold the block (block between them, opening stopped by its width)."""
        if not self.has_block:
            return False
        rel = self.block_position() - self.ee_position()
        opening = self.gripper_opening()
        between = np.linalg.norm(rel[:2]) < 0.02 and abs(rel[2]) < 0.025
        return bool(between and 2 * BLOCK_HALF - 0.015 < opening < 2 * BLOCK_HALF + 0.006)

    def _place_block(self, pos: np.ndarray, yaw: float) -> None:
        adr = self.model.joint("block").qposadr[0]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def _set_fingers(self, half_opening: float, command: float) -> None:
        """Finger joints at `half_opening` metres each; gripper command in [-1 open, +1 closed]."""
        self.data.qpos[self._finger_adr] = half_opening
        self.data.qpos[self.model.joint("finger_right").qposadr[0]] = half_opening
        self.data.ctrl[4] = FINGER_OPEN * (1.0 - command) / 2.0

    # ----- observations -------------------------------------------------------------------------------
    def _proprio(self) -> np.ndarray:
        """float32[8]: ee position (3, m), gripper opening (1, m), joint angles (4, rad)."""
        return np.concatenate(
            [self.ee_position(), [self.gripper_opening()], self.data.qpos[self._qadr]]
        ).astype(np.float32)

    def _obs(self) -> dict:
        return dict(image=self.render(), proprio=self._proprio())


def sample_in_box(rng: np.random.Generator, low, high) -> np.ndarray:
    return rng.uniform(np.asarray(low, float), np.asarray(high, float))


def move_toward(ee: np.ndarray, target: np.ndarray, gripper: float) -> np.ndarray:
    """Normalized action float32[4] that moves the end effector toward `target` (one step's worth at most)."""
    return np.append(np.clip((target - ee) / MAX_STEP_M, -1.0, 1.0), gripper).astype(np.float32)
