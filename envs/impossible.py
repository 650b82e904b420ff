"""Matched possible / impossible clips of the block tasks, for physical-surprise detection (docs/SURPRISE.md).

From a seeded start the arm pushes the block (the task's scripted expert with seeded noise on the motion,
like the `explore` policy's scripted segments), physics only, until the block has moved. A window of
`steps` control steps is cut around a step `v` at which the arm is really pushing the block, and rendered
twice from the same snapshot with the same actions:

- the POSSIBLE clip: plain physics;
- one IMPOSSIBLE clip per violation kind: plain physics up to and including the action of step v, then the
  violation is applied to the MuJoCo state/model before frame v+1 is rendered, and physics goes on from
  the violated state with the same actions:
  `vanish` (block invisible, rgba alpha 0, and intangible), `teleport` (block jumps 8-15 cm across the
  table), `recolor` (block changes colour), `resize` (block grows 1.5-1.8x, resting on the table),
  `fall_through` (block loses its contacts and sinks into the table, then falls through it).

Frame t+1 is the result of actions[t]; so frames[:v+1] of an impossible clip equal the possible clip's,
and frames[v+1] is the first violated frame. Every model change is undone when the clip is rendered.
Imports no torch.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import mujoco
import numpy as np

from envs.arm import ArmEnv, box_geom_size, scale_box_geom

KINDS: tuple[str, ...] = ("vanish", "teleport", "recolor", "resize", "fall_through")
"""Violation kinds, in the order reports list them."""
RECOLOR_PALETTE = np.array(
    [[0.10, 0.75, 0.15, 1.0], [0.95, 0.90, 0.10, 1.0], [0.60, 0.15, 0.85, 1.0]], dtype=np.float32
)
"""New block colours (green, yellow, purple): far from the red block and from the arm's colours."""
TELEPORT_LOW = np.array([0.20, -0.25])
TELEPORT_HIGH = np.array([0.56, 0.25])
"""Where a teleported block may land (xy, metres): on the table, in the workspace camera's view."""
FALL_SINK_M = 0.035
"""fall_through: how far the block's centre drops at the violation step (a resting block ends up 60% inside
the table), after which it falls with no contacts."""


@dataclass(frozen=True)
class ClipConfig:
    """How clips are cut and violated."""

    steps: int = 16
    """T: control steps per clip (T+1 frames)."""
    violation_min: int = 6
    """Earliest violation step v within the clip (>= the model's history length leaves clean context)."""
    violation_max: int = 10
    """Latest violation step v within the clip."""
    search_steps: int = 100
    """Control steps of pushing simulated (physics only) to find a step where the arm moves the block."""
    min_block_motion_m: float = 0.004
    """At step v the arm must move the block at least this far (xy) in the possible clip."""
    action_noise: float = 0.2
    """Std of the seeded Gaussian noise added to the expert's (dx, dy, dz)."""
    teleport_min_m: float = 0.08
    teleport_max_m: float = 0.15
    """Teleport jump length range (xy, metres)."""
    resize_min: float = 1.5
    resize_max: float = 1.8
    """Resize scale range (the block grows)."""
    min_visible_fraction: float = 0.002
    """The block must cover at least this fraction of the image (not hidden behind the arm) in frames v
    and v+1 of the possible clip, and after a teleport (8 pixels at 64x64)."""
    max_attempts: int = 20
    """Starts tried (seed, attempt) before giving up when the block never moves in view."""

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2, got {self.steps}")
        if not 1 <= self.violation_min <= self.violation_max <= self.steps - 1:
            raise ValueError(
                f"need 1 <= violation_min <= violation_max <= steps - 1, got {self.violation_min}, "
                f"{self.violation_max}, steps {self.steps}"
            )
        if self.search_steps < self.steps:
            raise ValueError(f"search_steps ({self.search_steps}) must be >= steps ({self.steps})")
        if not 0 < self.teleport_min_m <= self.teleport_max_m:
            raise ValueError(f"need 0 < teleport_min_m <= teleport_max_m, got {self.teleport_min_m}, "
                             f"{self.teleport_max_m}")
        if not 1.0 < self.resize_min <= self.resize_max:
            raise ValueError(f"need 1 < resize_min <= resize_max, got {self.resize_min}, {self.resize_max}")


