"""`planner collect`: seeds, determinism across workers, resume, kill -9 and Ctrl-C recovery, errors.

Most tests use FakeReachEnv (a numpy point mass drawn into an image, same interface as envs/) so they
take seconds; `test_real_env_*` run the real MuJoCo ArmReach-v0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from planner.collect import CollectConfig, CollectError, collect, run
from planner.seeding import STREAMS, episode_seed
from planner.store import StoreError, TrajectoryStore

ROOT = Path(__file__).resolve().parents[1]


class FakeReachEnv(gym.Env):
    """A point in the unit square moving toward nothing in particular; renders a 24x24 image."""

    def __init__(self, image_size: int = 24, step_delay: float = 0.0):
        self.size, self.step_delay = image_size, step_delay
        self.observation_space = gym.spaces.Dict(
            image=gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            proprio=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        )
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.action_spec = {"low": [-0.05, -0.05], "high": [0.05, 0.05], "units": "m", "frame": "table"}
        self.control_hz = 10.0
        self.pos = np.zeros(2)
        self.goal_task_state = np.zeros(2, dtype=np.float32)
        self.t = 0

    def _image(self, pos) -> np.ndarray:
        img = np.zeros((self.size, self.size, 3), np.uint8)
        r, c = ((np.asarray(pos) + 1) / 2 * (self.size - 1)).round().astype(int)
        img[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = (255, 80, 20)
        return img

    def _obs(self) -> dict:
        return {"image": self._image(self.pos), "proprio": np.array([*self.pos, self.t], np.float32)}

    def task_state(self) -> np.ndarray:
        return self.pos.astype(np.float32)

    def get_snapshot(self) -> np.ndarray:
        return np.array([*self.pos, self.t], dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.goal_task_state = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.t = 0
        return self._obs(), {"goal_image": self._image(self.goal_task_state), "distance": 1.0}

    def step(self, action):
        time.sleep(self.step_delay)
        self.pos = np.clip(self.pos + 0.1 * np.asarray(action, dtype=np.float64), -1, 1)
        self.t += 1
        info = {"task_state": self.task_state(), "distance": 1.0, "is_success": False}
        return self._obs(), 0.0, False, False, info


class FakePolicy:
    def __init__(self, seed: int):
        self.seed = seed

    def reset(self, info=None) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, obs) -> np.ndarray:
        return self.rng.uniform(-1, 1, 2).astype(np.float32)


def fake_make_env(env_id: str, **kwargs):
    if env_id != "FakeReach-v0":
        raise ValueError(f"unknown env id {env_id!r}; known ids: FakeReach-v0")
    return FakeReachEnv(**kwargs)


def fake_make_policy(name: str, env, seed: int):
    return FakePolicy(seed)


def fake_cfg(out, **kw) -> CollectConfig:
    base = dict(env="FakeReach-v0", episodes=6, out=out, steps=5, image_size=16, policy="random")
    return CollectConfig(**{**base, **kw})


def fake_collect(cfg: CollectConfig):
    return collect(cfg, make_env=fake_make_env, make_policy=fake_make_policy, progress=False)


def episodes(path) -> list:
    return list(TrajectoryStore.open(path).iter_episodes())


def assert_same_data(a, b) -> None:
    assert [e.index for e in a] == [e.index for e in b]
    for x, y in zip(a, b, strict=True):
        assert x.seed == y.seed
        for name in (
            "images",
            "proprio",
            "actions",
            "task_state",
            "snapshots",
            "goal_image",
            "goal_task_state",
        ):
            assert np.array_equal(getattr(x, name), getattr(y, name)), (x.index, name)


# ---- seeds -------------------------------------------------------------------------------------------
def test_episode_seeds_are_deterministic_and_distinct():
    seeds = {(s, b, i): episode_seed(b, i, s) for s in STREAMS for b in (0, 1, 12345) for i in range(200)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**63 for v in seeds.values())
    assert episode_seed(0, 7, "collect") == episode_seed(0, 7, "collect")
    assert episode_seed(0, 7, "collect") != episode_seed(0, 7, "eval")


@pytest.mark.parametrize("args", [(-1, 0, "collect"), (0, -2, "collect"), (0, 0, "train"), (1.5, 0, "eval")])
def test_episode_seed_rejects_bad_input(args):
    with pytest.raises(ValueError, match="base seed|episode index|unknown seed stream"):
        episode_seed(*args)


# ---- collection with the fake env --------------------------------------------------------------------
def test_collect_writes_meta_and_episodes(tmp_path):
    report = fake_collect(fake_cfg(tmp_path / "s", env_kwargs='{"image_size": 24}'))
    assert (report.written, report.total, report.frames) == (6, 6, 36)
    store = TrajectoryStore.open(tmp_path / "s")
    m = store.meta
    assert (m.env_id, m.env_kwargs, m.policy, m.seed, m.steps) == (
        "FakeReach-v0",
        {"image_size": 24},
        "random",
        0,
        5,
    )
    assert m.preprocessing == {"size": 16, "crop": "center"}
    assert (
        m.action_spec["dim"] == 2 and m.action_spec["high"] == [0.05, 0.05] and m.action_spec["units"] == "m"
    )
    assert (m.proprio_spec["dim"], m.task_state_spec["dim"], m.snapshot_dim, m.control_hz) == (3, 2, 3, 10.0)
    ep = store.read(4)
    assert (
        ep.images.shape == (6, 16, 16, 3)
        and ep.actions.shape == (5, 2)
        and ep.goal_image.shape == (16, 16, 3)
    )
    assert ep.seed == episode_seed(0, 4, "collect")
    # observations follow the actions: the stored snapshot is the state after each stored action
    assert np.allclose(ep.snapshots[1:, :2], np.clip(ep.snapshots[:-1, :2] + 0.1 * ep.actions, -1, 1))
    assert np.array_equal(ep.task_state, ep.snapshots[:, :2].astype(np.float32))
    assert store.validate() == 6


def test_same_data_whatever_workers_and_resume(tmp_path):
    fake_collect(fake_cfg(tmp_path / "w1"))
    fake_collect(fake_cfg(tmp_path / "w2", workers=2))
    fake_collect(fake_cfg(tmp_path / "r", episodes=2))
    report = fake_collect(fake_cfg(tmp_path / "r", resume=True, workers=3))
    assert (report.written, report.total) == (4, 6)
    ref = episodes(tmp_path / "w1")
    assert_same_data(ref, episodes(tmp_path / "w2"))
    assert_same_data(ref, episodes(tmp_path / "r"))
    assert not np.array_equal(ref[0].actions, ref[1].actions)
    other_seed = tmp_path / "seed1"
    fake_collect(fake_cfg(other_seed, episodes=1, seed=1))
    assert not np.array_equal(ref[0].images, episodes(other_seed)[0].images)


def test_existing_store_needs_resume_and_resume_must_match(tmp_path):
    fake_collect(fake_cfg(tmp_path, episodes=2))
    with pytest.raises(CollectError, match="already holds a store with 2 episode.*pass --resume"):
        fake_collect(fake_cfg(tmp_path, episodes=3))
    with pytest.raises(
        CollectError, match=r"--resume.*seed: store has 0, requested 2; steps: store has 5, requested 6"
    ):
        fake_collect(fake_cfg(tmp_path, episodes=3, resume=True, steps=6, seed=2))
    report = fake_collect(fake_cfg(tmp_path, episodes=2, resume=True))
    assert (report.written, report.total) == (0, 2)


def test_user_errors_are_clear(tmp_path, capsys):
    with pytest.raises(CollectError, match="--env-kwargs is not valid JSON.*JSON object"):
        fake_collect(fake_cfg(tmp_path, env_kwargs="{image_size: 3}"))
    with pytest.raises(CollectError, match="--env-kwargs must be a JSON object"):
        fake_collect(fake_cfg(tmp_path, env_kwargs="[1, 2]"))
    with pytest.raises(CollectError, match="cannot make env 'Nope-v0'.*known ids: FakeReach-v0"):
        fake_collect(fake_cfg(tmp_path, env="Nope-v0"))
    with pytest.raises(CollectError, match="rejected by FakeReach-v0"):
        fake_collect(fake_cfg(tmp_path, env_kwargs='{"colour": 1}'))
    with pytest.raises(CollectError, match="--episodes must be >= 1"):
        fake_collect(fake_cfg(tmp_path, episodes=0))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="is not empty"):
        fake_collect(fake_cfg(tmp_path))
    with pytest.raises(SystemExit, match="planner collect: error: --workers must be >= 1"):
        run(fake_cfg(tmp_path, workers=0))


# ---- interruption: real subprocesses -----------------------------------------------------------------
SLOW = '{"step_delay": 0.02}'  # 0.1 s per fake episode, so a kill lands mid-collection
RUNNER = """
import signal
import sys
# a terminal's foreground process: a shell that starts pytest in the background (`make test &`) makes the
# runner inherit SIGINT ignored, and Python then installs no KeyboardInterrupt handler
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from planner.collect import run
from tests.test_collect import SLOW, fake_cfg, fake_make_env, fake_make_policy
cfg = fake_cfg(Path(sys.argv[1]), episodes=int(sys.argv[2]), workers=int(sys.argv[3]),
               env_kwargs=SLOW)
