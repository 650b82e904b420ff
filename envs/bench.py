"""Cost of our arm envs on this machine: render per frame, physics per control step, full env step rate.

    MUJOCO_GL=egl python -m envs.bench [--steps 300] [--image-size 64]
prints one JSON line per task (milliseconds; steps per second).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import envs


def measure(env_id: str, steps: int, image_size: int) -> dict:
    env = envs.make_env(env_id, image_size=image_size).unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, 4)).astype(np.float32)
    t = time.perf_counter()
    for _ in range(steps):
        env.render()
    render_ms = (time.perf_counter() - t) / steps * 1e3
    snap = env.get_snapshot()
    t = time.perf_counter()
    for a in actions:
        env.simulate(a)
    physics_ms = (time.perf_counter() - t) / steps * 1e3
    env.set_snapshot(snap)
    t = time.perf_counter()
    for a in actions:
        env.step(a)
    step_s = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    for i in range(10):
        env.reset(seed=i)
    reset_ms = (time.perf_counter() - t) / 10 * 1e3
    return dict(env=env_id, image_size=image_size, render_ms=round(render_ms, 3),
                physics_ms_per_control_step=round(physics_ms, 3), env_steps_per_s=round(1 / step_s, 1),
                reset_with_goal_image_ms=round(reset_ms, 2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args(argv)
    for env_id in envs.known_env_ids():
        print(json.dumps(measure(env_id, args.steps, args.image_size)))


if __name__ == "__main__":
    main()
