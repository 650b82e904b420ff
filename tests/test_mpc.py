"""MPCAgent: drives a known linear system to its goal; warm starts as data; input validation; real model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from planner.checkpoint import Loaded
from planner.mpc import ActionSpec, MPCAgent, WarmStart, pad_history
from planner.objectives import ApproachColumns, ObjectiveConfig, horizon_weights, make_objective
from planner.solvers import make_solver
from planner.world_model import WorldModel, WorldModelConfig

S, D, A, K = 8, 2, 2, 2
B_MAT = torch.tensor([[0.2, 0.05], [-0.05, 0.2]])  # next = state + B a (a normalized)
NATIVE = 0.1  # native units: normalized 1 -> 0.1


class LinearModel:
    """Latent = state, read from the first pixels of the red channel; next = state + B a."""

    def __init__(self, b_mat: torch.Tensor = B_MAT):
        self.b_mat = b_mat

    def encode(self, images):  # [N,3,S,S] in [-1,1] -> [N,D]
        return images[:, 0, 0, :D].clone()

    def rollout(self, z_hist, a_prev, actions):  # [B,K,D], [B,K-1,A], [B,S,H,A] -> [B,S,H,D]
        steps = actions @ self.b_mat.T
        return z_hist[:, -1][:, None, None, :] + steps.cumsum(dim=2)


def render(state: np.ndarray) -> np.ndarray:
    """State in [-1,1]^D -> uint8 image [S,S,3] whose first red pixels hold it (model input = state)."""
    img = np.zeros((S, S, 3), np.uint8)
    img[0, :D, 0] = np.clip(np.round((state + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return img


def decode(img: np.ndarray) -> np.ndarray:
    return img[0, :D, 0].astype(np.float64) / 127.5 - 1.0


def fake_loaded(threshold=0.05, name="linear@000000000000"):
    config = {
        "action": {"dim": A, "low": [-NATIVE] * A, "high": [NATIVE] * A, "units": "m"},
        "history_len": K,
        "image": {"size": S},
        "goal_energy_threshold": threshold,
    }
    return SimpleNamespace(model=LinearModel(), config=config, name=name)


def agent(solver="cem", **kw):
    budgets = {"cem": dict(samples=128, iterations=4), "mppi": dict(samples=128, iterations=6),
               "gd": dict(samples=2, iterations=20)}
    return MPCAgent(fake_loaded(), make_solver(solver, **budgets[solver]), horizon=kw.pop("horizon", 6), **kw)


@pytest.mark.parametrize("solver", ["cem", "mppi", "gd"])
def test_drives_linear_system_to_goal(solver):
    ag = agent(solver)
    state, goal = np.array([-0.6, 0.5]), np.array([0.5, -0.4])
    z_goal = ag.encode_goal(render(goal))[None]
    frames, acts, warm = [render(state)], [], None
    for step in range(25):
        imgs, prev = pad_history(frames, acts, K, np.zeros(A, np.float32))
        plan = ag.plan(imgs[None], prev[None], z_goal, warm, seed=step)
        if plan.goal_reached[0]:
            break
        a = plan.actions_normalized[0, 0]
        assert np.allclose(plan.actions[0, 0], a * NATIVE, atol=1e-6)
        state = decode(render(state + (B_MAT.numpy() @ a)))
        frames.append(render(state))
        acts.append(plan.actions[0, 0])
        warm = plan.warm_start
    assert np.linalg.norm(state - goal) < 0.06, (step, state, goal)
    assert plan.goal_reached[0]


def test_warm_start_round_trip_and_rejection():
    ag = agent()
    imgs = np.stack([render(np.zeros(D))] * K)[None]
    prev = np.zeros((1, K - 1, A), np.float32)
    z_goal = ag.encode_goal(render(np.array([0.3, 0.3])))[None]
    plan = ag.plan(imgs, prev, z_goal)
    ws = plan.warm_start[0]
    again = WarmStart.from_dict(ws.to_dict())
    assert again == ws
    plan2 = ag.plan(imgs, prev, z_goal, [ws.to_dict()], executed_steps=1)
    assert plan2.actions.shape == (1, 6, A)
    other = MPCAgent(fake_loaded(name="other@111111111111"), "cem", horizon=6)
    with pytest.raises(ValueError, match="does not fit this planner"):
        other.plan(imgs, prev, z_goal, [ws])
    with pytest.raises(ValueError, match="does not fit this planner"):
        ag.with_planner(horizon=7).plan(imgs, prev, z_goal, [ws])
    with pytest.raises(ValueError, match="does not fit this planner"):
        ag.with_planner("mppi").plan(imgs, prev, z_goal, [ws])
    bad = ws.to_dict() | {"actions": [[0.0] * A] * 3}
    with pytest.raises(ValueError, match="warm_start actions must be 6x2"):
        ag.plan(imgs, prev, z_goal, [bad])
    with pytest.raises(ValueError, match="lacks"):
        ag.plan(imgs, prev, z_goal, [{"model": "x"}])


def test_warm_start_is_shifted_into_init():
    """A perfect warm start survives a 1-iteration solve; shifting drops executed steps."""
    ag = MPCAgent(fake_loaded(), make_solver("cem", samples=4, iterations=1), horizon=4)
    imgs = np.stack([render(np.zeros(D))] * K)[None]
    prev = np.zeros((1, K - 1, A), np.float32)
    z_goal = ag.encode_goal(render(np.array([0.8, 0.8])))[None]
    plan = ag.plan(imgs, prev, z_goal)
    ws = plan.warm_start[0]
    shifted = ag.plan(imgs, prev, z_goal, [ws], executed_steps=2).warm_start[0]
    assert np.asarray(shifted.actions).shape == (4, A)


def test_batched_plan_equals_each_alone():
    ag = agent()
    starts = [np.array([0.1, -0.2]), np.array([-0.5, 0.4])]
    goals = [np.array([0.5, 0.5]), np.array([0.0, -0.3])]
    imgs = np.stack([np.stack([render(s)] * K) for s in starts])
    prev = np.zeros((2, K - 1, A), np.float32)
    z_goal = ag.encode_goal(np.stack([render(g) for g in goals]))
    both = ag.plan(imgs, prev, z_goal, seed=3)
    for i in range(2):
        one = ag.plan(imgs[i : i + 1], prev[i : i + 1], z_goal[i : i + 1], seed=3)
        np.testing.assert_allclose(both.actions[i], one.actions[0], atol=1e-5)
        np.testing.assert_allclose(both.energy[i], one.energy[0], atol=1e-5)


def test_input_validation_messages():
    ag = agent()
    imgs = np.stack([render(np.zeros(D))] * K)[None]
    prev = np.zeros((1, K - 1, A), np.float32)
    z_goal = ag.encode_goal(render(np.zeros(D)))[None]
    with pytest.raises(ValueError, match="S=8"):
        ag.plan(np.zeros((1, K, 16, 16, 3), np.uint8), prev, z_goal)
    with pytest.raises(ValueError, match="uint8 RGB"):
        ag.plan(np.zeros((1, K, S, S, 4), np.uint8), prev, z_goal)
    with pytest.raises(ValueError, match="uint8"):
        ag.plan(imgs.astype(np.float32), prev, z_goal)
    with pytest.raises(ValueError, match=r"history_len=2"):
        ag.plan(imgs[:, :1], prev, z_goal)
    with pytest.raises(ValueError, match=r"prev_actions must be \[B,K-1,A\] = \[1,1,2\]"):
        ag.plan(imgs, np.zeros((1, K - 1, 3), np.float32), z_goal)
    with pytest.raises(ValueError, match="NaN"):
        ag.plan(imgs, np.full((1, K - 1, A), np.nan, np.float32), z_goal)
    with pytest.raises(ValueError, match="NaN"):
        ag.plan(imgs, prev, torch.full((1, D), float("nan")))
    with pytest.raises(ValueError, match="goal_latents must be"):
        ag.plan(imgs, prev, z_goal[0])
    with pytest.raises(ValueError, match="horizon must be between"):
        MPCAgent(fake_loaded(), "cem", horizon=0)
    with pytest.raises(ValueError, match="samples must be between"):
        ag.with_planner(samples=10**9)


def test_action_spec_round_trip_and_clipping():
    spec = ActionSpec.from_config({"low": [-0.05, -1.0], "high": [0.05, 1.0]})
    a = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)
    native = spec.to_native(a)
    np.testing.assert_allclose(native, [[0.025, -1.0], [0.05, 0.0]], atol=1e-7)
    np.testing.assert_allclose(spec.to_normalized(native), np.clip(a, -1, 1), atol=1e-6)
    with pytest.raises(ValueError, match="low < high"):
        ActionSpec.from_config({"low": [1.0], "high": [0.0]})


def test_objective_reductions_and_smoothness():
    model = LinearModel(0.2 * torch.eye(2))
    z = torch.zeros(1, K, D)
    goal = torch.tensor([[0.4, 0.0]])
    acts = torch.zeros(1, 2, 3, A)
    acts[0, 0, :, 0] = 1.0  # moves +0.2 per step in x: positions 0.2, 0.4, 0.6
    final = make_objective(model, z, z[:, :1, :A], goal, ObjectiveConfig(reduce="final"))(acts)
    assert final[0, 0].item() == pytest.approx(0.2, abs=1e-6)
    mean = make_objective(model, z, z[:, :1, :A], goal, ObjectiveConfig(reduce="mean"))(acts)
    assert mean[0, 0].item() == pytest.approx((0.2 + 0.0 + 0.2) / 3, abs=1e-6)
    l1 = make_objective(model, z, z[:, :1, :A], goal, ObjectiveConfig(distance="l1", reduce="final"))(acts)
    assert l1[0, 1].item() == pytest.approx(0.4, abs=1e-6)
    smooth = make_objective(model, z, z[:, :1, :A], goal, ObjectiveConfig(smoothness=1.0))
    jerky = torch.zeros(1, 1, 3, A)
    jerky[0, 0, 1, 0] = 1.0
    assert smooth(jerky)[0, 0] > make_objective(model, z, z[:, :1, :A], goal, ObjectiveConfig())(jerky)[0, 0]
    w = horizon_weights(4, ObjectiveConfig(reduce="weighted", discount=0.5))
    assert w.sum().item() == pytest.approx(1.0) and w[-1] > w[0]
    with pytest.raises(ValueError, match="reduce must be one of"):
        ObjectiveConfig(reduce="max")


class ReadoutModel:
    """Latent = a state head's readout [hand x, y, z, block x, y, z]; rollout holds it (actions unused)."""

    def energy_embed(self, z):
        return z

    def rollout(self, z_hist, a_prev, actions):  # -> [B,S,H,D]: the latest latent at every step
        return z_hist[:, -1][:, None, None, :].expand(-1, actions.shape[1], actions.shape[2], -1)