run(cfg, make_env=fake_make_env, make_policy=fake_make_policy)
"""


def start_runner(out: Path, episodes: int, workers: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(out), str(episodes), str(workers)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_shards(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.is_dir() and len(list(out.glob("episode_*.npz"))) >= n:
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    raise AssertionError(f"no {n} shards in {out} after {timeout} s")


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path, workers):
    out = tmp_path / "killed"
    proc = start_runner(out, 30, workers)  # 1.5-3 s of collecting: a kill sent late still lands mid-run
    wait_for_shards(out, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: workers die mid-episode too
    proc.wait()
    kept = TrajectoryStore.open(out).validate()  # every visible episode is complete
    assert 3 <= kept < 30
    report = fake_collect(fake_cfg(out, episodes=30, resume=True, workers=workers, env_kwargs=SLOW))
    assert report.written == 30 - kept and report.total == 30
    assert list(out.glob(".*.tmp")) == []
    fake_collect(fake_cfg(tmp_path / "clean", episodes=30, env_kwargs=SLOW))
    assert_same_data(episodes(tmp_path / "clean"), episodes(out))


def test_ctrl_c_stops_workers_cleanly(tmp_path):
    out = tmp_path / "interrupted"
    proc = start_runner(out, 400, 2)  # 20 s of collecting: a Ctrl-C sent late by a loaded host still lands
    wait_for_shards(out, 2, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted" in output and "--resume" in output and "Traceback" not in output
    kept = TrajectoryStore.open(out).validate()
    assert 2 <= kept < 400
    fake_collect(fake_cfg(out, episodes=kept + 2, resume=True, env_kwargs=SLOW))
    assert TrajectoryStore.open(out).validate() == kept + 2


def test_full_disk_during_collect_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import errno

    fake_collect(fake_cfg(tmp_path, episodes=2))
    real_savez = np.savez_compressed
    calls = []

    def fills_on_second(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez_compressed", fills_on_second)
    with pytest.raises(SystemExit) as err:
        run(fake_cfg(tmp_path, episodes=5, resume=True), make_env=fake_make_env, make_policy=fake_make_policy)
    msg = str(err.value.code)
    assert "disk full while writing" in msg and "episode_000003.npz" in msg and "--resume" in msg
    assert "3 complete episodes" in msg
    assert TrajectoryStore.open(tmp_path).validate() == 3


# ---- the real env --------------------------------------------------------------------------------------
def real_env_available() -> bool:
    try:
        from envs import known_env_ids, policies  # noqa: F401
    except ImportError:
        return False
    return "ArmReach-v0" in known_env_ids()


needs_envs = pytest.mark.skipif(
    not real_env_available(), reason="envs.make_env / envs.policies not there yet"
)


@needs_envs
def test_real_env_cli_collect_and_resume(tmp_path):
    from planner.cli import main

    out = tmp_path / "reach"
    args = ["collect", "--env", "ArmReach-v0", "--steps", "3", "--seed", "5", "--out", str(out)]
    main([*args, "--episodes", "2"])
    main([*args, "--episodes", "3", "--resume"])
    store = TrajectoryStore.open(out)
    assert store.validate() == 3 and store.meta.action_spec["dim"] == 4
    ep = store.read(2)
    assert ep.images.shape == (4, 64, 64, 3) and ep.images.std() > 0 and ep.goal_image.std() > 0
    main([*args[:-1], str(tmp_path / "reach2"), "--episodes", "3", "--workers", "2"])
    assert_same_data(episodes(out), episodes(tmp_path / "reach2"))  # real MuJoCo: same data, any workers
    with pytest.raises(SystemExit, match="known ids: ArmReach-v0"):
        main(["collect", "--env", "ArmNope-v0", "--episodes", "1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--env-kwargs is not valid JSON"):
        main(
            [
                "collect",
                "--env",
                "ArmReach-v0",
                "--env-kwargs",
                "{",
                "--episodes",
                "1",
                "--out",
                str(tmp_path / "y"),
            ]
        )
    with pytest.raises(SystemExit, match="already holds a store with 3 episode"):
        main([*args, "--episodes", "4"])


def test_real_env_two_whole_views_are_stored_side_by_side(tmp_path):
    """view_layout="wide": the store's rule records 2 views and holds S x 2S images (goal included), and a
    model of one view refuses to train on it."""
    from planner.train import TrainConfig, TrainError, check_store
    from planner.world_model import WorldModelConfig

    out = tmp_path / "wide"
    kwargs = {"camera": "table+workspace", "view_layout": "wide"}
    collect(CollectConfig(env="ArmPickPlace-v0", episodes=1, steps=2, out=str(out), image_size=16,
                          env_kwargs=json.dumps(kwargs)), progress=False)
    store = TrajectoryStore.open(out)
    assert store.meta.preprocessing == {"size": 16, "crop": "center", "views": 2}
    assert store.validate() == 1
    ep = store.read(0)
    assert ep.images.shape == (3, 16, 32, 3) and ep.goal_image.shape == (16, 32, 3)
    one_view = WorldModelConfig(image_size=16, enc_channels=(8, 16))
    with pytest.raises(TrainError, match="hold 2 view.*--model.image-views 2"):
        check_store(store, TrainConfig(data=out, out=tmp_path / "ck", model=one_view))
    from planner.train_baselines import BaselineTrainConfig
    from planner.train_baselines import run as train_baseline

    for kind in ("pixel", "gcbc"):
        with pytest.raises(TrainError, match="holds 2 views side by side.*one square view"):
            train_baseline(BaselineTrainConfig(data=out, out=tmp_path / kind, model_type=kind))


def test_worker_that_cannot_build_its_env_reports_instead_of_hanging(tmp_path):
    fake_collect(fake_cfg(tmp_path, episodes=1))
    (tmp_path / "meta.json").rename(tmp_path / "meta.bak")
    meta = json.loads((tmp_path / "meta.bak").read_text())
    meta["env_id"] = "Gone-v0"  # e.g. an env removed since the store was made
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CollectError, match="cannot make env 'Gone-v0'"):
        fake_collect(fake_cfg(tmp_path, env="Gone-v0", episodes=4, workers=2, resume=True))
    assert TrajectoryStore.open(tmp_path).indices() == [0]


def test_episode_written_meanwhile_by_an_orphaned_worker_is_kept(tmp_path, monkeypatch):
    import planner.collect as c

    fake_collect(fake_cfg(tmp_path, episodes=2))
    real_run_episode = c.run_episode

    def orphan_finishes_first(env, make_policy, policy, base_seed, index, steps, rule):
        ep = real_run_episode(env, make_policy, policy, base_seed, index, steps, rule)
        if index == 3:  # a worker of the killed run writes the same (deterministic) episode first
            TrajectoryStore.open(tmp_path).write(ep)
        return ep

    monkeypatch.setattr(c, "run_episode", orphan_finishes_first)
    report = fake_collect(fake_cfg(tmp_path, episodes=5, resume=True))
    assert report.total == 5 and TrajectoryStore.open(tmp_path).validate() == 5
    monkeypatch.undo()
    fake_collect(fake_cfg(tmp_path / "ref", episodes=5))
    assert_same_data(episodes(tmp_path / "ref"), episodes(tmp_path))


def test_task_motion_counts_moving_steps_and_lifts(tmp_path):
    from planner.collect import task_motion

    class FakeStore:
        def __init__(self, eps):
            self.eps = eps

        def __len__(self):
            return len(self.eps)

        def iter_episodes(self):
            return iter(self.eps)

    still = np.zeros((5, 3))
    pushed = np.array([[0, 0, 0.02], [0.01, 0, 0.02], [0.02, 0, 0.02], [0.02, 0, 0.02], [0.02, 0, 0.05]])
    eps = [SimpleNamespace(task_state=still), SimpleNamespace(task_state=pushed)]
    m = task_motion(FakeStore(eps))
    assert m["moved_step_fraction"] == 3 / 8  # two pushes and one lift among 8 steps
    assert m["lifted_episode_fraction"] == 0.5
