"""`planner collect`: roll an exploration policy in an env and write episodes to a trajectory store.

Episode i is reset with `episode_seed(seed, i, "collect")` and its policy draws from
`episode_seed(seed, i, "collect-policy")`, so the data is identical whatever `--workers` or `--resume`.
Workers are spawned processes, each with its own env, each writing finished episodes atomically; the
main process only tracks progress, so an interruption at any moment loses at most the episodes in flight.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from planner import __version__
from planner.preprocess import Preprocessing, preprocess_image
from planner.seeding import episode_seed
from planner.store import (
    META_FILE,
    Episode,
    EpisodeExistsError,
    StoreError,
    StoreFullError,
    StoreMeta,
    TrajectoryStore,
)

EnvFactory = Callable[..., Any]  # (env_id, **kwargs) -> gymnasium.Env with the envs/ interface
PolicyFactory = Callable[[str, Any, int], Any]  # (name, env, seed) -> Policy (reset(), __call__(obs))


@dataclass
class CollectConfig:
    """Collect exploration trajectories from an environment into a trajectory store."""

    env: str
    """Task id (ArmReach-v0, ArmPush-v0, ArmPickPlace-v0) or gym:<id> / gym:module:Id."""
    episodes: int
    """Total number of episodes the store should hold (with --resume: collect only the missing ones)."""
    out: Path
    """Store directory (created; must be empty unless --resume)."""
    env_kwargs: str = "{}"
    """Keyword arguments for the env as a JSON object, e.g. '{"image_size": 64}'."""
    steps: int = 50
    """Actions per episode (each episode stores steps+1 observations)."""
    policy: Literal["random", "explore", "explore-gripper", "planner"] = "explore"
    """Exploration policy: `random` (i.i.d. uniform), `explore` (temporally correlated), `explore-gripper`
    (the same, its gripper command drawn anywhere in [-1, 1], also while pushing; our arm only), or
    `planner` (the MPC planner of --checkpoint toward each episode's goal, plus --planner-noise;
    planner.planner_policy)."""
    checkpoint: Path | None = None
    """The checkpoint that plans (--policy planner only; its planner defaults)."""
    planner_noise: float = 0.1
    """--policy planner: std of the Gaussian noise added to each executed action (normalized units)."""
    device: str = "cpu"
    """--policy planner: torch device the planner runs on."""
    workers: int = 1
    """Parallel worker processes, each with its own env (the data does not depend on this)."""
    seed: int = 0
    """Base seed; episode i uses a seed derived from (seed, i) alone."""
    resume: bool = False
    """Continue an existing store: collect exactly the missing episode indices up to --episodes."""
    image_size: int = 64
    """Stored image side length in pixels (the preprocessing rule recorded in meta.json)."""
    compression: Literal["zlib", "none"] = "zlib"
    """Shard compression (zlib: about 11x smaller for a few ms per episode; see docs/STORE.md)."""


class CollectError(ValueError):
    """A collection cannot start or continue; the message says what to fix."""


class CollectInterrupted(Exception):
    """Ctrl-C during collection; complete episodes are kept."""


@dataclass
class CollectReport:
    out: Path
    written: int
    """Episodes written by this run."""
    total: int
    """Complete episodes in the store afterwards."""
    frames: int
    """Observations stored by this run (T+1 per episode)."""
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def default_make_env(env_id: str, **kwargs: Any) -> Any:
    import envs

    return envs.make_env(env_id, **kwargs)


def default_make_policy(name: str, env: Any, seed: int) -> Any:
    from envs.policies import make_policy

    return make_policy(name, env, seed)


def parse_env_kwargs(text: str) -> dict:
    """--env-kwargs JSON -> dict; a clear error for anything but a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CollectError(
            f"--env-kwargs is not valid JSON ({exc.msg} at char {exc.pos}): {text!r}; "
            "pass a JSON object such as '{\"image_size\": 64}'"
        ) from exc
    if not isinstance(value, dict):
        raise CollectError(f"--env-kwargs must be a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value


def make_env_or_explain(make_env: EnvFactory, env_id: str, kwargs: dict) -> Any:
    """Build the env; an unknown id or bad kwargs becomes a CollectError (make_env lists known ids)."""
    try:
        return make_env(env_id, **kwargs)
    except TypeError as exc:
        raise CollectError(f"--env-kwargs {json.dumps(kwargs)} rejected by {env_id}: {exc}") from exc
    except ValueError as exc:
        raise CollectError(f"cannot make env {env_id!r}: {exc}") from exc


def store_meta(env: Any, cfg: CollectConfig, env_kwargs: dict, rule: Preprocessing) -> StoreMeta:
    """Describe a new store from a freshly made env (specs read from env.unwrapped)."""
    u = env.unwrapped
    env.reset(seed=episode_seed(cfg.seed, 0, "collect"))
    spec = dict(u.action_spec)
    low, high = env.action_space.low, env.action_space.high
    if not (np.allclose(low, -1.0) and np.allclose(high, 1.0)):
        raise CollectError(
            f"{cfg.env}: action_space must be normalized to [-1, 1], got low={low}, high={high}"
        )
    action_spec = {
        "dim": int(env.action_space.shape[0]),
        "normalized_low": -1.0,
        "normalized_high": 1.0,
        "low": [float(x) for x in spec["low"]],
        "high": [float(x) for x in spec["high"]],
        "units": str(spec.get("units", "")),
        "frame": str(spec.get("frame", "")),
    }
    proprio_dim = int(env.observation_space["proprio"].shape[0])
    return StoreMeta(
        env_id=cfg.env,
        env_kwargs=env_kwargs,
        preprocessing=rule.to_dict(),
        action_spec=action_spec,
        proprio_spec={"dim": proprio_dim},
        task_state_spec={"dim": int(np.asarray(u.task_state()).shape[0])},
        snapshot_dim=int(np.asarray(u.get_snapshot()).shape[0]),
        control_hz=float(u.control_hz),
        policy=policy_label(cfg),
        seed=cfg.seed,
        steps=cfg.steps,
        compression=cfg.compression,
        created_by=f"latent-planner {__version__} (planner collect)",
    )


def run_episode(
    env: Any,
    make_policy: PolicyFactory,
    policy: str,
    base_seed: int,
    index: int,
    steps: int,
    rule: Preprocessing,
) -> Episode:
    """Roll one seeded episode: T=steps actions (fewer only if the env terminates), T+1 observations."""
    u = env.unwrapped
    seed = episode_seed(base_seed, index, "collect")
    obs, info = env.reset(seed=seed)
    pi = make_policy(policy, env, episode_seed(base_seed, index, "collect-policy"))
    pi.reset(info)
    images = [preprocess_image(obs["image"], rule)]
    proprio = [np.asarray(obs["proprio"], dtype=np.float32)]
    task_state = [np.asarray(u.task_state(), dtype=np.float32)]
    snapshots = [np.asarray(u.get_snapshot(), dtype=np.float64)]
    actions = []
    for _ in range(steps):
        a = np.clip(np.asarray(pi(obs), dtype=np.float32), -1.0, 1.0)
        obs, _, terminated, _, step_info = env.step(a)
        actions.append(a)
        images.append(preprocess_image(obs["image"], rule))
        proprio.append(np.asarray(obs["proprio"], dtype=np.float32))
        task_state.append(np.asarray(step_info["task_state"], dtype=np.float32))
        snapshots.append(np.asarray(u.get_snapshot(), dtype=np.float64))
        if terminated:
            break
    return Episode(
        images=np.stack(images),
        proprio=np.stack(proprio),
        actions=np.stack(actions),
        task_state=np.stack(task_state),
        snapshots=np.stack(snapshots),
        goal_image=preprocess_image(info["goal_image"], rule),
        goal_task_state=np.asarray(u.goal_task_state, dtype=np.float32),
        seed=seed,
        index=index,
    )


def write_once(store: TrajectoryStore, ep: Episode) -> None:
    """Write `ep` unless its shard appeared meanwhile (a worker orphaned by a killed run finishing the
    same episode): episodes are deterministic, so the existing shard holds the same data."""
    try:
        store.write(ep)
    except EpisodeExistsError:
        store.read(ep.index)  # keep it only if it is a valid shard


# ---- worker processes ------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(
    out: str,
    env_id: str,
    env_kwargs: dict,
    policy: str,
    seed: int,
    steps: int,
    make_env: EnvFactory,
    make_policy: PolicyFactory,
) -> None:
    """Runs once in each spawned worker: Ctrl-C is the parent's job; build this worker's own env.

    A failure here is kept and raised by the first task (a Pool whose initializer raises would
    respawn workers forever instead of reporting the error).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        store = TrajectoryStore.open(out)
        _WORKER.update(
            store=store,
            env=make_env_or_explain(make_env, env_id, env_kwargs),
            policy=policy,
            seed=seed,
            steps=steps,
            make_policy=make_policy,
            rule=Preprocessing.from_dict(store.meta.preprocessing),
        )
    except Exception as exc:
        _WORKER["init_error"] = exc


def _worker_episode(index: int) -> tuple[int, int]:
    """Collect and write episode `index` in a worker; returns (index, frames written)."""
    w = _WORKER
    if "init_error" in w:
        raise w["init_error"]
    ep = run_episode(w["env"], w["make_policy"], w["policy"], w["seed"], index, w["steps"], w["rule"])
    write_once(w["store"], ep)
    return index, ep.length + 1


# ---- the command -----------------------------------------------------------------------------------
def check_config(cfg: CollectConfig) -> None:
    for name, low in (("episodes", 1), ("steps", 1), ("workers", 1), ("seed", 0), ("image_size", 8)):
        if getattr(cfg, name) < low:
            raise CollectError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}")
    if (cfg.policy == "planner") != (cfg.checkpoint is not None):
        raise CollectError("--policy planner needs --checkpoint (the model that plans), and --checkpoint "
                           f"goes with --policy planner only (got --policy {cfg.policy})")
    if not (np.isfinite(cfg.planner_noise) and cfg.planner_noise >= 0):
        raise CollectError(f"--planner-noise must be >= 0, got {cfg.planner_noise}")


def policy_label(cfg: CollectConfig) -> str:
    """What the store's meta.json records as its policy (a planner names its checkpoint and noise)."""
    if cfg.policy != "planner":
        return cfg.policy
    from planner import checkpoint
    from planner.planner_policy import PlannerPolicySpec

    try:
        name = checkpoint.checkpoint_name(cfg.checkpoint)
    except (OSError, ValueError) as exc:
        raise CollectError(f"--checkpoint {cfg.checkpoint}: {exc}") from exc
    return PlannerPolicySpec(cfg.checkpoint, cfg.planner_noise, cfg.device).label(name)