@dataclass
class Clip:
    """One rendered clip and the block's true state in every frame.

    frames uint8 [T+1,H,W,3]; actions float32 [T,A] (normalized; frames[t+1] follows actions[t]);
    block_position float64 [T+1,3] (metres); block_rgba float32 [T+1,4] (colour the renderer used);
    block_size float64 [T+1,3] (box half-sizes); block_contacts bool [T+1] (block collides with anything).
    kind is "possible" or a violation kind; violation_step v (None when possible): frames[v+1] is the
    first violated frame.
    """

    frames: np.ndarray
    actions: np.ndarray
    block_position: np.ndarray
    block_rgba: np.ndarray
    block_size: np.ndarray
    block_contacts: np.ndarray
    kind: str
    violation_step: int | None
    seed: int
    start_step: int
    """Control step of the pushing run at which the clip starts."""


@dataclass
class ClipSet:
    """The possible clip and one impossible clip per requested kind, all from the same start and actions."""

    possible: Clip
    impossible: dict[str, Clip] = field(default_factory=dict)


def _block_env(env) -> ArmEnv:
    base = getattr(env, "unwrapped", env)
    if not isinstance(base, ArmEnv) or not base.has_block:
        raise ValueError(
            f"impossible clips need one of our block tasks (ArmPush-v0, ArmPickPlace-v0), got "
            f"{type(base).__name__}"
        )
    return base


def _check_kinds(kinds) -> tuple[str, ...]:
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown or no violation kinds {bad}; choose from {', '.join(KINDS)}")
    return kinds


class _Block:
    """Handles on the block's body, joint and geom in one env's model/data."""

    def __init__(self, env: ArmEnv) -> None:
        self.env = env
        self.model, self.data = env.model, env.data
        self.geom = self.model.geom("block").id
        joint = self.model.joint("block")
        self.qadr = int(joint.qposadr[0])
        self.dadr = int(joint.dofadr[0])

    def rgba(self) -> np.ndarray:
        m, g = self.model, self.geom
        mat = m.geom_matid[g]
        return (m.mat_rgba[mat] if mat >= 0 else m.geom_rgba[g]).astype(np.float32).copy()

    def set_rgba(self, rgba) -> None:
        self.model.geom_matid[self.geom] = -1
        self.model.geom_rgba[self.geom] = rgba

    def contacts(self) -> bool:
        g = self.geom
        return bool(self.model.geom_contype[g] or self.model.geom_conaffinity[g])

    def disable_contacts(self) -> None:
        self.model.geom_contype[self.geom] = 0
        self.model.geom_conaffinity[self.geom] = 0

    def scale(self, s: float) -> None:
        """Grow the box by `s` (size, bounding radius and box) and lift it so it rests on the table."""
        m, g = self.model, self.geom
        half_z = m.geom_size[g, 2]
        scale_box_geom(m, g, box_geom_size(m, g), s)
        self.data.qpos[self.qadr + 2] += (s - 1.0) * half_z
        self.still()

    def move(self, xyz) -> None:
        self.data.qpos[self.qadr : self.qadr + 3] = xyz
        self.still()

    def still(self) -> None:
        self.data.qvel[self.dadr : self.dadr + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    @contextmanager
    def model_restored(self):
        """Undo every change this class can make to the model's block geom on exit."""
        m, g = self.model, self.geom
        saved = dict(
            geom_matid=m.geom_matid[g].copy(), geom_rgba=m.geom_rgba[g].copy(),
            geom_size=m.geom_size[g].copy(), geom_rbound=m.geom_rbound[g].copy(),
            geom_aabb=m.geom_aabb[g].copy(), geom_contype=m.geom_contype[g].copy(),
            geom_conaffinity=m.geom_conaffinity[g].copy(),
        )
        try:
            yield
        finally:
            for name, value in saved.items():
                getattr(m, name)[g] = value


def _push_run(env: ArmEnv, seed: int, cfg: ClipConfig):
    """Reset with `seed`, push with the noisy expert (physics only).

    Returns snapshots [N+1,S], actions float32 [N,A], block positions [N+1,3].
    """
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    snaps, actions, block = [env.get_snapshot()], [], [env.block_position()]
    for _ in range(cfg.search_steps):
        a = env.scripted_action().astype(np.float64)
        a[:3] += rng.normal(0.0, cfg.action_noise, 3)
        a = np.clip(a, -1.0, 1.0).astype(np.float32)
        env.simulate(a)
        actions.append(a)
        snaps.append(env.get_snapshot())
        block.append(env.block_position())
    return np.stack(snaps), np.stack(actions), np.stack(block)


class _BlockCamera:
    """Counts the block's pixels in the env's camera (segmentation render of the current state; summed
    over the views of a side-by-side camera, each rendered whole)."""

    def __init__(self, env: ArmEnv, geom: int, min_fraction: float) -> None:
        self.env, self.geom = env, geom
        self.renderer = mujoco.Renderer(env.model, env.image_size, env.image_size)
        self.renderer.enable_segmentation_rendering()
        self.min_pixels = max(1, int(np.ceil(min_fraction * env.image_size**2)))

    def visible(self) -> bool:
        pixels = 0
        for view in self.env.views:
            self.renderer.update_scene(self.env.data, camera=view)
            seg = self.renderer.render()
            pixels += int(((seg[..., 0] == self.geom) & (seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM))).sum())
        return pixels >= self.min_pixels

    def close(self) -> None:
        self.renderer.close()


