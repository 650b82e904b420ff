"""`planner eval` end to end on a tiny randomly-initialised real model and the real ArmReach-v0 env."""

import json

import numpy as np
import pytest

from planner.evaluate import EvalConfig, evaluate, physics_step
from tests.tiny_checkpoint import save_tiny_reach_model, save_tiny_two_view_model

CONTRACT_KEYS = {
    "env", "checkpoint", "checkpoint_sha256", "solver", "samples", "iterations", "horizon", "episodes",
    "seed", "success_threshold", "step_budget", "success_rate", "mean_final_distance", "plan_ms_median",
    "plan_ms_p95", "per_episode",
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_tiny_reach_model(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_eval_json_has_contract_keys(tiny_ckpt, tmp_path):
    out = tmp_path / "eval.json"
    cfg = EvalConfig(checkpoint=str(tiny_ckpt), episodes=2, max_steps=3, samples=8, iterations=2, horizon=3,
                     baselines=True, sim_samples=4, sim_iterations=1, sim_horizon=2, sim_episodes=1,
                     json=str(out), progress=False)
    res = evaluate(cfg)
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert set(on_disk) >= CONTRACT_KEYS
    assert on_disk["env"] == "ArmReach-v0" and on_disk["step_budget"] == 3 and on_disk["episodes"] == 2
    assert len(on_disk["checkpoint_sha256"]) == 64 and on_disk["checkpoint"].startswith("tiny@")
    assert on_disk["success_threshold"] == pytest.approx(0.05)
    eps = on_disk["per_episode"]
    assert len(eps) == 2 and eps[0]["seed"] != eps[1]["seed"]
    assert all(e["steps"] == 3 and len(e["energy_curve"]) == 3 for e in eps)
    assert on_disk["plan_ms_median"] > 0 and on_disk["plan_ms_p95"] >= on_disk["plan_ms_median"]
    for name in ("random", "simulator"):
        b = on_disk["baselines"][name]
        assert CONTRACT_KEYS - {"env", "checkpoint", "checkpoint_sha256", "seed", "success_threshold",
                                "step_budget"} <= set(b)
    assert on_disk["baselines"]["simulator"]["episodes"] == 1
    # the start states are at least the task's minimum start distance from the goal: seeded, not trivial
    assert all(e["start_distance"] >= 0.15 - 1e-6 for e in eps)
    again = evaluate(EvalConfig(checkpoint=str(tiny_ckpt), episodes=2, max_steps=3, samples=8, iterations=2,
                                horizon=3, progress=False))
    assert [e["final_distance"] for e in again["per_episode"]] == [e["final_distance"] for e in eps]


def test_eval_writes_video(tiny_ckpt, tmp_path):
    evaluate(EvalConfig(checkpoint=str(tiny_ckpt), episodes=1, max_steps=2, samples=4, iterations=1,
                        horizon=2, video=str(tmp_path / "vid"), video_format="gif", progress=False))
    import imageio.v2 as imageio

    frames = imageio.mimread(tmp_path / "vid" / "episode_000.gif")
    assert len(frames) == 3 and frames[0].shape[-1] in (3, 4)


def test_open_loop_check_records_imagined_and_real_without_changing_the_episodes(tiny_ckpt):
    """--open-loop-check runs each chosen plan in a restored copy of the simulator: the closed-loop
    episodes are the same as without it, and each executed plan gets [imagined, real, current] energies."""
    kw = dict(checkpoint=str(tiny_ckpt), episodes=2, max_steps=3, samples=8, iterations=2, horizon=3,
              progress=False)
    plain = evaluate(EvalConfig(**kw))
    checked = evaluate(EvalConfig(**kw, open_loop_check=True))
    for a, b in zip(plain["per_episode"], checked["per_episode"], strict=True):
        assert a["final_distance"] == b["final_distance"] and a["energy_curve"] == b["energy_curve"]
        assert len(b["open_loop"]) == b["steps"] and all(len(t) == 3 for t in b["open_loop"])
        assert [t[2] for t in b["open_loop"]] == pytest.approx(b["energy_curve"], abs=1e-5)
    summary = checked["open_loop_check"]
    assert summary["calls"] == sum(e["steps"] for e in checked["per_episode"])
    assert set(summary) >= {"imagined_median", "real_median", "optimism_median",
                            "really_improving_of_imagined"}
    by_outcome = checked["open_loop_check_by_outcome"]
    assert set(by_outcome) <= set(checked["outcomes"])
    assert sum(s["calls"] for s in by_outcome.values()) == summary["calls"]
    assert "open_loop_check" not in plain and "open_loop" not in plain["per_episode"][0]


def test_open_loop_summary_counts_optimistic_plans():
    from planner.evaluate import open_loop_summary

    s = open_loop_summary([[1.0, 4.0, 5.0], [1.0, 3.0, 5.0], [6.0, 7.0, 5.0]])  # two imagined to improve
    assert s["calls"] == 3 and s["imagined_improving"] == pytest.approx(2 / 3)
    assert s["really_improving_of_imagined"] == pytest.approx(0.5) and s["optimism_median"] == 2.0


def test_simulator_step_matches_env_step():
    """physics_step (no rendering) advances exactly as env.step does."""
    from envs import make_env

    env = make_env("ArmReach-v0", image_size=16)
    env.reset(seed=1)
    snap = env.unwrapped.get_snapshot()
    a = np.array([0.5, -0.3, 0.2, 1.0], np.float32)
    env.step(a)
    after_step = env.unwrapped.task_state().copy()
    env.unwrapped.set_snapshot(snap)
    physics_step(env, a)
    np.testing.assert_allclose(env.unwrapped.task_state(), after_step, atol=1e-9)
    env.close()


def test_simulator_ceiling_plans_through_subgoal_states():
    """With sub-goals the simulator baseline records them (and how far it got); without, it plans to the
    goal only. The start is not already within the success distance of the first sub-goal."""
    from envs import make_env
    from planner.evaluate import run_simulator_episode
    from planner.objectives import ObjectiveConfig
    from planner.solvers import make_solver

    env = make_env("ArmPush-v0", render_goal=False)
    solver = make_solver("cem", samples=4, iterations=1)
    rec = run_simulator_episode(env, solver, 2, seed=3, steps=2, objective=ObjectiveConfig(), subgoals=True)
    assert rec["subgoals"] == 3 and len(rec["plan_ms"]) == 2
    plain = run_simulator_episode(env, solver, 2, seed=3, steps=2, objective=ObjectiveConfig())
    assert "subgoals" not in plain
    u = env.unwrapped
    _, info = env.reset(seed=3)
    target = (info["subgoal_proprio"][0], info["subgoal_task_states"][0])
    assert u.subgoal_distance(*target) > u.task.success_threshold  # the start is not the first sub-goal
    env.close()


def test_simulator_objective_adds_the_approach_term_on_the_true_state():
    """The ceiling plans with the agent's cost: with approach w the cost of a plan grows by w times the
    term read on the simulated hand and block (held still here: a zero action sequence)."""
    import torch

    from envs import make_env
    from planner.evaluate import simulator_objective
    from planner.objectives import ApproachColumns, ObjectiveConfig

    env = make_env("ArmPush-v0", render_goal=False)
    u = env.unwrapped
    env.reset(seed=3)
    snap = u.get_snapshot()
    hold = torch.zeros(1, 1, 2, 4)
    hold[..., 3] = 1.0  # gripper closed, as at reset
    plain = simulator_objective(env, snap, ObjectiveConfig())(hold)[0, 0].item()
    both = simulator_objective(env, snap, ObjectiveConfig(approach=2.0))(hold)[0, 0].item()
    after = snap.copy()
    u.set_snapshot(snap)
    state = torch.as_tensor(np.concatenate([u.ee_position(), u.block_position()]), dtype=torch.float32)
    goal = torch.as_tensor(np.concatenate([np.zeros(3), u.goal_task_state]), dtype=torch.float32)
    term = ApproachColumns(hand=0, block=3).approach_distance(state, goal, 0.045).item()
    assert term > 0.01 and both - plain == pytest.approx(2.0 * term, abs=2e-3)
    np.testing.assert_array_equal(u.get_snapshot(), after)  # the objective restores the state
    reach = make_env("ArmReach-v0", render_goal=False)
    reach.reset(seed=0)
    with pytest.raises(ValueError, match="needs a block task"):
        simulator_objective(reach, reach.unwrapped.get_snapshot(), ObjectiveConfig(approach=1.0))
    env.close()
    reach.close()


def test_simulator_ceiling_holds_each_stages_fixed_dims():
    """With the grip held from the first stage on, every executed gripper command is closed (finger target
    0); pick-and-place's own holds start at the lift, so two steps into the pre-grasp nothing is held, and
    without sub-goals nothing is held at all."""
    from envs import make_env
    from planner.evaluate import run_simulator_episode
    from planner.objectives import ObjectiveConfig
    from planner.solvers import make_solver

    env = make_env("ArmPickPlace-v0", render_goal=False)
    u = env.unwrapped
    solver = make_solver("cem", samples=4, iterations=1)
    run = dict(seed=3, steps=2, objective=ObjectiveConfig())
    run_simulator_episode(env, solver, 2, subgoals=True, **run)
    assert u.data.ctrl[4] > 0.0
    u.grip_held_from_stage = 0
    run_simulator_episode(env, solver, 2, subgoals=True, **run)
    assert u.data.ctrl[4] == 0.0
    run_simulator_episode(env, solver, 2, **run)
    assert u.data.ctrl[4] > 0.0
    env.close()


def test_eval_rejects_bad_options(tiny_ckpt):
    with pytest.raises(ValueError, match="unknown --solver"):
        evaluate(EvalConfig(checkpoint=str(tiny_ckpt), solver="adam", progress=False))
    with pytest.raises(ValueError, match="--env-kwargs must be a JSON object"):
        evaluate(EvalConfig(checkpoint=str(tiny_ckpt), env_kwargs="image_size=3", episodes=1, progress=False))
    with pytest.raises(ValueError, match="samples must be between"):
        evaluate(EvalConfig(checkpoint=str(tiny_ckpt), samples=0, episodes=1, progress=False))
    with pytest.raises(ValueError, match="--subgoal-patience must be >= 1"):
        evaluate(EvalConfig(checkpoint=str(tiny_ckpt), subgoal_patience=0, episodes=1, progress=False))


def test_bench_reports_latency_throughput_and_matmul_fraction(tiny_ckpt, tmp_path):
    from planner.bench import BenchConfig, bench

    res = bench(BenchConfig(checkpoint=str(tiny_ckpt), solvers=("cem", "icem"), horizon=2, repeats=2,
                            sample_counts=(4, 16), matmul_size=64))
    assert set(res["planning_latency"]) == {"cem", "icem"}
    assert all(r["plan_ms_p95"] >= r["plan_ms_median"] > 0 for r in res["planning_latency"].values())
    assert res["predictor_flops_per_candidate_step"] > 0 and res["matmul"]["flops_per_s"] > 0
    assert [t["samples"] for t in res["rollouts"]] == [4, 16]
    assert all(t["candidate_steps_per_s"] > 0 and t["fraction_of_matmul"] > 0 for t in res["rollouts"])
    with pytest.raises(ValueError, match="unknown solver"):
        bench(BenchConfig(checkpoint=str(tiny_ckpt), solvers=("adam",)))


def loose_copy(ckpt, tmp_path):
    """A copy of the checkpoint whose goal threshold accepts every state (goal_reached at once)."""
    import shutil

    loose = tmp_path / "loose"
    shutil.copytree(ckpt, loose)
    cfg_path = loose / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["goal_energy_threshold"] = 1e9
    cfg_path.write_text(json.dumps(cfg))
    return loose


def test_goal_reached_stops_episode_unless_disabled(tiny_ckpt, tmp_path):
    """With a huge goal threshold the agent reports goal_reached at once: the episode ends there (strict
    rule: judged by the distance at that moment), unless --no-stop-on-goal."""
    loose = loose_copy(tiny_ckpt, tmp_path)
    kw = dict(checkpoint=str(loose), episodes=1, max_steps=3, samples=4, iterations=1, horizon=2,
              progress=False)
    stopped = evaluate(EvalConfig(**kw))["per_episode"][0]
    assert stopped["stopped_by_goal_reached"] and stopped["steps"] == 0 and not stopped["success"]
    assert stopped["final_distance"] == pytest.approx(stopped["start_distance"])
    full = evaluate(EvalConfig(**kw, stop_on_goal=False))["per_episode"][0]
    assert not full["stopped_by_goal_reached"] and full["steps"] == 3


def test_eval_plans_through_pick_place_subgoals(tiny_ckpt, tmp_path):
    """Sub-goals are reached in order before the goal; a loose threshold passes all of them at once."""
    loose = loose_copy(tiny_ckpt, tmp_path)
    kw = dict(env="ArmPickPlace-v0", episodes=1, max_steps=2, samples=4, iterations=1, horizon=2,
              progress=False)
    result = evaluate(EvalConfig(checkpoint=str(loose), **kw))
    ep = result["per_episode"][0]
    assert ep["subgoals"] == 3 and ep["subgoal_reached_at_step"] == [0, 0, 0]
    assert ep["stopped_by_goal_reached"]
    # what "reached" meant in the simulator: the hand never moved to any sub-goal pose, and the block still
    # lies on the table where the grasp sub-goal has it, not lifted as in the lift sub-goal
    (pre_hand, _), (grasp_hand, grasp_block), (lift_hand, lift_block) = ep["subgoal_errors"]
    assert min(pre_hand, grasp_hand, lift_hand) > 0.01 and lift_block > grasp_block + 0.01
    assert result["subgoal_error_median"] == [list(e) for e in ep["subgoal_errors"]]
    # a sub-goal threshold far below the goal's: no sub-goal passed, and the goal's own goal_reached (true
    # for every image under the loose threshold) must not end the episode while a sub-goal is pending
    held = evaluate(EvalConfig(checkpoint=str(loose), subgoal_threshold_scale=1e-12, **kw))
    assert held["subgoal_threshold_scale"] == 1e-12
    assert held["per_episode"][0]["subgoal_reached_at_step"] == []
    assert not held["per_episode"][0]["stopped_by_goal_reached"] and held["per_episode"][0]["steps"] == 2
    assert held["per_episode"][0].get("subgoal_skipped") is None and held["subgoal_patience"] is None
    assert held["outcomes"] == {"stuck_before_subgoal_1": 1}
    # with patience 1 a sub-goal is given up as soon as a planning call brings no 5% progress on it
    gave_up = evaluate(EvalConfig(checkpoint=str(loose), subgoal_threshold_scale=1e-12, subgoal_patience=1,
                                  **{**kw, "max_steps": 4}))
    ep = gave_up["per_episode"][0]
    assert gave_up["subgoal_patience"] == 1 and ep["subgoal_reached_at_step"] == []
    assert ep["subgoal_skipped"] and ep["subgoal_skipped"] == list(range(len(ep["subgoal_skipped"])))
    strict = evaluate(EvalConfig(checkpoint=str(tiny_ckpt), **kw))
    assert strict["subgoals"] and strict["per_episode"][0]["subgoal_reached_at_step"] == []
    off = evaluate(EvalConfig(checkpoint=str(tiny_ckpt), subgoals=False, **kw))
    assert not off["subgoals"] and "subgoals" not in off["per_episode"][0]


def test_a_two_view_model_plans_from_the_env_it_was_trained_on(tmp_path):
    """A model of two whole views (32 x 64 images) evaluates on its training env's wide images, and the
    service backend warms up and encodes at that shape (a one-view image is refused)."""
    from server.agent_backend import AgentBackend

    ckpt = save_tiny_two_view_model(tmp_path / "two_view")
    result = evaluate(EvalConfig(checkpoint=str(ckpt), episodes=1, max_steps=2, samples=4, iterations=1,
                                 horizon=2, progress=False))
    assert result["env"] == "ArmPickPlace-v0" and result["per_episode"][0]["steps"] >= 1
    backend = AgentBackend.from_checkpoint(ckpt)
    assert backend.spec.preprocessing.shape == (32, 64, 3) and backend.spec.camera == "table+workspace"
    backend.warmup()
    assert backend.encode(np.zeros((2, 32, 64, 3), np.uint8)).shape == (2, 16)
    with pytest.raises(ValueError, match=r"S=32 .*2 views side by side"):
        backend.encode(np.zeros((2, 32, 32, 3), np.uint8))


def test_shards_merge_into_the_full_evaluation(tiny_ckpt, tmp_path):
    from planner.merge_evals import merge

    kw = dict(checkpoint=str(tiny_ckpt), max_steps=2, samples=8, iterations=1, horizon=3, baselines=True,
              sim_samples=4, sim_iterations=1, sim_horizon=2, progress=False)
    full = evaluate(EvalConfig(episodes=3, **kw))
    paths = []
    for first, n in ((1, 2), (0, 1)):  # out of order on purpose
        paths.append(tmp_path / f"shard{first}.json")
        evaluate(EvalConfig(episodes=n, first_episode=first, json=str(paths[-1]), **kw))
    merged = merge(paths)
    assert merged["episodes"] == 3 and merged["first_episode"] == 0
    for block, ref in [(merged, full)] + [(merged["baselines"][b], full["baselines"][b])
                                           for b in ("random", "simulator")]:
        assert [e["index"] for e in block["per_episode"]] == [0, 1, 2]
        assert [e["seed"] for e in block["per_episode"]] == [e["seed"] for e in ref["per_episode"]]
        assert [e["final_distance"] for e in block["per_episode"]] == pytest.approx(
            [e["final_distance"] for e in ref["per_episode"]])
        assert block["success_rate"] == ref["success_rate"]
    assert merged["plan_ms_episodes"] == 3 and merged["plan_ms_median"] > 0
    with pytest.raises(ValueError, match="more than one shard"):
        merge([paths[0], paths[0]])
    evaluate(EvalConfig(episodes=1, first_episode=3, json=str(tmp_path / "s3.json"), **kw))
    with pytest.raises(ValueError, match="leave out episodes \\[1, 2\\]"):
        merge([paths[1], tmp_path / "s3.json"])
    other = tmp_path / "other.json"
    evaluate(EvalConfig(episodes=1, first_episode=0, json=str(other), **dict(kw, samples=6)))
    with pytest.raises(ValueError, match="samples"):
        merge([paths[0], other])
    # shards whose simulator baseline ran on each one's first seed only: the sample keeps its gap
    sampled = [tmp_path / f"sim{first}.json" for first in (0, 2)]
    for first, path in zip((0, 2), sampled, strict=True):
        evaluate(EvalConfig(episodes=2, first_episode=first, sim_episodes=1, json=str(path), **kw))
    joined = merge(sampled)
    assert [e["index"] for e in joined["per_episode"]] == [0, 1, 2, 3]
    assert [e["index"] for e in joined["baselines"]["random"]["per_episode"]] == [0, 1, 2, 3]
    assert [e["index"] for e in joined["baselines"]["simulator"]["per_episode"]] == [0, 2]
    assert joined["baselines"]["simulator"]["episodes"] == 2


def test_merge_takes_results_written_before_shards_existed(tmp_path):
    """Older results carry no first_episode, no baseline index and no per-step plan times."""
    from planner.merge_evals import merge

    def result(first, n, timed):
        eps = [dict(index=first + k, seed=first + k, success=k == 0, final_distance=0.1 * (first + k),
                    **({"plan_ms": [10.0, 30.0]} if timed else {})) for k in range(n)]
        plain = [{k: e[k] for k in ("seed", "success", "final_distance")} for e in eps]
        res = dict(env="ArmPush-v0", checkpoint_sha256="ab", solver="cem", samples=8, seed=0, per_episode=eps,
                   baselines={"random": dict(solver="random", samples=0, per_episode=plain)})
        if timed:
            res["first_episode"] = first
        return res

    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(result(0, 2, timed=False)))
    new.write_text(json.dumps(result(2, 3, timed=True)))
    merged = merge([new, old])
    assert merged["episodes"] == 5 and merged["success_rate"] == pytest.approx(0.4)
    assert merged["mean_final_distance"] == pytest.approx(0.2)
    assert merged["plan_ms_episodes"] == 3 and merged["plan_ms_median"] == pytest.approx(20.0)
    rand = merged["baselines"]["random"]
    assert [e["index"] for e in rand["per_episode"]] == [0, 1, 2, 3, 4] and rand["plan_ms_episodes"] == 0
    assert merged["merged_from"] == [str(new), str(old)]


def test_episode_outcomes_name_how_each_episode_ended():
    from planner.evaluate import episode_outcome

    base = dict(success=False, stopped_by_goal_reached=False, subgoals=3, subgoal_reached_at_step=[4, 9])
    assert episode_outcome({**base, "success": True}) == "success"
    assert episode_outcome({**base, "stopped_by_goal_reached": True}) == "false_stop"
    assert episode_outcome(base) == "stuck_before_subgoal_3"
    assert episode_outcome({**base, "subgoal_skipped": [2]}) == "budget"
    assert episode_outcome(dict(success=False, final_distance=0.2)) == "budget"  # random baseline


def test_paired_evals_counts_won_and_lost_episodes_by_seed(tmp_path):
    """Episodes pair by seed across shards and order; McNemar's exact p on 5 won / 0 lost is 2 / 2^5."""
    import json

    from planner.paired_evals import PairedEvalsConfig, compare, run

    def write(name, successes, distances, seeds, env="ArmPush-v0"):
        eps = [dict(seed=s, success=ok, final_distance=d, stopped_by_goal_reached=ok)
               for s, ok, d in zip(seeds, successes, distances, strict=True)]
        path = tmp_path / name
        path.write_text(json.dumps(dict(env=env, per_episode=eps)))
        return str(path)

    seeds = list(range(100, 110))
    base = write("base.json", [False] * 5 + [True] * 5, [0.10] * 5 + [0.02] * 5, seeds)
    new_a = write("new_a.json", [True] * 3, [0.03] * 3, seeds[:3][::-1])  # shards, any order
    new_b = write("new_b.json", [True] * 7 + [False], [0.04] * 7 + [0.2], seeds[3:] + [999])
    c = compare([base], [new_b, new_a])
    assert (c["episodes"], c["unpaired"], c["won"], c["lost"]) == (10, 1, 5, 0)
    assert c["base_success_rate"] == 0.5 and c["new_success_rate"] == 1.0
    assert c["mcnemar_p"] == pytest.approx(2 / 2**5)
    assert c["base_outcomes"] == {"budget": 5, "success": 5} and c["new_outcomes"] == {"success": 10}
    assert c["new_mean_final_distance"] == pytest.approx(0.037)
    same = compare([base], [base])
    assert (same["won"], same["lost"], same["mcnemar_p"], same["wilcoxon_p"]) == (0, 0, 1.0, 1.0)
    run(PairedEvalsConfig(base=(base,), new=(new_a, new_b), json=str(tmp_path / "c.json")))
    assert json.loads((tmp_path / "c.json").read_text())["won"] == 5
    with pytest.raises(ValueError, match="share no episode seed"):
        compare([base], [write("far.json", [True], [0.0], [5])])
    with pytest.raises(ValueError, match="different envs"):
        compare([base], [write("reach.json", [True], [0.0], [100], env="ArmReach-v0")])
    with pytest.raises(ValueError, match="appears twice"):
        compare([base, base], [new_a])
