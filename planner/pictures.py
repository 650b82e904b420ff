"""`planner plots`: pictures of what a checkpoint's world model imagines (docs/MODEL.md, "Pictures").

Each picture has a function that computes its numbers and one that renders them to a PNG (matplotlib Agg):

1. Energy landscape (`mpc_state`, `energy_landscape`, `plot_energy_landscape`): at one closed-loop MPC
   state, the agent's plan [H,A] is shifted by a constant offset on two normalized action dims for the
   WHOLE sequence (every step gets the same offset, then is clipped to [-1, 1]); each shifted sequence is
   scored by the planner's own objective (`planner.objectives.make_objective` with the agent's
   ObjectiveConfig). Offset (0, 0) is the plan itself. Beside it, optionally, the same candidates scored
   by the true simulator (task distance with the same horizon weights; what the model should imagine).
2. Success versus sample budget (`read_sweeps`, `plot_success_vs_budget`): `planner eval --json` files,
   one line per solver, 95% Wilson intervals from the episode counts. Needs no model.
3. Predicted versus actual latents (`record_episode`, `latent_trajectories`, `plot_latent_pca`): an env
   episode under a policy is encoded frame by frame (actual), and the model rolls out open loop from the
   first K frames with the episode's actions (predicted); PCA (2 components) is fitted on the actual
   latents only and both are drawn in that plane. Per-step error ||predicted - actual|| and the
   copy-last baseline ||z[K-1] - actual|| are returned.
4. Decoder probe (`train_decoder_probe`, `decode_latents`, `plot_decoder_probe`): a small decoder fitted
   to FROZEN latents (computed under no_grad; the encoder gets no gradient) only to look at what a
   predicted latent resembles. It is a probe: never used for planning, never trained into the model.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from planner.evaluate import read_eval_json
from planner.mpc import MPCAgent, Plan, pad_history
from planner.objectives import make_objective
from planner.planner_defaults import PlannerDefaults
from planner.preprocess import Preprocessing, images_to_model_input, preprocess_image
from planner.seeding import planning_seed

# ------------------------------------------------------------------------------------------- helpers


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure as PNG atomically (temp file in the same directory, then os.replace); closes it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------- 1. energy landscape


@dataclass
class MPCState:
    """One closed-loop MPC state and the agent's plan there.

    images uint8 [K,S,S,3] (history, oldest first); prev_actions float32 [K-1,A] native; goal_latent
    float [D]; snapshot float64 (env physics state, for the true-cost landscape); plan: the agent's Plan
    (B = 1) at this state; step: env steps taken before it; distance: task distance [m] here."""

    images: np.ndarray
    prev_actions: np.ndarray
    goal_latent: torch.Tensor
    snapshot: np.ndarray
    plan: Plan
    step: int
    seed: int
    distance: float


def mpc_state(agent: MPCAgent, env, seed: int, steps: int) -> MPCState:
    """Reset `env` with `seed`, run `steps` closed-loop MPC steps (as `planner eval` does: warm start,
    per-step planning seed), then plan once more and return that state and plan."""
    if steps < 0:
        raise ValueError(f"landscape step must be >= 0, got {steps}")
    rule = Preprocessing.from_checkpoint_config(agent.loaded.config)
    u = env.unwrapped
    obs, info = env.reset(seed=seed)
    z_goal = agent.encode_goal(preprocess_image(info["goal_image"], rule))
    zero = agent.action_spec.to_native(np.zeros(agent.action_spec.dim, np.float32))
    frames, acts, warm = [preprocess_image(obs["image"], rule)], [], None
    for t in range(steps + 1):
        imgs, prev = pad_history(frames, acts, agent.history_len, zero)
        plan = agent.plan(imgs[None], prev[None], z_goal[None], warm, seed=planning_seed(seed, t))
        if t == steps:
            snap = u.get_snapshot().copy()
            return MPCState(imgs, prev, z_goal, snap, plan, steps, seed, float(u.distance()))
        obs, *_ = env.step(plan.actions_normalized[0, 0])
        frames.append(preprocess_image(obs["image"], rule))
        acts.append(plan.actions[0, 0])
        frames, acts, warm = frames[-agent.history_len:], acts[-agent.history_len:], plan.warm_start
    raise AssertionError("unreachable")


@dataclass
class Landscape:
    """Planning cost around a plan: offsets float[G] (normalized units, G odd, offsets[G//2] = 0) added to
    action dims `dims` = (x, y) at every horizon step, clipped to [-1, 1].

    cost float[G,G]: cost[i, j] is the objective with offset offsets[j] on dims[0] and offsets[i] on dims[1]
    (rows = y, as imshow draws it); plan float[H,A] normalized; plan_cost: the objective of the plan alone;
    true_cost float[G,G] | None: the same candidates scored by the simulator (task distance [m], same
    horizon weights)."""

    offsets: np.ndarray
    dims: tuple[int, int]
    cost: np.ndarray
    plan: np.ndarray
    plan_cost: float
    true_cost: np.ndarray | None = None

    @property
    def center(self) -> tuple[int, int]:
        """(row, col) of offset (0, 0): the plan's own cell."""
        c = len(self.offsets) // 2
        return c, c

    def argmin_offset(self, grid: np.ndarray) -> tuple[float, float]:
        """(x offset, y offset) of the grid's minimum."""
        i, j = np.unravel_index(int(np.argmin(grid)), grid.shape)
        return float(self.offsets[j]), float(self.offsets[i])

    def summary(self) -> dict:
        out = dict(dims=list(self.dims), offsets=self.offsets.tolist(), cost=self.cost.tolist(),
                   plan=self.plan.tolist(), plan_cost=self.plan_cost, cost_argmin_offset=self.argmin_offset(
                       self.cost), cost_min=float(self.cost.min()), cost_max=float(self.cost.max()))
        if self.true_cost is not None:
            out.update(true_cost=self.true_cost.tolist(), true_cost_argmin_offset=self.argmin_offset(
                self.true_cost), true_cost_plan=float(self.true_cost[self.center]),
                true_cost_min=float(self.true_cost.min()), spearman=self.spearman())
        return out

    def spearman(self) -> float:
        """Spearman rank correlation of the model cost with the true cost over the grid (NaN without it)."""
        if self.true_cost is None:
            return float("nan")
        ranks = [np.argsort(np.argsort(g.ravel(), kind="stable")) for g in (self.cost, self.true_cost)]
        return float(np.corrcoef(*ranks)[0, 1])


def landscape_candidates(plan: np.ndarray, dims: tuple[int, int], offsets: np.ndarray) -> np.ndarray:
    """plan float[H,A] -> candidates float32[G*G,H,A], row-major over (y offset, x offset), clipped."""
    g = len(offsets)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")  # [G,G] each: rows y, cols x
    cands = np.repeat(plan[None].astype(np.float32), g * g, axis=0)
    cands[:, :, dims[0]] += ox.reshape(-1, 1)
    cands[:, :, dims[1]] += oy.reshape(-1, 1)
    return np.clip(cands, -1.0, 1.0)


def check_dims(dims, action_dim: int) -> tuple[int, int]:
    """Validate two distinct action dims in [0, A)."""
    dims = tuple(int(d) for d in dims)
    if len(dims) != 2 or dims[0] == dims[1] or not all(0 <= d < action_dim for d in dims):
        raise ValueError(f"--dims must be two different action dimensions in 0..{action_dim - 1} "
                         f"(0=dx, 1=dy, 2=dz, 3=gripper for the arm tasks), got {list(dims)}")
    return dims  # type: ignore[return-value]


def energy_landscape(
    agent: MPCAgent,
    state: MPCState,
    dims: tuple[int, int] = (0, 1),
    grid: int = 41,
    span: float = 1.0,
    env=None,
    chunk: int = 256,
    progress: bool = False,
) -> Landscape:
    """Score the plan shifted over a GxG grid of offsets in [-span, span] on `dims` with the agent's own
    objective; with `env` (an env whose state is `state.snapshot`) also the true simulator cost."""
    from tqdm import tqdm

    dims = check_dims(dims, agent.action_spec.dim)
    if grid < 3 or grid % 2 == 0:
        raise ValueError(f"--grid must be odd and >= 3 (so offset 0, the plan itself, is a cell), got {grid}")
    if not 0.0 < span <= 2.0:
        raise ValueError(f"--span must be in (0, 2] (normalized action units), got {span}")
    offsets = np.linspace(-span, span, grid)
    plan = state.plan.actions_normalized[0]
    cands = landscape_candidates(plan, dims, offsets)
    objective = state_objective(agent, state)
    dev = agent.device
    costs = []
    with torch.no_grad():
        plan_cost = float(objective(torch.as_tensor(plan, device=dev)[None, None])[0, 0])
        for s in tqdm(range(0, len(cands), chunk), desc="landscape (model)", disable=not progress):
            batch = torch.as_tensor(cands[s:s + chunk], device=dev)[None]  # [1,C,H,A]
            costs.append(objective(batch)[0].cpu().numpy())
    cost = np.concatenate(costs).reshape(grid, grid)
    true_cost = None
    if env is not None:
        from planner.evaluate import simulator_objective

        sim = simulator_objective(env, state.snapshot, agent.objective)
        starts = tqdm(range(0, len(cands), chunk), desc="landscape (simulator)", disable=not progress)
        parts = [sim(torch.as_tensor(cands[s:s + chunk])[None])[0].numpy() for s in starts]
        true_cost = np.concatenate(parts).reshape(grid, grid)
    return Landscape(offsets, dims, cost, plan.copy(), plan_cost, true_cost)


def state_objective(agent: MPCAgent, state: MPCState):
    """The objective the agent's solver minimized at `state`: actions float[1,S,H,A] -> cost float[1,S]."""
    k = agent.history_len
    z = agent.encode(state.images).view(1, k, -1)
    a_prev = torch.as_tensor(agent.action_spec.to_normalized(state.prev_actions[None]), device=agent.device)
    return make_objective(agent.model, z, a_prev, state.goal_latent[None].to(agent.device), agent.objective)


DIM_NAMES = ("dx", "dy", "dz", "gripper")


def _dim_name(d: int) -> str:
    return DIM_NAMES[d] if d < len(DIM_NAMES) else f"a[{d}]"


def plot_energy_landscape(land: Landscape, path: str | os.PathLike, title: str = "") -> Path:
    """Heatmap(s) of the landscape: model cost (and true simulator cost) with the plan (offset 0) marked."""
    plt = pyplot()
    panels = [("imagined planning cost (model objective)", land.cost, "viridis")]
    if land.true_cost is not None:
        panels.append((f"true cost: simulator task distance [m], same candidates and horizon weights\n"
                       f"(Spearman with the imagined cost over the grid: {land.spearman():.2f})",
                       land.true_cost, "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    lo, hi = float(land.offsets[0]), float(land.offsets[-1])
    xname, yname = _dim_name(land.dims[0]), _dim_name(land.dims[1])
    for ax, (name, grid, cmap) in zip(axes[0], panels, strict=True):
        im = ax.imshow(grid, origin="lower", extent=(lo, hi, lo, hi), cmap=cmap, aspect="equal")
        ax.contour(land.offsets, land.offsets, grid, levels=10, colors="white", linewidths=0.4, alpha=0.6)
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.plot(0, 0, "x", color="red", ms=10, mew=2.5, label="plan (offset 0)")
        mx, my = land.argmin_offset(grid)
        ax.plot(mx, my, "*", color="white", mec="black", ms=13, label=f"grid minimum ({mx:+.2f}, {my:+.2f})")
        ax.set_xlabel(f"offset on {xname} (normalized, all {land.plan.shape[0]} steps)")
        ax.set_ylabel(f"offset on {yname} (normalized)")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
    fig.suptitle(title or "energy landscape around the plan", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- 2. success vs budget


@dataclass
class BudgetCurve:
    """One solver's sweep: samples int[n] ascending, success_rate float[n], episodes int[n], 95% Wilson
    interval low/high float[n], plan_ms_median float[n], iterations int[n], horizon int[n], files [n];
    the checkpoint and env they came from."""

    solver: str
    samples: np.ndarray
    success_rate: np.ndarray
    episodes: np.ndarray
    low: np.ndarray
    high: np.ndarray
    plan_ms_median: np.ndarray
    iterations: np.ndarray
    horizon: np.ndarray
    files: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    env: str | None = None

    def summary(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (successes out of n)."""
    if n <= 0:
        raise ValueError(f"episodes must be >= 1, got {n}")
    p = successes / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


SWEEP_KEYS = ("solver", "samples", "success_rate", "episodes")


def read_sweeps(paths: list[str | os.PathLike]) -> dict[str, BudgetCurve]:
    """`planner eval --json` files -> one BudgetCurve per solver. All files must be from one checkpoint
    and env; one (solver, samples) pair per file; errors name the file."""
    if not paths:
        raise ValueError("no sweep files given (the --sweeps glob matched nothing?)")
    rows: dict[str, dict[int, tuple]] = {}
    origin = None
    for p in sorted(str(x) for x in paths):
        d = read_eval_json(p, SWEEP_KEYS)
        here = (d.get("env"), d.get("checkpoint"))
        if origin is not None and here != origin[0]:
            raise ValueError(f"{p}: env/checkpoint {here} differ from {origin[1]}'s {origin[0]}; "
                             "plot one model's sweep at a time")
        origin = origin or (here, p)
        solver, samples = str(d["solver"]), int(d["samples"])
        if samples < 1 or int(d["episodes"]) < 1 or not 0.0 <= float(d["success_rate"]) <= 1.0:
            raise ValueError(f"{p}: samples and episodes must be >= 1 and success_rate in [0, 1]")
        if samples in rows.setdefault(solver, {}):
            other = rows[solver][samples][-1]
            raise ValueError(f"{p} and {other} both hold solver {solver} at {samples} samples")
        rows[solver][samples] = (float(d["success_rate"]), int(d["episodes"]),
                                 float(d.get("plan_ms_median", float("nan"))), int(d.get("iterations", -1)),
                                 int(d.get("horizon", -1)), p)
    curves = {}
    for solver, by_samples in sorted(rows.items()):
        ss = sorted(by_samples)
        rate = np.array([by_samples[s][0] for s in ss])
        eps = np.array([by_samples[s][1] for s in ss])
        ci = np.array([wilson_interval(r * n, n) for r, n in zip(rate, eps, strict=True)])
        curves[solver] = BudgetCurve(solver, np.array(ss), rate, eps, ci[:, 0], ci[:, 1],
                                     *(np.array([by_samples[s][i] for s in ss]) for i in (2, 3, 4)),
                                     [by_samples[s][5] for s in ss],
                                     checkpoint=origin[0][1], env=origin[0][0])
    return curves


def sweep_title(curves: dict[str, BudgetCurve]) -> str:
    """'checkpoint env, iterations, horizon' of the sweep files (read_sweeps checked the first two agree)."""
    c = next(iter(curves.values()))
    parts = [" ".join(str(x) for x in (c.checkpoint, c.env) if x) or "sweep"]
    for key in ("iterations", "horizon"):
        values = {int(v) for cv in curves.values() for v in getattr(cv, key)}
        parts.append(f"{key} {values.pop()}" if len(values) == 1 and -1 not in values else f"mixed {key}")
    return ", ".join(parts)


def plot_success_vs_budget(curves: dict[str, BudgetCurve], path: str | os.PathLike, title: str = "") -> Path:
    """Success rate vs samples per iteration (log2 x), one line per solver, shaded 95% Wilson interval."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for c in curves.values():
        n = "/".join(str(e) for e in sorted(set(c.episodes.tolist())))
        (line,) = ax.plot(c.samples, c.success_rate, "-o", ms=4, label=f"{c.solver} ({n} episodes per point)")
        ax.fill_between(c.samples, c.low, c.high, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    all_s = sorted({int(s) for c in curves.values() for s in c.samples})
    ax.set_xticks(all_s, [str(s) for s in all_s])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("samples per solver iteration (log2)")
    ax.set_ylabel("success rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    title = title or f"{sweep_title(curves)}\nsuccess vs sample budget (shaded: 95% Wilson interval)"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------- 3. predicted vs actual latents


def record_episode(env, rule: Preprocessing, policy: str, seed: int,
                   steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Run `policy` (envs.policies name) for `steps` steps from reset(seed) ->
    (frames uint8 [T+1,S,S,3] preprocessed, actions float32 [T,A] normalized)."""
    from envs.policies import make_policy

    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    pol = make_policy(policy, env, seed)
    pol.reset()
    obs, _ = env.reset(seed=seed)
    frames, actions = [preprocess_image(obs["image"], rule)], []
    for _ in range(steps):
        a = np.asarray(pol(obs), dtype=np.float32)
        obs, *_ = env.step(a)
        frames.append(preprocess_image(obs["image"], rule))
        actions.append(a)
    return np.stack(frames), np.stack(actions)


@dataclass
class LatentTrajectories:
    """actual float[T+1,D] (encoded frames); predicted float[T+1,D] (first `context` = actual, the rest
    the open-loop rollout); error float[T+1] = ||predicted - actual||; copy_last_error float[T+1] =
    ||z[context-1] - actual|| (NaN inside the context); pca_mean [D], pca_components [2,D],
    explained_variance_ratio [2] (fitted on actual only); actual_pc, predicted_pc float[T+1,2]."""

    actual: np.ndarray
    predicted: np.ndarray
    context: int
    error: np.ndarray
    copy_last_error: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    explained_variance_ratio: np.ndarray
    actual_pc: np.ndarray
    predicted_pc: np.ndarray

    def summary(self) -> dict:
        return dict(context=self.context, steps=len(self.actual) - 1, error=self.error.tolist(),
                    copy_last_error=[None if math.isnan(x) else x for x in self.copy_last_error.tolist()],
                    explained_variance_ratio=self.explained_variance_ratio.tolist(),
                    actual_pc=self.actual_pc.tolist(), predicted_pc=self.predicted_pc.tolist())


def pca_fit(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x float[N,D] -> (mean [D], components [k,D] (unit rows), explained variance ratio [k]) via SVD."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < k:
        raise ValueError(f"PCA needs [N>=2, D>={k}] data, got shape {x.shape}")
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    total = var.sum()
    ratio = var[:k] / total if total > 0 else np.zeros(k)
    return mean, vt[:k], ratio


@torch.no_grad()
def encode_frames(model, frames: np.ndarray, device: str | torch.device = "cpu",
                  batch: int = 256) -> torch.Tensor:
    """uint8 [N,S,S,3] -> latents float[N,D] on `device`."""
    return torch.cat([model.encode(images_to_model_input(frames[i:i + batch], device=device))
                      for i in range(0, len(frames), batch)])


@torch.no_grad()
def latent_trajectories(model, frames: np.ndarray, actions: np.ndarray,
                        device: str | torch.device = "cpu") -> LatentTrajectories:
    """frames uint8 [T+1,S,S,3], actions float [T,A] normalized; the model rolls out from the first K
    (its history length) encoded frames with actions[K-1:]."""
    k = int(model.history_len)
    frames, actions = np.asarray(frames), np.asarray(actions, dtype=np.float32)
    if frames.ndim != 4 or actions.ndim != 2 or len(actions) != len(frames) - 1:
        raise ValueError(f"need frames [T+1,S,S,3] and actions [T,A], got {frames.shape} and {actions.shape}")
    if len(actions) < k:
        raise ValueError(f"need at least {k} actions (steps) for a rollout after {k} context frames, "
                         f"got {len(actions)}")
    z = encode_frames(model, frames, device)  # [T+1,D]
    a = torch.as_tensor(actions, device=device)
    pred = model.rollout(z[None, :k], a[None, : k - 1], a[None, None, k - 1:])[0, 0]  # [T+1-k,D]
    actual = z.cpu().numpy().astype(np.float64)
    predicted = np.concatenate([actual[:k], pred.cpu().numpy().astype(np.float64)])
    error = np.linalg.norm(predicted - actual, axis=1)
    copy_last = np.linalg.norm(actual - actual[k - 1], axis=1)
    copy_last[:k] = np.nan
    mean, comps, ratio = pca_fit(actual, 2)
    return LatentTrajectories(actual, predicted, k, error, copy_last, mean, comps, ratio,
                              (actual - mean) @ comps.T, (predicted - mean) @ comps.T)


def plot_latent_pca(tr: LatentTrajectories, path: str | os.PathLike, title: str = "") -> Path:
    """PC1/PC2 of actual and predicted latents, coloured by time, starts marked; error vs step beside."""
    plt = pyplot()
    fig, (ax, ax_e) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw=dict(width_ratios=[1.2, 1]))
    t = np.arange(len(tr.actual))
    ax.plot(*tr.actual_pc.T, "-", color="0.55", lw=1, zorder=1)
    ax.plot(*tr.predicted_pc.T, "--", color="tab:red", lw=1, zorder=1)
    sc = ax.scatter(*tr.actual_pc.T, c=t, cmap="viridis", s=22, marker="o", zorder=2,
                    label="actual (encoded)")
    ax.scatter(*tr.predicted_pc.T, c=t, cmap="viridis", s=30, marker="^", edgecolors="tab:red",
               linewidths=0.6, zorder=3, label="predicted (open-loop rollout)")
    ax.plot(*tr.actual_pc[0], "s", ms=11, mfc="none", mec="black", mew=1.5, label="start")
    ax.plot(*tr.predicted_pc[tr.context - 1], "o", ms=13, mfc="none", mec="tab:red", mew=1.5,
            label=f"rollout starts (after {tr.context} context frames)")
    fig.colorbar(sc, ax=ax, label="env step")
    r = tr.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({r[0]:.0%} of actual variance)")
    ax.set_ylabel(f"PC2 ({r[1]:.0%})")
    ax.set_title("latent trajectory in the actual latents' PCA plane", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax_e.plot(t, tr.error, "-o", ms=3, color="tab:red", label="||predicted - actual||")
    ax_e.plot(t, tr.copy_last_error, "-", color="0.4", label=f"copy-last ||z[{tr.context - 1}] - actual||")
    ax_e.axvline(tr.context - 1, ls=":", color="k", lw=0.8)
    ax_e.set_xlabel("env step")
    ax_e.set_ylabel("latent L2 error (full D, not the PCA plane)")
    ax_e.set_title("per-step latent error of the open-loop rollout vs copying the last context latent",
                   fontsize=9)
    ax_e.grid(alpha=0.3)
    ax_e.legend(fontsize=8)
    fig.suptitle(title or "predicted vs actual latents", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------- 4. decoder probe


class ProbeDecoder(nn.Module):
    """Latent float[N,D] -> image float[N,3,S,S] in [-1, 1]; S a power of two >= 8. Probe only."""

    def __init__(self, latent_dim: int, image_size: int, width: int = 64):
        super().__init__()
        n_up = int(round(math.log2(image_size / 4)))
        if image_size < 8 or 4 * 2**n_up != image_size:
            raise ValueError(f"decoder probe needs a power-of-two image size >= 8, got {image_size}")
        self.width = width
        self.fc = nn.Linear(latent_dim, width * 16)
        layers: list[nn.Module] = []
        ch = width
        for i in range(n_up):
            out = 3 if i == n_up - 1 else max(ch // 2, 8)
            layers.append(nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1))
            if i < n_up - 1:
                layers.append(nn.GELU())
            ch = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.width, 4, 4)
        return torch.tanh(self.net(torch.nn.functional.gelu(x)))


def train_decoder_probe(latents: torch.Tensor, frames: np.ndarray, steps: int, batch: int = 32,
                        lr: float = 2e-3, seed: int = 0, device: str | torch.device = "cpu",
                        progress: bool = False) -> tuple[ProbeDecoder, list[float]]:
    """Fit a ProbeDecoder to (latents float[N,D], frames uint8 [N,S,S,3]) by pixel MSE. The latents are
    detached: no gradient reaches the encoder. Returns (decoder in eval mode, loss per step)."""
    from tqdm import tqdm

    if steps < 1:
        raise ValueError(f"--decoder-steps must be >= 1, got {steps}")
    if len(latents) != len(frames) or len(frames) < 2:
        raise ValueError(f"need matching latents and frames (N >= 2), got {len(latents)} and {len(frames)}")
    z = latents.detach().to(device)
    x = images_to_model_input(frames, device=device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dec = ProbeDecoder(z.shape[1], frames.shape[1]).to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="decoder probe", disable=not progress):
        idx = torch.randint(0, len(z), (min(batch, len(z)),), generator=gen).to(device)
        loss = torch.nn.functional.mse_loss(dec(z[idx]), x[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return dec.eval(), losses


@torch.no_grad()
def decode_latents(decoder: ProbeDecoder, z) -> np.ndarray:
    """latents [N,D] -> uint8 images [N,S,S,3]."""
    z = torch.as_tensor(np.asarray(z, dtype=np.float32)).to(next(decoder.parameters()).device)
    img = decoder(z).clamp(-1, 1).add(1).mul(127.5).round().byte()
    return img.movedim(1, -1).cpu().numpy()


def probe_columns(n_frames: int, context: int, columns: int = 8) -> np.ndarray:
    """Time steps to show: the last context frame, then evenly spaced rollout steps to the end."""
    return np.unique(np.linspace(context - 1, n_frames - 1, columns).round().astype(int))


def plot_decoder_probe(frames: np.ndarray, decoded_actual: np.ndarray, decoded_predicted: np.ndarray,
                       steps: np.ndarray, path: str | os.PathLike, context: int, title: str = "") -> Path:
    """Rows: actual frames, probe decoding of the actual latents (its ceiling), probe decoding of the
    predicted latents; columns: env steps `steps`. All image arrays uint8 [len(steps),S,S,3]."""
    plt = pyplot()
    rows = [("actual frame", frames), ("probe of the\nactual latent", decoded_actual),
            ("probe of the\npredicted latent", decoded_predicted)]
    n = len(steps)
    fig, axes = plt.subplots(3, n, figsize=(1.35 * n + 1.2, 4.8), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                t = int(steps[c])
                ax.set_title(f"t={t}" + (" (ctx)" if t < context else f" (+{t - context + 1})"), fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title or "PROBE ONLY: a decoder fitted to frozen latents to show what a predicted latent "
                 "looks like;\nnever used for planning, never trained into the encoder", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------- command


@dataclass
class PlotsConfig:
    """Draw what a checkpoint's world model imagines (energy landscape, latent PCA, decoder probe) and,
    from eval JSONs, success versus sample budget; writes PNGs and plots.json to --out."""

    checkpoint: str
    """Checkpoint directory (config.json + model.safetensors)."""
    out: str
    """Output directory for the PNGs and plots.json."""
    sweeps: str | None = None
    """Glob of `planner eval --json` files for success_vs_budget.png (quote it), e.g.
    'docs/results/reach_sweep_*.json'."""
    seed: int = 0
    """Base seed; the pictured episode is episode_seed(seed, 0, "eval"), decoder-probe episodes 1..N."""
    steps: int = 30
    """Env steps of the latent-trajectory episode (open-loop rollout length = steps - history_len + 1)."""
    policy: str = "explore"
    """Policy driving the latent-trajectory episode: explore | random | scripted (envs.policies)."""
    landscape_step: int = 5
    """Closed-loop MPC steps taken before the landscape's state."""
    dims: tuple[int, int] = (0, 1)
    """Two normalized action dims to offset (0=dx, 1=dy, 2=dz, 3=gripper)."""
    grid: int = 41
    """Grid points per axis (odd, so offset 0, the plan, is a cell)."""
    span: float = 1.0
    """Offsets run over [-span, span] normalized units, added to every step of the plan, then clipped."""
    true_cost: bool = True
    """Also score the landscape's candidates with the true simulator (task distance, same weights)."""
    solver: str | None = None
    """Solver of the agent: cem | icem | mppi | cmaes | gd (default: the checkpoint's `planner` solver,
    else cem)."""
    samples: int | None = None
    """Candidates per iteration (default: the checkpoint's budget for this solver, else the solver's)."""
    iterations: int | None = None
    """Solver iterations (default: the checkpoint's budget for this solver, else the solver's)."""
    horizon: int | None = None
    """Planning horizon (default: the checkpoint's `planner` horizon, else 15)."""
    decoder: bool = True
    """Draw decoder_probe.png (a probe decoder on frozen latents; --no-decoder skips it)."""
    decoder_steps: int = 1500
    """Probe decoder training steps."""
    decoder_episodes: int = 16
    """Fresh explore episodes (--steps steps each) rendered to train the probe decoder; the pictured
    episode is not among them."""
    device: str = "cpu"
    """Torch device (cpu, cuda, cuda:1)."""
    threads: int | None = None
    """torch CPU threads (1 is fastest on a busy machine; see docs/PLANNING.md)."""
    progress: bool = True
    """Show tqdm progress bars."""


def _validate(cfg: PlotsConfig) -> None:
    from envs.policies import POLICIES
    from planner.solvers import SOLVERS

    if cfg.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {cfg.steps}")
    if cfg.policy not in POLICIES:
        raise ValueError(f"unknown --policy {cfg.policy!r}; choose one of: {', '.join(POLICIES)}")
    if cfg.grid < 3 or cfg.grid % 2 == 0 or not 0.0 < cfg.span <= 2.0:
        raise ValueError(f"--grid must be odd and >= 3 and --span in (0, 2], got {cfg.grid} and {cfg.span}")
    if cfg.landscape_step < 0:
        raise ValueError(f"--landscape-step must be >= 0, got {cfg.landscape_step}")
    if cfg.solver is not None and cfg.solver not in SOLVERS:
        raise ValueError(f"unknown --solver {cfg.solver!r}; choose one of: {', '.join(SOLVERS)}")
    if cfg.decoder and (cfg.decoder_steps < 1 or cfg.decoder_episodes < 1):
        raise ValueError("--decoder-steps and --decoder-episodes must be >= 1")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {cfg.threads}")


def run(cfg: PlotsConfig) -> dict:
    """Compute and draw every picture; returns the plots.json object (also written atomically)."""
    from envs import make_env, task_kwargs
    from planner.checkpoint import load
    from planner.evaluate import write_json_atomic
    from planner.seeding import episode_seed
    _validate(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    sweep_files = sorted(glob.glob(cfg.sweeps)) if cfg.sweeps else []
    if cfg.sweeps and not sweep_files:
        raise ValueError(f"--sweeps {cfg.sweeps!r} matched no files")
    curves = read_sweeps(sweep_files) if sweep_files else None  # fail on bad sweeps before the slow parts
    ckpt = Path(cfg.checkpoint)
    if not ckpt.is_dir():
        raise ValueError(f"--checkpoint {ckpt} is not a directory (want config.json + model.safetensors)")
    loaded = load(ckpt, cfg.device)
    ck = loaded.config
    if ck["model_type"] == "gcbc":
        raise ValueError(f"{ckpt} is a gcbc policy: it imagines nothing; plots need a world model checkpoint")
    dims = check_dims(cfg.dims, int(ck["action"]["dim"]))
    train = ck.get("training_data", {})
    env_id = train.get("env_id")
    if not env_id:
        raise ValueError(f"{ckpt}/config.json names no training env (training_data.env_id)")
    env = make_env(env_id, **task_kwargs(train.get("env_kwargs", {})))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rule = Preprocessing.from_checkpoint_config(ck)
    solver_cfg, horizon = PlannerDefaults.from_config(ck).resolve(cfg.solver, cfg.horizon, cfg.samples,
                                                                  cfg.iterations)
    agent = MPCAgent(loaded, solver_cfg, horizon=horizon, device=cfg.device)
    seed = episode_seed(cfg.seed, 0, "eval")
    result: dict = dict(checkpoint=loaded.name, checkpoint_path=str(ckpt), env=env_id, seed=cfg.seed,
                        episode_seed=seed, files={})

    try:
        # 1. energy landscape
        state = mpc_state(agent, env, seed, cfg.landscape_step)
        land = energy_landscape(agent, state, dims, cfg.grid, cfg.span, env=env if cfg.true_cost else None,
                                progress=cfg.progress)
        objective = asdict(agent.objective)
        plot_energy_landscape(land, out / "energy_landscape.png", title=(
            f"{loaded.name} {env_id}: plan at MPC step {state.step} (seed {cfg.seed}, "
            f"{solver_cfg.name} {solver_cfg.samples}x{solver_cfg.iterations}, H={horizon}, objective "
            f"{objective['distance']}/{objective['reduce']});\n"
            f"task distance here {state.distance * 100:.1f} cm"))
        result["energy_landscape"] = dict(step=state.step, distance_m=state.distance, solver=solver_cfg.name,
                                          samples=solver_cfg.samples, iterations=solver_cfg.iterations,
                                          horizon=horizon, objective=objective,
                                          offset_applies_to="every step of the plan", **land.summary())
        result["files"]["energy_landscape"] = "energy_landscape.png"

        # 3. predicted vs actual latents
        frames, actions = record_episode(env, rule, cfg.policy, seed, cfg.steps)
        tr = latent_trajectories(loaded.model, frames, actions, cfg.device)
        plot_latent_pca(tr, out / "latent_pca.png", title=(
            f"{loaded.name} {env_id}: {cfg.policy} episode of {cfg.steps} steps (seed {cfg.seed}); "
            f"open-loop rollout from {tr.context} frames with the episode's actions"))
        result["latent_pca"] = dict(policy=cfg.policy, **tr.summary())
        result["files"]["latent_pca"] = "latent_pca.png"

        # 4. decoder probe
        if cfg.decoder:
            # episodes 1..N: the pictured episode (index 0) is not in the probe's training set
            pool = np.concatenate([
                record_episode(env, rule, "explore", episode_seed(cfg.seed, i, "eval"), cfg.steps)[0]
                for i in range(1, cfg.decoder_episodes + 1)])
            z_pool = encode_frames(loaded.model, pool, cfg.device)
            dec, losses = train_decoder_probe(z_pool, pool, cfg.decoder_steps, seed=cfg.seed,
                                              device=cfg.device, progress=cfg.progress)
            cols = probe_columns(len(frames), tr.context)
            dec_actual = decode_latents(dec, tr.actual[cols])
            dec_pred = decode_latents(dec, tr.predicted[cols])
            plot_decoder_probe(
                frames[cols], dec_actual, dec_pred, cols, out / "decoder_probe.png", tr.context,
                title=f"PROBE ONLY ({loaded.name}): a decoder fitted for {cfg.decoder_steps} steps to frozen "
                f"latents of {len(pool)} other frames,\nto show what a predicted latent looks like; never "
                "used for planning, never trained into the encoder")

            def mse(a, b):
                return float(np.mean(((a.astype(np.float64) - b.astype(np.float64)) / 127.5) ** 2))

            result["decoder_probe"] = dict(
                note="probe only: decoder on frozen latents, not used for planning or training",
                train_frames=len(pool), steps=cfg.decoder_steps, final_loss=float(np.mean(losses[-20:])),
                columns=cols.tolist(), pixel_mse_actual=mse(dec_actual, frames[cols]),
                pixel_mse_predicted=mse(dec_pred, frames[cols]))
            result["files"]["decoder_probe"] = "decoder_probe.png"
    finally:
        env.close()

    # 2. success vs budget
    if curves is not None:
        plot_success_vs_budget(curves, out / "success_vs_budget.png",
                               title=f"{sweep_title(curves)}\nsuccess vs sample budget (shaded: 95% Wilson "
                               "interval)")
        result["success_vs_budget"] = {s: c.summary() for s, c in curves.items()}
        result["files"]["success_vs_budget"] = "success_vs_budget.png"
    write_json_atomic(out / "plots.json", result)
    return result