def _choose_window(env: ArmEnv, snaps: np.ndarray, block: np.ndarray, camera: _BlockCamera,
                   rng: np.random.Generator, cfg: ClipConfig) -> tuple[int, int] | None:
    """(clip start c, violation step v): during step u = c + v the block is pushed >= min motion and it is
    in view before and after; None when no step qualifies."""
    n = len(block) - 1
    moved = np.linalg.norm(block[1:, :2] - block[:-1, :2], axis=1) >= cfg.min_block_motion_m
    options = [
        (u - v, v)
        for v in range(cfg.violation_min, cfg.violation_max + 1)
        for u in np.flatnonzero(moved)
        if u - v >= 0 and u - v + cfg.steps <= n
    ]
    for j in rng.permutation(len(options)):
        c, v = options[j]
        env.set_snapshot(snaps[c + v])
        if camera.visible():
            env.set_snapshot(snaps[c + v + 1])
            if camera.visible():
                return int(c), int(v)
    return None


def _teleport(env: ArmEnv, blk: _Block, camera: _BlockCamera, rng: np.random.Generator,
              cfg: ClipConfig) -> None:
    """Move the block 8-15 cm (cfg) across the table to a spot clear of the gripper and in view."""
    pos = env.block_position()
    ee = env.ee_position()[:2]
    fallback = None
    for _ in range(256):
        dist = rng.uniform(cfg.teleport_min_m, cfg.teleport_max_m)
        ang = rng.uniform(0.0, 2.0 * np.pi)
        xy = pos[:2] + dist * np.array([np.cos(ang), np.sin(ang)])
        if np.any(xy < TELEPORT_LOW) or np.any(xy > TELEPORT_HIGH) or np.linalg.norm(xy - ee) < 0.07:
            continue
        blk.move([xy[0], xy[1], pos[2]])
        if camera.visible():
            return
        fallback = xy
    if fallback is None:
        raise RuntimeError(f"no teleport target on the table {cfg.teleport_min_m}-{cfg.teleport_max_m} m "
                           f"from the block at {pos.round(3).tolist()} and clear of the gripper")
    blk.move([fallback[0], fallback[1], pos[2]])  # clear of the gripper but hidden: still a teleport


