"""`planner eval`: closed-loop MPC on seeded episodes (DESIGN 3 JSON contract, DESIGN 4 protocol).

Episode i resets the env with `episode_seed(seed, i, "eval")` (never a collection seed), encodes the goal
image from the reset info once, then replans every `replan_every` steps for at most the task's step budget.
Success rule (the strict one): the episode ends at the step budget, or earlier when the agent reports
`goal_reached` (its current latent is within the checkpoint's energy threshold of the goal); it is a
success only if the task distance at that end is within the task's success threshold. Passing through
the goal and leaving again does not count.

Baselines (`--baselines`), on the same seeds: `random` (uniform random actions for the whole budget; the
floor) and `simulator` (the same solver, planning with the true physics: restore the snapshot, simulate
each candidate without rendering, cost = task distance after the last action; the ceiling for that
budget). The simulator is slow (a Python loop over samples x iterations x horizon physics steps), so it
has its own budget options (`sim_*`); what was run is recorded in its JSON block.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from planner.mpc import MPCAgent, SubgoalPatience, pad_history, plan_through_subgoals, stage_agents
from planner.objectives import ApproachColumns, ObjectiveConfig, energy, energy_space, horizon_weights
from planner.planner_defaults import PlannerDefaults
from planner.preprocess import Preprocessing, preprocess_image
from planner.seeding import episode_seed, planning_seed
from planner.solvers import (
    SOLVERS,
    action_dims_record,
    make_solver,
    shift_plan,
    solve,
    with_action_dims,
    with_fixed_dims,
)


@dataclass
class EvalConfig:
    """Evaluate a checkpoint by closed-loop planning in its environment."""

    checkpoint: str
    """Checkpoint directory (config.json + model.safetensors)."""
    env: str | None = None
    """Env id (ArmReach-v0, ..., gym:<id>); default: the env the checkpoint was trained on."""
    env_kwargs: str = "{}"
    """JSON object of env keyword arguments, merged over those the checkpoint was trained with."""
    camera_offset: tuple[float, float, float] | None = None
    """Shift the camera by (x, y, z) metres (robustness check, e.g. 0.02 0 0); reported in the JSON."""
    episodes: int = 50
    """Number of seeded evaluation episodes."""
    seed: int = 0
    """Base seed; episode i uses episode_seed(seed, i, "eval")."""
    first_episode: int = 0
    """Index of the first episode: `--first-episode 20 --episodes 30` runs episodes 20-49 of this seed, one
    shard of a longer evaluation (shards on several machines or cores); `planner merge-evals` joins them."""
    solver: str | None = None
    """Solver: cem | icem | mppi | cmaes | gd (default: the checkpoint's config.json `planner` solver, else
    cem)."""
    samples: int | None = None
    """Candidates per iteration (default: the checkpoint's budget for this solver, else the solver's)."""
    iterations: int | None = None
    """Solver iterations (default: the checkpoint's budget for this solver, else the solver's)."""
    horizon: int | None = None
    """Planning horizon in control steps (default: the checkpoint's `planner` horizon, else 15)."""
    binary_dims: tuple[int, ...] | None = None
    """Action dimensions the solver snaps to their bounds, e.g. `--binary-dims 3` for the arm's gripper
    (planner.solvers.SolverConfig.binary_dims; default: the checkpoint's `planner` entry, else none). The
    simulator baseline snaps the same dimensions."""
    fixed_dims: dict[int, float] | None = None
    """Action dimensions the solver holds at a value (normalized units), e.g. `--fixed-dims 3 1.0`: the
    gripper closed (planner.solvers.SolverConfig.fixed_dims; default: the checkpoint's `planner` entry,
    else none). The simulator baseline holds the same dimensions."""
    replan_every: int = 1
    """Execute this many planned actions before replanning."""
    objective_space: str = "latent"
    """Planning cost: `latent` (distance to the goal latent) or `pixel` (distance between decoded frames;
    pixel checkpoints only, docs/COMPARISON.md)."""
    objective_reduce: str | None = None
    """Over the horizon: final | mean | weighted (default: planner.objectives.ObjectiveConfig's)."""
    disagreement: float | None = None
    """Weight of the ensemble members' disagreement in the cost (planner.objectives; needs an ensemble
    checkpoint; default: the checkpoint's `planner` entry, else 0)."""
    approach: float | None = None
    """Weight of the push-approach term (planner.objectives.ObjectiveConfig.approach; needs a state energy
    head; default: the checkpoint's `planner` entry, else 0)."""
    approach_offset: float | None = None
    """Metres behind the block of the approach term's point (default: ObjectiveConfig's 0.045)."""
    max_steps: int | None = None
    """Cap on steps per episode below the task's step budget (smoke tests); default: the budget."""
    stop_on_goal: bool = True
    """End an episode when the agent reports goal_reached (the protocol); --no-stop-on-goal runs the full
    budget, which separates a loose goal threshold from planning quality."""
    subgoals: bool = True
    """Plan through the env's sub-goal images (reset info "subgoal_images", e.g. pick-and-place: pre-grasp,
    grasp, lift) before the goal, moving on when the agent reports the current one reached; envs without
    sub-goals are unaffected. --no-subgoals plans to the final goal image only. A gcbc policy has no
    goal_reached signal to move on with, so it always gets the final goal only. The simulator baseline
    follows the same setting, planning through the sub-goals' true states."""
    subgoal_threshold_scale: float = 1.0
    """A sub-goal counts as reached when the current energy is at most this times the checkpoint's
    sub-goal threshold (its calibration's `subgoal_threshold` where a weighted final-goal energy recorded
    one, else goal_energy_threshold; < 1: stricter, the hand placed more precisely before the agent moves
    on; the JSON records it)."""
    subgoal_patience: int | None = None
    """Give up a sub-goal whose energy has made no progress (a new best by 5%) in this many planning calls
    and plan to the next target (the sub-goal is recorded as skipped, not reached); default: never, wait
    for the threshold (the protocol until session 9)."""
    open_loop_check: bool = False
    """Diagnose model exploitation: at every planning call also run the chosen plan's whole horizon open
    loop in a copy of the simulator and record the energy its real final frame has to the current target
    beside the energy the planner imagined (per episode `open_loop`, summary `open_loop_check`, and per
    episode outcome `open_loop_check_by_outcome`; the
    episodes themselves are unchanged; about 1.3x the time)."""
    baselines: bool = False
    """Also run the random and true-simulator baselines on the same seeds."""
    sim_samples: int = 64
    """Simulator baseline: candidates per iteration (physics is a Python loop; keep it small)."""
    sim_iterations: int = 3
    """Simulator baseline: solver iterations."""
    sim_horizon: int = 10
    """Simulator baseline: planning horizon."""
    sim_episodes: int | None = None
    """Simulator baseline: number of episodes (the first N seeds; default: all)."""
    json: str | None = None
    """Write the results object to this path (atomically)."""
    video: str | None = None
    """Write one video per episode to this directory (camera | goal | energy curve)."""
    video_format: str = "mp4"
    """mp4 or gif."""
    device: str = "cpu"
    """Torch device for the model and solver (cpu, cuda, cuda:1)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice). On a loaded shared machine 1 is much faster (measured
    30x for CEM with 2 threads on 2 busy cores: idle threads spin-wait); see docs/PLANNING.md."""
    progress: bool = True
    """Show tqdm progress bars."""


def _parse_kwargs(text: str) -> dict:
    try:
        kw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--env-kwargs must be a JSON object, e.g. '{{\"image_size\": 64}}': {e}") from e
    if not isinstance(kw, dict):
        raise ValueError(f"--env-kwargs must be a JSON object, got {type(kw).__name__}")
    return kw


def _validate(cfg: EvalConfig) -> None:
    if cfg.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {cfg.episodes}")
    if cfg.subgoal_patience is not None and cfg.subgoal_patience < 1:
        raise ValueError(f"--subgoal-patience must be >= 1 planning call, got {cfg.subgoal_patience}")
    if not cfg.subgoal_threshold_scale > 0:
        raise ValueError(f"--subgoal-threshold-scale must be > 0, got {cfg.subgoal_threshold_scale}")
    if cfg.first_episode < 0:
        raise ValueError(f"--first-episode must be >= 0, got {cfg.first_episode}")
    if cfg.solver is not None and cfg.solver not in SOLVERS:
        raise ValueError(f"unknown --solver {cfg.solver!r}; choose one of: {', '.join(SOLVERS)}")
    if cfg.replan_every < 1:
        raise ValueError(f"--replan-every must be >= 1, got {cfg.replan_every}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {cfg.max_steps}")
    if cfg.video_format not in ("mp4", "gif"):
        raise ValueError(f"--video-format must be mp4 or gif, got {cfg.video_format!r}")
    if cfg.sim_episodes is not None and cfg.sim_episodes < 1:
        raise ValueError(f"--sim-episodes must be >= 1, got {cfg.sim_episodes}")


# -------------------------------------------------------------------------------------------- physics


def physics_step(env, action: np.ndarray) -> None:
    """Advance the physics by one control step with a normalized action, without rendering."""
    u = env.unwrapped
    a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    if hasattr(u, "simulate"):  # our ArmEnv: controller + substeps, exactly as ArmEnv.step, no render
        u.simulate(a)
    elif hasattr(u, "_inner_step"):  # gym adapter: the wrapped env's own step, no render
        u._inner_step(u.denormalize_action(a.astype(np.float32)))
    else:
        raise ValueError(f"the simulator baseline cannot step {type(u).__name__} without rendering")


def simulator_objective(env, snapshot: np.ndarray, reduce: ObjectiveConfig, target=None):
    """objective(actions float[1,S,H,A]) -> cost float[1,S]: the task distance after each simulated step,
    reduced over the horizon with the same weights as the latent objective (a final-step-only cost lets
    MPC put off moving: measured 0% at the agent's budget). `target` (proprio, task_state) of a sub-goal
    scores `subgoal_distance` to it instead. The agent's approach term (`reduce.approach`) is added on the
    true hand and block positions, so the ceiling plans with the agent's own cost."""

    approach = reduce.approach
    if approach > 0:
        if not getattr(env.unwrapped, "has_block", False):
            raise ValueError("the approach term needs a block task (ArmPush-v0, ArmPickPlace-v0)")
        columns = ApproachColumns(hand=0, block=3)  # of [hand xyz, block xyz] in metres
        goal_block = np.asarray(env.unwrapped.goal_task_state if target is None else target[1])[:3]
        goal_state = torch.as_tensor(np.concatenate([np.zeros(3), goal_block]), dtype=torch.float32)

    def objective(actions: torch.Tensor) -> torch.Tensor:
        acts = actions.detach().cpu().numpy()[0]
        weights = horizon_weights(acts.shape[1], reduce).numpy()
        dist = np.zeros(acts.shape[:2])  # [S,H]
        states = np.zeros((*acts.shape[:2], 6)) if approach > 0 else None  # [S,H,6] hand, block xyz
        u = env.unwrapped
        for s, seq in enumerate(acts):
            u.set_snapshot(snapshot)
            for h, a in enumerate(seq):
                physics_step(env, a)
                dist[s, h] = u.distance() if target is None else u.subgoal_distance(*target)
                if approach > 0:
                    states[s, h] = np.concatenate([u.ee_position(), u.block_position()])
        u.set_snapshot(snapshot)
        if approach > 0:  # the agent's approach term on the true hand and block positions, in one batch
            term = columns.approach_distance(torch.as_tensor(states, dtype=torch.float32), goal_state,
                                             reduce.approach_offset)
            dist = dist + approach * term.double().numpy()
        return torch.as_tensor(dist @ weights, dtype=torch.float32)[None]

    return objective


# ------------------------------------------------------------------------------------------- episodes


SAMPLED_BASELINES = frozenset({"simulator"})
"""Baselines run on only the first `--sim-episodes` seeds of a run: shards of one evaluation leave gaps."""
IMPROVING = 0.8
"""A plan counts as improving when its final energy is below this fraction of the current energy."""


def open_loop_summary(triples: list[list[float]]) -> dict:
    """[imagined, real, current] energies of planning calls -> how optimistic the planner was: medians,
    the real - imagined gap (median, p90), the share of plans imagined as improving and, of those, the
    share that really improve."""
    imag, real, cur = np.asarray(triples, dtype=np.float64).T
    believed = imag < IMPROVING * cur
    gap = real - imag
    return dict(calls=len(imag), imagined_median=float(np.median(imag)), real_median=float(np.median(real)),
                current_median=float(np.median(cur)), optimism_median=float(np.median(gap)),
                optimism_p90=float(np.quantile(gap, 0.9)), imagined_improving=float(believed.mean()),
                really_improving_of_imagined=float(np.mean(real[believed] < IMPROVING * cur[believed]))
                if believed.any() else float("nan"))


def open_loop_outcome(env, agent: MPCAgent, rule: Preprocessing, plan, z_target: torch.Tensor,
                      subgoal: bool = False) -> list[float]:
    """[imagined, real, current] energy to the current target of `plan` (B = 1): its actions are also run
    open loop in the simulator, whose state is restored afterwards, and the real final frame is encoded and
    measured the way the imagined final latent was (planner.objectives.energy in the energy space, with
    the agent's final-goal weights unless the target is a sub-goal)."""
    u = env.unwrapped
    snapshot = u.get_snapshot()
    try:
        for a in plan.actions_normalized[0]:
            physics_step(env, a)
        frame = preprocess_image(u.render(), rule)
    finally:
        u.set_snapshot(snapshot)
    weights = None if subgoal or agent.goal_energy_weights is None else agent.goal_energy_weights[None]
    embed = energy_space(agent.model, weights)
    with torch.no_grad():
        real = energy(embed(agent.encode(frame[None])), embed(z_target))
    return [round(float(v), 6) for v in (plan.energy[0], real[0], plan.current_energy[0])]


def summarize(records: list[dict]) -> dict:
    """Success, distance and plan-time statistics over episode records (each keeps its own `plan_ms`, so
    shards of one evaluation can be merged exactly: planner.merge_evals)."""
    plan_ms = [m for r in records for m in r.get("plan_ms", [])]
    out = dict(
        success_rate=float(np.mean([r["success"] for r in records])),
        mean_final_distance=float(np.mean([r["final_distance"] for r in records])),
        plan_ms_median=float(np.median(plan_ms)) if plan_ms else 0.0,
        plan_ms_p95=float(np.percentile(plan_ms, 95)) if plan_ms else 0.0,
    )
    errors = [r["subgoal_errors"] for r in records if r.get("subgoal_errors")]
    if errors:  # per sub-goal: median true [hand, task-state] error [m] where the agent judged it reached
        per_subgoal = [[e[k] for e in errors if len(e) > k] for k in range(max(map(len, errors)))]
        out["subgoal_error_median"] = [np.median(np.asarray(e), axis=0).round(4).tolist()
                                       for e in per_subgoal]
    outcomes = [episode_outcome(r) for r in records]
    out["outcomes"] = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    triples = [c for r in records for c in r.get("open_loop", [])]
    if triples:
        out["open_loop_check"] = open_loop_summary(triples)
        by_outcome: dict[str, list] = {}
        for r, o in zip(records, outcomes, strict=True):
            by_outcome.setdefault(o, []).extend(r.get("open_loop", []))
        out["open_loop_check_by_outcome"] = {k: open_loop_summary(v)
                                             for k, v in sorted(by_outcome.items()) if v}
    return {**out, "per_episode": records}


def episode_outcome(rec: dict) -> str:
    """How an episode ended: "success"; "false_stop" (goal_reached stopped it outside the success
    distance); "stuck_before_subgoal_N" (the budget ran out before the agent judged sub-goal N, 1-based,
    reached or gave it up); "budget" (out of steps, every sub-goal passed or none planned)."""
    if rec["success"]:
        return "success"
    if rec.get("stopped_by_goal_reached"):
        return "false_stop"
    passed = len(rec.get("subgoal_reached_at_step", [])) + len(rec.get("subgoal_skipped", []))
    if passed < rec.get("subgoals", 0):
        return f"stuck_before_subgoal_{passed + 1}"
    return "budget"


def subgoal_error(u, reset_info: dict, k: int) -> list[float]:
    """[hand, task-state] distance [m] of the true state from sub-goal k (the env's reset info), NaN where
    the env gives no sub-goal states: what the agent's "sub-goal reached" meant in the simulator."""
    if "subgoal_proprio" not in reset_info:
        return [float("nan"), float("nan")]
    hand = np.linalg.norm(u.ee_position() - np.asarray(reset_info["subgoal_proprio"][k])[:3])
    task = np.linalg.norm(u.task_state() - np.asarray(reset_info["subgoal_task_states"][k]))
    return [round(float(hand), 4), round(float(task), 4)]


def run_agent_episode(env, agent: MPCAgent, rule: Preprocessing, seed: int, steps: int, replan_every: int,
                      keep_frames: bool = False, stop_on_goal: bool = True, subgoals: bool = True,
                      subgoal_threshold_scale: float = 1.0, open_loop_check: bool = False,
                      subgoal_patience: int | None = None) -> dict:
    """One closed-loop MPC episode; returns its record (plus `_frames`, `_goal` when keep_frames; with
    `open_loop_check`, `open_loop`: one open_loop_outcome per executed plan).

    With `subgoals` the agent plans to each of the env's sub-goal images in turn (then the goal), moving
    to the next one as soon as the current observation's energy to it is at most `subgoal_threshold_scale`
    times the calibrated sub-goal threshold, or (with `subgoal_patience`) once it has stalled that many
    planning calls (mpc.SubgoalPatience)."""
    u = env.unwrapped
    obs, info = env.reset(seed=seed)
    reset_info = info
    goal = preprocess_image(info["goal_image"], rule)
    targets = [preprocess_image(g, rule) for g in info.get("subgoal_images", [])] if subgoals else []
    z_targets = [agent.encode_goal(g)[None] for g in targets] + [agent.encode_goal(goal)[None]]
    zero = agent.action_spec.to_native(np.zeros(agent.action_spec.dim, np.float32))
    frames, acts, warm, queue = [preprocess_image(obs["image"], rule)], [], None, []
    plan_ms, energies, distances, subgoal_steps, subgoal_errors, open_loop = [], [], [], [], [], []
    reached, target = False, 0
    subgoal_threshold = agent.subgoal_energy_threshold * subgoal_threshold_scale
    planners = stage_agents(agent, info.get("stage_fixed_dims")) if subgoals else agent
    patience = SubgoalPatience(subgoal_patience) if subgoal_patience is not None else None
    start_distance = float(info["distance"])
    t = 0
    for t in range(steps):
        if not queue:
            imgs, prev = pad_history(frames, acts, agent.history_len, zero)
            plan, target, passed, ms = plan_through_subgoals(
                planners, imgs, prev, z_targets, target, warm, threshold=subgoal_threshold,
                executed_steps=replan_every, seed=planning_seed(seed, t), patience=patience)
            plan_ms += ms
            subgoal_steps += [t] * len(passed)
            subgoal_errors += [subgoal_error(u, reset_info, k) for k in passed]
            energies.append(float(plan.current_energy[0]))
            distances.append(round(float(u.distance()), 4))
            if target == len(z_targets) - 1 and plan.goal_reached[0] and stop_on_goal:
                reached = True
                break
            warm = plan.warm_start
            if open_loop_check:
                open_loop.append(open_loop_outcome(env, agent, rule, plan, z_targets[target],
                                                   subgoal=target < len(z_targets) - 1))
            queue = list(range(replan_every))
            planned_norm, planned_native = plan.actions_normalized[0], plan.actions[0]
        i = queue.pop(0)
        obs, _, _, _, info = env.step(planned_norm[i])
        frames.append(preprocess_image(obs["image"], rule))
        acts.append(planned_native[i])
        if not keep_frames and len(frames) > agent.history_len:
            frames.pop(0)
    else:
        t = steps
    final = float(u.distance())
    rec = dict(
        seed=int(seed),
        success=bool(final <= u.task.success_threshold),
        final_distance=final,
        start_distance=start_distance,
        steps=int(t),
        stopped_by_goal_reached=reached,
        energy_curve=energies,
        distance_curve=distances,
        plan_ms=_rounded(plan_ms),
        **({"open_loop": open_loop} if open_loop_check else {}),
    )
    if len(z_targets) > 1:
        rec["subgoals"] = len(z_targets) - 1
        rec["subgoal_reached_at_step"] = subgoal_steps
        rec["subgoal_errors"] = subgoal_errors
        if patience is not None:
            rec["subgoal_skipped"] = patience.skipped
    if keep_frames:
        rec["_frames"], rec["_goal"] = frames, goal
    return rec


def run_random_episode(env, seed: int, steps: int) -> dict:
    """Uniform random normalized actions for the whole budget (the floor)."""
    u = env.unwrapped
    _, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    start = float(info["distance"])
    for _ in range(steps):
        physics_step(env, rng.uniform(-1.0, 1.0, u.action_space.shape))
    final = float(u.distance())
    return dict(seed=int(seed), success=bool(final <= u.task.success_threshold), final_distance=final,
                start_distance=start, steps=steps)


def run_simulator_episode(env, solver_cfg, horizon: int, seed: int, steps: int,
                          objective: ObjectiveConfig, subgoals: bool = False) -> dict:
    """The solver planning on the true physics (no rendering), replanning every step (the ceiling);
    `objective` gives the reduction over the horizon, the agent's own. With `subgoals` it plans to the
    env's sub-goal states in turn (reset info `subgoal_proprio`, `subgoal_task_states`), moving on once
    within the task's success distance of one (`subgoal_distance`), as the agent does with sub-goal images;
    each stage holds its `stage_fixed_dims`."""
    u = env.unwrapped
    _, info = env.reset(seed=seed)
    start = float(info["distance"])
    targets = list(zip(info.get("subgoal_proprio", []), info.get("subgoal_task_states", []),
                       strict=True)) if subgoals else []
    targets.append(None)  # the final goal: task distance
    a_dim = u.action_space.shape[0]
    held = info.get("stage_fixed_dims") if subgoals else None
    stage_cfgs = ([with_fixed_dims(solver_cfg, fixed, a_dim) for fixed in held] if held
                  else [solver_cfg] * len(targets))
    gen = torch.Generator().manual_seed(seed % (2**63))
    init, plan_ms, stage, reached_at = None, [], 0, []
    for t in range(steps):
        while targets[stage] is not None and u.subgoal_distance(*targets[stage]) <= u.task.success_threshold:
            stage, init = stage + 1, None
            reached_at.append(t)
        t0 = time.perf_counter()
        snap = u.get_snapshot()
        sol = solve(simulator_objective(env, snap, objective, targets[stage]), stage_cfgs[stage], batch=1,
                    horizon=horizon, action_dim=a_dim, init=init, generator=gen)
        plan_ms.append((time.perf_counter() - t0) * 1e3)
        physics_step(env, sol.actions[0, 0].numpy())
        init = shift_plan(sol.state, 1)
    final = float(u.distance())
    rec = dict(seed=int(seed), success=bool(final <= u.task.success_threshold), final_distance=final,
               start_distance=start, steps=steps, plan_ms=_rounded(plan_ms))
    if len(targets) > 1:
        rec["subgoals"] = len(targets) - 1
        rec["subgoal_reached_at_step"] = reached_at
    return rec


# ----------------------------------------------------------------------------------------------- run


def make_agent(loaded, cfg: EvalConfig, solver_cfg, horizon: int, objective: ObjectiveConfig):
    """The acting agent for a loaded checkpoint: MPCAgent for world models (jepa, pixel); for gcbc the
    policy itself (planner.gcbc.PolicyAgent: same interface, acts every step, no planning)."""
    if loaded.config["model_type"] == "gcbc":
        from planner.gcbc import PolicyAgent

        if cfg.replan_every != 1:
            raise ValueError(f"--replan-every must be 1 for a gcbc checkpoint (the policy acts every step), "
                             f"got {cfg.replan_every}")
        return PolicyAgent(loaded, device=cfg.device)
    agent = MPCAgent(loaded, solver_cfg, horizon=horizon, objective=objective, device=cfg.device)
    if cfg.replan_every > agent.horizon:
        raise ValueError(f"--replan-every must be in 1..horizon ({agent.horizon}), got {cfg.replan_every}")
    return agent


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation; returns the DESIGN 3 results object (and writes JSON / videos if asked)."""
    from tqdm import tqdm

    from envs import make_env, task_kwargs
    from planner.checkpoint import file_sha256, load

    _validate(cfg)
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    loaded = load(cfg.checkpoint, cfg.device)
    ck = loaded.config
    train = ck.get("training_data", {})
    env_id = cfg.env or train.get("env_id")
    if not env_id:
        raise ValueError(f"{cfg.checkpoint}/config.json names no training env; pass --env")
    env_kwargs = {**task_kwargs(train.get("env_kwargs", {})), **_parse_kwargs(cfg.env_kwargs)}
    if cfg.camera_offset is not None:
        env_kwargs["camera_offset"] = list(cfg.camera_offset)
    env = make_env(env_id, **env_kwargs)
    task = env.unwrapped.task
    steps = task.step_budget if cfg.max_steps is None else min(cfg.max_steps, task.step_budget)
    rule = Preprocessing.from_checkpoint_config(ck)
    defaults = PlannerDefaults.from_config(ck)
    solver_cfg, horizon = defaults.resolve(cfg.solver, cfg.horizon, cfg.samples, cfg.iterations,
                                           cfg.binary_dims, cfg.fixed_dims)
    objective = defaults.objective(space=cfg.objective_space, reduce=cfg.objective_reduce,
                                   disagreement=cfg.disagreement, approach=cfg.approach,
                                   approach_offset=cfg.approach_offset)
    agent = make_agent(loaded, cfg, solver_cfg, horizon, objective)
    is_policy = ck["model_type"] == "gcbc"
    if cfg.open_loop_check and (is_policy or not hasattr(env.unwrapped, "get_snapshot")):
        raise ValueError("--open-loop-check needs a world model that imagines (not a gcbc policy) and an env "
                         "whose state can be saved and restored (our Arm* envs)")
    subgoals = bool(cfg.subgoals and not is_policy)  # agent and simulator ceiling alike
    indices = range(cfg.first_episode, cfg.first_episode + cfg.episodes)
    seeds = [episode_seed(cfg.seed, i, "eval") for i in indices]
    video_dir = Path(cfg.video) if cfg.video else None
    if video_dir:
        video_dir.mkdir(parents=True, exist_ok=True)

    records = []
    bar = tqdm(seeds, desc=f"eval {solver_cfg.name}", disable=not cfg.progress)
    for i, s in zip(indices, bar, strict=True):
        keep = video_dir is not None
        rec = run_agent_episode(env, agent, rule, s, steps, cfg.replan_every, keep_frames=keep,
                                stop_on_goal=cfg.stop_on_goal, subgoals=subgoals,
                                subgoal_threshold_scale=cfg.subgoal_threshold_scale,
                                open_loop_check=cfg.open_loop_check, subgoal_patience=cfg.subgoal_patience)
        rec["index"] = i
        if video_dir:
            from planner.video import write_episode_video

            write_episode_video(video_dir / f"episode_{i:03d}.{cfg.video_format}", rec.pop("_frames"),
                                rec.pop("_goal"), rec["energy_curve"], agent.goal_energy_threshold)
        records.append(rec)

    def common(samples, iterations, horizon, n):
        return dict(samples=samples, iterations=iterations, horizon=horizon, episodes=n)

    result = dict(
        env=env_id,
        env_kwargs=env_kwargs,
        camera_offset=list(cfg.camera_offset) if cfg.camera_offset is not None else None,
        checkpoint=loaded.name,
        checkpoint_path=str(cfg.checkpoint),
        checkpoint_sha256=file_sha256(Path(cfg.checkpoint) / "model.safetensors"),
        solver="policy" if is_policy else solver_cfg.name,
        **(common(0, 0, 1, cfg.episodes) if is_policy else
           common(solver_cfg.samples, solver_cfg.iterations, horizon, cfg.episodes)),
        **({} if is_policy else action_dims_record(solver_cfg)),
        checkpoint_planner_defaults=defaults.to_dict(),
        model_type=ck["model_type"],
        objective=None if is_policy else asdict(agent.objective),
        seed=cfg.seed,
        first_episode=cfg.first_episode,
        success_threshold=task.success_threshold,
        step_budget=steps,
        replan_every=cfg.replan_every,
        subgoals=subgoals,
        subgoal_threshold_scale=cfg.subgoal_threshold_scale,
        subgoal_patience=cfg.subgoal_patience,
        goal_energy_threshold=agent.goal_energy_threshold,
        success_rule="distance <= success_threshold at the end (step budget, or when goal_reached stops MPC)"
        if cfg.stop_on_goal else "distance <= success_threshold after the full step budget (no early stop)",
        device=str(cfg.device),
        threads=torch.get_num_threads(),
        **summarize(records),
    )
    if cfg.baselines:
        rand = [dict(run_random_episode(env, s, steps), index=i)
                for i, s in zip(indices, tqdm(seeds, desc="baseline random", disable=not cfg.progress),
                                strict=True)]
        sim_cfg = with_action_dims(make_solver(solver_cfg.name, samples=cfg.sim_samples,
                                               iterations=cfg.sim_iterations), solver_cfg)
        n_sim = cfg.sim_episodes or len(seeds)  # the one SAMPLED_BASELINES entry
        t0 = time.perf_counter()
        sim_objective = ObjectiveConfig() if is_policy else agent.objective
        sim = [dict(run_simulator_episode(env, sim_cfg, cfg.sim_horizon, s, steps, sim_objective, subgoals),
                    index=i)
               for i, s in zip(indices[:n_sim], tqdm(seeds[:n_sim], desc="baseline simulator",
                                                     disable=not cfg.progress), strict=True)]
        sim_s = time.perf_counter() - t0
        result["baselines"] = dict(
            random=dict(solver="random", **common(0, 0, 0, len(rand)), **summarize(rand)),
            simulator=dict(solver=solver_cfg.name,
                           **common(cfg.sim_samples, cfg.sim_iterations, cfg.sim_horizon, len(sim)),
                           **action_dims_record(sim_cfg), subgoals=subgoals, wall_s=sim_s,
                           **summarize(sim)),
        )
    env.close()
    if cfg.json:
        write_json_atomic(cfg.json, result)
    return result


def _rounded(ms: list[float]) -> list[float]:
    return [round(float(m), 2) for m in ms]


def read_eval_json(path: str | os.PathLike, keys: tuple[str, ...]) -> dict:
    """A `planner eval --json` result that has `keys`; a clear error naming the file otherwise."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read an eval JSON: {e}") from e
    if not isinstance(d, dict) or any(k not in d for k in keys):
        raise ValueError(f"{path}: not a `planner eval --json` result (needs keys {', '.join(keys)})")
    return d


def write_json_atomic(path: str | os.PathLike, obj: dict) -> None:
    """Write JSON to a temp file in the same directory, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(cfg: EvalConfig) -> None:
    res = evaluate(cfg)
    line = (f"{res['env']} {res['checkpoint']} {res['solver']} S={res['samples']} I={res['iterations']} "
            f"H={res['horizon']}: success {res['success_rate']:.0%} over {res['episodes']} episodes, "
            f"final distance {res['mean_final_distance']:.3f} m, plan {res['plan_ms_median']:.1f} ms "
            f"(p95 {res['plan_ms_p95']:.1f})")
    print(line)
    for name, b in res.get("baselines", {}).items():
        print(f"  baseline {name}: success {b['success_rate']:.0%} over {b['episodes']}, final distance "
              f"{b['mean_final_distance']:.3f} m, plan {b['plan_ms_median']:.1f} ms")
    if cfg.json:
        print(f"wrote {cfg.json}")