def planner_policy_factory(cfg: CollectConfig) -> PolicyFactory:
    """The picklable PolicyFactory of --policy planner."""
    from planner.planner_policy import PlannerPolicySpec, make_planner_policy

    spec = PlannerPolicySpec(Path(cfg.checkpoint), cfg.planner_noise, cfg.device)
    return partial(make_planner_policy, spec)


def open_or_create(cfg: CollectConfig, env_kwargs: dict, make_env: EnvFactory) -> TrajectoryStore:
    """The store to write: a new one, or (with --resume) an existing one checked for compatibility."""
    from envs.arm import image_views

    rule = Preprocessing(size=cfg.image_size, views=image_views(env_kwargs))
    out = Path(cfg.out)
    if (out / META_FILE).exists():
        store = TrajectoryStore.open(out)
        if not cfg.resume:
            raise CollectError(
                f"{out} already holds a store with {len(store)} episode(s); pass --resume to continue it "
                "(collects only the missing indices) or choose another --out"
            )
        requested = {
            "env_id": cfg.env,
            "env_kwargs": env_kwargs,
            "policy": policy_label(cfg),
            "seed": cfg.seed,
            "steps": cfg.steps,
            "preprocessing": rule.to_dict(),
        }
        problems = store.meta.incompatibilities(requested)
        if problems:
            raise CollectError(
                f"cannot --resume {out}: the request differs from {out / META_FILE}: "
                + "; ".join(problems)
                + ". Use the store's settings or another --out"
            )
        return store
    env = make_env_or_explain(make_env, cfg.env, env_kwargs)
    try:
        meta = store_meta(env, cfg, env_kwargs, rule)
    finally:
        env.close()
    return TrajectoryStore.create(out, meta)