def _violate(kind: str, env: ArmEnv, blk: _Block, camera: _BlockCamera, rng: np.random.Generator,
             cfg: ClipConfig) -> None:
    """Apply violation `kind` to the current state/model (inside `blk.model_restored()`)."""
    if kind == "vanish":
        rgba = blk.rgba()
        rgba[3] = 0.0
        blk.set_rgba(rgba)
        blk.disable_contacts()
        mujoco.mj_forward(blk.model, blk.data)
    elif kind == "teleport":
        _teleport(env, blk, camera, rng, cfg)
    elif kind == "recolor":
        blk.set_rgba(RECOLOR_PALETTE[int(rng.integers(len(RECOLOR_PALETTE)))])
        mujoco.mj_forward(blk.model, blk.data)
    elif kind == "resize":
        blk.scale(float(rng.uniform(cfg.resize_min, cfg.resize_max)))
    elif kind == "fall_through":
        blk.disable_contacts()
        xyz = env.block_position()
        blk.move([xyz[0], xyz[1], xyz[2] - FALL_SINK_M])
    else:
        raise ValueError(f"unknown violation kind {kind!r}; choose from {', '.join(KINDS)}")


def _render_clip(env: ArmEnv, camera: _BlockCamera, snapshot: np.ndarray, actions: np.ndarray, kind: str,
                 v: int | None, rng: np.random.Generator, cfg: ClipConfig, seed: int, start: int) -> Clip:
    blk = _Block(env)
    with blk.model_restored():
        env.set_snapshot(snapshot)
        frames, pos, rgba, size, contacts = [], [], [], [], []

        def record() -> None:
            frames.append(env.render())
            pos.append(env.block_position())
            rgba.append(blk.rgba())
            size.append(blk.model.geom_size[blk.geom].copy())
            contacts.append(blk.contacts())

        record()
        for t, a in enumerate(actions):
            env.simulate(a)
            if t == v:
                _violate(kind, env, blk, camera, rng, cfg)
            record()
    return Clip(
        frames=np.stack(frames), actions=actions.copy(), block_position=np.stack(pos),
        block_rgba=np.stack(rgba), block_size=np.stack(size), block_contacts=np.array(contacts),
        kind=kind, violation_step=v, seed=seed, start_step=start,
    )


def make_clips(env, seed: int, kinds=KINDS, cfg: ClipConfig | None = None) -> ClipSet:
    """The possible clip and one impossible clip per kind, all from the start seeded by `seed`.

    env: ArmPush-v0 / ArmPickPlace-v0 (wrapped or not; `render_goal=False` saves a render). Deterministic
    in (seed, kinds, cfg). Raises RuntimeError when the block never moves in cfg.max_attempts starts.
    """
    env = _block_env(env)
    kinds = _check_kinds(kinds)
    cfg = cfg or ClipConfig()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    camera = _BlockCamera(env, env.model.geom("block").id, cfg.min_visible_fraction)
    try:
        for attempt in range(cfg.max_attempts):
            run_seed = int(np.random.SeedSequence([int(seed), attempt]).generate_state(1)[0])
            snaps, actions, block = _push_run(env, run_seed, cfg)
            rng = np.random.default_rng([int(seed), attempt, 1])
            window = _choose_window(env, snaps, block, camera, rng, cfg)
            if window is not None:
                break
        else:
            raise RuntimeError(f"the block never moved {cfg.min_block_motion_m} m in one step in view within "
                               f"{cfg.search_steps} steps in {cfg.max_attempts} starts from seed {seed}")
        c, v = window
        acts = actions[c : c + cfg.steps]
        possible = _render_clip(env, camera, snaps[c], acts, "possible", None, rng, cfg, int(seed), c)
        impossible = {}
        for kind in kinds:
            kind_rng = np.random.default_rng([int(seed), attempt, 2, KINDS.index(kind)])
            impossible[kind] = _render_clip(env, camera, snaps[c], acts, kind, v, kind_rng, cfg, int(seed), c)
    finally:
        camera.close()
    return ClipSet(possible=possible, impossible=impossible)


def mean_pixel_change(frames: np.ndarray) -> np.ndarray:
    """Mean absolute frame difference per step: uint8 [T+1,H,W,3] -> float64 [T] (0-255 intensity units)."""
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or len(f) < 2:
        raise ValueError(f"frames must be [T+1,H,W,3] with T >= 1, got shape {tuple(f.shape)}")
    f = f.astype(np.int16)
    return np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3)).astype(np.float64)