STATE_HEAD_CONFIG = {"architecture": {"energy_head_dim": 6},
                     "energy_head_fit": {"config": {"kind": "state", "state_proprio_dims": 3,
                                                    "state_weights": [1.0, 2.0]}}}


def test_approach_columns_come_from_a_state_head_only():
    cols = ApproachColumns.from_config(STATE_HEAD_CONFIG)
    assert (cols.hand, cols.block, cols.hand_scale, cols.block_scale) == (0, 3, 1.0, 2.0)
    learned = {"architecture": {"energy_head_dim": 16}, "energy_head_fit": {"config": {"kind": "learned"}}}
    assert ApproachColumns.from_config(learned) is None
    assert ApproachColumns.from_config({}) is None
    no_hand = {"architecture": {"energy_head_dim": 3},
               "energy_head_fit": {"config": {"kind": "state", "state_proprio_dims": 0}}}
    assert ApproachColumns.from_config(no_hand) is None


def test_approach_term_prefers_the_hand_behind_the_block():
    cols = ApproachColumns.from_config(STATE_HEAD_CONFIG)
    goal = torch.tensor([[0.0, 0.0, 0.0, 0.4, 0.0, 0.0]])  # block goal at x = 0.4 (readout x2: 0.2 m)
    behind = torch.tensor([0.055, 0.0, 0.03, 0.2, 0.0, 0.0])  # block at 0.1 m, hand 4.5 cm behind it
    beside = torch.tensor([0.1, 0.06, 0.03, 0.2, 0.0, 0.0])  # hand 6 cm to the block's side
    assert cols.approach_distance(behind, goal[0], 0.045).item() == pytest.approx(0.0, abs=1e-6)
    expected = float(np.hypot(0.045, 0.06))
    assert cols.approach_distance(beside, goal[0], 0.045).item() == pytest.approx(expected, abs=1e-6)
    near = torch.tensor([0.1, 0.06, 0.03, 0.36, 0.0, 0.0])  # block 2 cm from its goal: term scaled 2/4.5
    hand_to_pre = float(np.hypot(0.18 - 0.045 - 0.1, 0.06))
    assert cols.approach_distance(near, goal[0], 0.045).item() == pytest.approx(hand_to_pre * 0.02 / 0.045,
                                                                                rel=1e-5)
    at_goal = torch.tensor([0.1, 0.06, 0.03, 0.4, 0.0, 0.0])
    assert cols.approach_distance(at_goal, goal[0], 0.045).item() == pytest.approx(0.0, abs=1e-6)

    acts = torch.zeros(1, 1, 3, A)
    costs = {}
    for name, readout in (("behind", behind), ("beside", beside)):
        z = readout.expand(1, K, 6).clone()
        plain = make_objective(ReadoutModel(), z, z[:, :1, :A], goal, ObjectiveConfig())(acts)[0, 0]
        costs[name] = make_objective(ReadoutModel(), z, z[:, :1, :A], goal, ObjectiveConfig(approach=2.0),
                                     approach_columns=cols)(acts)[0, 0] - plain
    assert costs["behind"].item() == pytest.approx(0.0, abs=1e-6)
    assert costs["beside"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    z = behind.expand(1, K, 6).clone()
    with pytest.raises(ValueError, match="state energy head"):
        make_objective(ReadoutModel(), z, z[:, :1, :A], goal, ObjectiveConfig(approach=1.0))
    with pytest.raises(ValueError, match="approach must be"):
        ObjectiveConfig(approach=-1.0)


def tiny_real_agent(solver) -> MPCAgent:
    """An MPCAgent over a tiny randomly initialised real WorldModel (16x16 images, 8-d latent, horizon 3)."""
    torch.manual_seed(0)
    cfg = WorldModelConfig(image_size=16, latent_dim=8, history_len=2, enc_channels=(8, 8), enc_groups=4,
                           pred_hidden=16)
    config = {"action": {"dim": 4, "low": [-0.05] * 3 + [-1.0], "high": [0.05] * 3 + [1.0]},
              "history_len": 2, "image": {"size": 16}, "goal_energy_threshold": 0.1}
    return MPCAgent(Loaded(WorldModel(cfg).eval(), config, "tiny@0"), solver, horizon=3)


@pytest.mark.parametrize("solver", ["cem", "gd"])
def test_real_world_model_plans(solver):
    """A tiny randomly initialised real WorldModel: shapes, finite energies, native bounds, gradients."""
    ag = tiny_real_agent(make_solver(solver, samples=8, iterations=2))
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8)
    z_goal = ag.encode_goal(rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    plan = ag.plan(imgs, np.zeros((2, 1, 4), np.float32), z_goal)
    assert plan.actions.shape == (2, 3, 4) and np.all(np.isfinite(plan.energy))
    assert np.all(np.abs(plan.actions[..., :3]) <= 0.05 + 1e-7)
    assert plan.goal_reached.dtype == bool and plan.plan_ms > 0


class FixedEnergyAgent:
    """Stands in for MPCAgent in plan_through_subgoals: every plan reports the next scripted energy."""

    def __init__(self, energies):
        self.energies, self.targets = list(energies), []

    def plan(self, images, prev, goal, warm, executed_steps=1, seed=0, subgoal=False):
        self.targets.append(int(goal))
        return SimpleNamespace(current_energy=np.array([self.energies.pop(0)]), plan_ms=1.0)


def test_subgoal_patience_gives_up_a_stalled_subgoal_but_never_the_goal():
    from planner.mpc import SubgoalPatience, plan_through_subgoals

    targets = [0, 1, 2]  # two sub-goals, then the goal (the fake agent records which one it planned to)
    step = dict(images=np.zeros((1,)), prev_actions=np.zeros((1,)), targets=targets, warm=None, threshold=0.5)
    # sub-goal 0: 1.0, then 0.96 (< 5% better: a stall), 0.97 (stall 2 = patience) -> given up, re-planned
    # to sub-goal 1 at 0.4, within the threshold: reached -> the goal, which is never given up
    fake = FixedEnergyAgent([1.0, 0.96, 0.97, 0.4, 9.0, 9.0, 9.0, 9.0])
    patience = SubgoalPatience(2)
    target, reached = 0, []
    for _ in range(5):
        plan, target, passed, ms = plan_through_subgoals(fake, target=target, patience=patience, **step)
        reached += passed
    assert patience.skipped == [0] and reached == [1] and target == 2
    assert fake.targets == [0, 0, 0, 1, 2, 2, 2]
    # progress (a new best by 5%) resets the count; without patience a stalled sub-goal is kept forever
    p = SubgoalPatience(2)
    assert [p.stalled_on(e) for e in (1.0, 0.99, 0.9, 0.89, 0.88)] == [False, False, False, False, True]
    fake = FixedEnergyAgent([1.0] * 6)
    target = 0
    for _ in range(6):
        _, target, _, _ = plan_through_subgoals(fake, target=target, **step)
    assert target == 0
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="patience"):
            SubgoalPatience(bad)


