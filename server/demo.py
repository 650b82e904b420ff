"""`make demo`: the product's main job end to end, over HTTP.

Starts `planner serve` on the shipped reach checkpoint in a subprocess, waits for /readyz, then drives the
simulated arm to a goal image on evaluation seeds 0-4 through the Python client (closed-loop MPC: one
plan request per control step, first action executed, warm start sent back), prints each episode's result
and the per-step latency, writes one video per episode to runs/demo/, and stops the server cleanly.

    python -m server.demo [--checkpoint checkpoints/arm-reach] [--episodes 5] [--out runs/demo]
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.seeding import planning_seed


@dataclass
class DemoConfig:
    """Serve a checkpoint and drive the simulated arm to goal images through HTTP."""

    checkpoint: Path = Path("checkpoints/arm-reach")
    """Checkpoint directory to serve."""
    episodes: int = 5
    """Episodes to run: evaluation seeds 0..episodes-1 (never seen in training)."""
    seed: int = 0
    """Base seed of the evaluation seed stream."""
    out: Path = Path("runs/demo")
    """Where the per-episode videos go."""
    startup_timeout_s: float = 180.0
    """How long to wait for the server to load and warm up the model."""


def drive_episode(client, env, action_spec, history_len: int, seed: int) -> dict:
    """One closed-loop episode through HTTP; returns the record plus frames for the video."""
    u = env.unwrapped
    obs, info = env.reset(seed=seed)
    goal = client.upload_goal(info["goal_image"])
    subgoals = [client.upload_goal(g) for g in info.get("subgoal_images", [])]  # push, pick-and-place
    frames, energies, round_trip_ms, plan_ms = [obs["image"]], [], [], []
    history: list[tuple[np.ndarray, np.ndarray]] = []
    held = info.get("stage_fixed_dims", []) if subgoals else []  # pick-and-place: the grip from the lift on
    warm, reached, subgoal_index = None, False, 0
    for t in range(u.task.step_budget):
        recent = history[max(0, len(history) - (history_len - 1)) :] if history_len > 1 else None
        result = client.plan(obs["image"], goal, history=recent, warm_start=warm, executed_steps=1,
                             planner={"seed": planning_seed(seed, t)}, subgoals=subgoals,
                             subgoal_index=subgoal_index, stage_fixed_dims=held)
        subgoal_index = result.subgoal_index
        energies.append(result.current_energy)
        round_trip_ms.append(result.round_trip_ms)
        plan_ms.append(result.plan_ms)
        if result.goal_reached:
            reached = True
            break
        warm = result.warm_start
        action = result.actions[0]
        history.append((obs["image"], action))
        obs, *_ = env.step(action_spec.to_normalized(action))
        frames.append(obs["image"])
    final = float(u.distance())
    return dict(
        seed=seed,
        success=bool(final <= u.task.success_threshold),
        final_distance=final,
        start_distance=float(info["distance"]),
        steps=len(frames) - 1,
        goal_reached=reached,
        subgoals_reached=subgoal_index if subgoals else None,
        energies=energies,
        round_trip_ms=round_trip_ms,
        plan_ms=plan_ms,
        frames=frames,
        goal=info["goal_image"],
    )


def run(cfg: DemoConfig) -> int:
    import envs
    from planner.checkpoint import read_config
    from planner.mpc import ActionSpec
    from planner.seeding import episode_seed
    from planner.video import write_episode_video
    from server.client import PlannerClient
    from server.process import serving

    config = read_config(cfg.checkpoint)
    data = config["training_data"]
    action_spec = ActionSpec.from_config(config["action"])
    # one torch thread: the simulator and video writer run beside the server on the same CPU, and
    # oversubscribed torch threads spin-wait (docs/PLANNING.md); PLANNER_TORCH_THREADS overrides it
    server_env = {"PLANNER_LOG_LEVEL": "warning", "PLANNER_TORCH_THREADS": "1"}
    server_env.update({k: v for k, v in os.environ.items() if k in server_env})
    records = []
    print(f"demo: serving {cfg.checkpoint} (waiting for /readyz) ...", flush=True)
    with serving(cfg.checkpoint, server_env, timeout_s=cfg.startup_timeout_s) as url:
        env = envs.make_env(data["env_id"], **envs.task_kwargs(data.get("env_kwargs", {})))
        cfg.out.mkdir(parents=True, exist_ok=True)
        with PlannerClient(url, timeout_s=30.0) as client:
            model = client.models()
            print(f"demo: {url} serves {json.dumps(model.get('models', model))[:200]}")
            for i in range(cfg.episodes):
                seed = episode_seed(cfg.seed, i, "eval")
                rec = drive_episode(client, env, action_spec, int(config["history_len"]), seed)
                video = write_episode_video(cfg.out / f"episode_{i}.mp4", rec.pop("frames"), rec.pop("goal"),
                                            rec["energies"], threshold=config.get("goal_energy_threshold"))
                rt = np.asarray(rec["round_trip_ms"])
                print(f"episode {i} (seed {seed}): {'SUCCESS' if rec['success'] else 'miss'}  "
                      f"distance {rec['start_distance'] * 100:.1f} -> {rec['final_distance'] * 100:.1f} cm "
                      f"in {rec['steps']} steps; per-step latency median {np.median(rt):.0f} ms "
                      f"(plan {np.median(rec['plan_ms']):.0f} ms); video {video}", flush=True)
                records.append(rec)
        env.close()
    rt = np.concatenate([r["round_trip_ms"] for r in records]) if records else np.zeros(1)
    successes = sum(r["success"] for r in records)
    print(
        f"demo: {successes}/{len(records)} episodes reached the goal image; per-step round trip "
        f"median {np.median(rt):.0f} ms, p95 {np.percentile(rt, 95):.0f} ms; videos in {cfg.out}/"
    )
    return 0 if records else 1


def main() -> None:
    import tyro

    raise SystemExit(run(tyro.cli(DemoConfig)))


if __name__ == "__main__":
    main()