def collect(
    cfg: CollectConfig,
    *,
    make_env: EnvFactory = default_make_env,
    make_policy: PolicyFactory | None = None,
    progress: bool = True,
) -> CollectReport:
    """Collect the missing episodes of `cfg.out` up to `cfg.episodes`. Factories must be picklable
    (module-level functions) when workers > 1; make_policy None: envs.policies, or the planner for
    --policy planner."""
    from tqdm import tqdm

    check_config(cfg)
    if make_policy is None:
        make_policy = planner_policy_factory(cfg) if cfg.policy == "planner" else default_make_policy
    env_kwargs = parse_env_kwargs(cfg.env_kwargs)
    store = open_or_create(cfg, env_kwargs, make_env)
    with store.writer_lock():
        store.clean_temp_files()
        todo = store.missing(cfg.episodes)
        written = frames = 0
        start = time.perf_counter()
        bar = tqdm(total=len(todo), desc=f"collect {cfg.env}", unit="ep", disable=not progress or not todo)

        def done(n_frames: int) -> None:
            nonlocal written, frames
            written, frames = written + 1, frames + n_frames
            bar.update(1)
            bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - start):.0f}")

        try:
            if todo and cfg.workers == 1:
                env = make_env_or_explain(make_env, cfg.env, env_kwargs)
                rule = Preprocessing.from_dict(store.meta.preprocessing)
                try:
                    for i in todo:
                        ep = run_episode(env, make_policy, cfg.policy, cfg.seed, i, cfg.steps, rule)
                        write_once(store, ep)
                        done(ep.length + 1)
                finally:
                    env.close()
            elif todo:
                workers = min(cfg.workers, len(todo))
                init_args = (
                    str(store.path),
                    cfg.env,
                    env_kwargs,
                    cfg.policy,
                    cfg.seed,
                    cfg.steps,
                    make_env,
                    make_policy,
                )
                pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=init_args)
                try:
                    for _, n_frames in pool.imap_unordered(_worker_episode, todo):
                        done(n_frames)
                    pool.close()
                except BaseException:
                    pool.terminate()
                    raise
                finally:
                    pool.join()
        except KeyboardInterrupt as exc:
            raise CollectInterrupted(
                f"interrupted: {store.path} holds {len(store)} complete episode(s) of {cfg.episodes}; "
                "rerun the same command with --resume to collect the rest"
            ) from exc
        finally:
            bar.close()
        seconds = time.perf_counter() - start
    return CollectReport(out=store.path, written=written, total=len(store), frames=frames, seconds=seconds)