def test_holding_agent_keeps_a_stage_dimension_fixed_and_shares_the_model():
    """MPCAgent.holding({3: 1.0}): every planned gripper command is 1.0 (closed); {} gives the agent
    itself; a held dimension stops being binary; a bad value is refused."""
    from planner.solvers import with_fixed_dims

    ag = tiny_real_agent(make_solver("cem", samples=8, iterations=2, binary_dims=(3,)))
    assert ag.holding({}) is ag
    held = ag.holding({3: 1.0})
    assert held.model is ag.model and held.solver.fixed_dims == ((3, 1.0),) and held.solver.binary_dims == ()
    assert ag.solver.binary_dims == (3,) and ag.solver.fixed_dims == ()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (1, 2, 16, 16, 3), dtype=np.uint8)
    goal = held.encode_goal(rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8))
    plan = held.plan(imgs, np.zeros((1, 1, 4), np.float32), goal)
    np.testing.assert_array_equal(plan.actions_normalized[..., 3], 1.0)
    for bad in ({3: 2.0}, {7: 1.0}):
        with pytest.raises(ValueError):
            ag.holding(bad)
    assert with_fixed_dims(make_solver("cem"), {}).fixed_dims == ()
    merged = with_fixed_dims(make_solver("cem", fixed_dims=((3, -1.0),)), {3: 1.0, 0: 0.5})
    assert merged.fixed_dims == ((0, 0.5), (3, 1.0))