def task_motion(store: TrajectoryStore, moved_m: float = 0.002, lifted_m: float = 0.02) -> dict:
    """How much the task state moves in the store's episodes (for block tasks: is there contact at all?).

    moved_step_fraction: steps in which the task state moved more than `moved_m`; lifted_episode_fraction:
    episodes in which its height (last coordinate) rose more than `lifted_m` above the start.
    """
    moved = steps = lifted = 0
    for ep in store.iter_episodes():
        s = np.asarray(ep.task_state, dtype=np.float64)
        moved += int((np.linalg.norm(np.diff(s, axis=0), axis=-1) > moved_m).sum())
        steps += len(s) - 1
        lifted += int(s[:, -1].max() - s[0, -1] > lifted_m)
    n = max(len(store), 1)
    return {"moved_step_fraction": moved / max(steps, 1), "lifted_episode_fraction": lifted / n}


def run(
    cfg: CollectConfig,
    *,
    make_env: EnvFactory = default_make_env,
    make_policy: PolicyFactory | None = None,
) -> None:
    """CLI entry: a user error is one clear message (exit 1); Ctrl-C exits 130 keeping complete episodes."""
    try:
        report = collect(cfg, make_env=make_env, make_policy=make_policy)
    except (CollectError, StoreError) as exc:
        raise SystemExit(f"planner collect: error: {exc}") from None
    except StoreFullError as exc:
        kept = len(TrajectoryStore.open(cfg.out))
        raise SystemExit(
            f"planner collect: error: {exc.strerror}\n(after stopping all workers: {kept} complete episodes)"
        ) from None
    except CollectInterrupted as exc:
        print(f"planner collect: {exc}", flush=True)
        raise SystemExit(130) from None
    if report.written == 0:
        print(f"nothing to collect: {report.out} holds {report.total} episodes (asked for {cfg.episodes})")
        return
    print(
        f"collected {report.written} episode(s) in {report.seconds:.1f} s ({report.frames} frames, "
        f"{report.frames_per_s:.0f} frames/s); {report.out} now holds {report.total} episode(s)"
    )
    motion = task_motion(TrajectoryStore.open(report.out))
    print(f"task state (block position for push/pick, end effector for reach) moved > 2 mm in "
          f"{motion['moved_step_fraction']:.1%} of steps; rose > 2 cm in "
          f"{motion['lifted_episode_fraction']:.1%} of episodes")
