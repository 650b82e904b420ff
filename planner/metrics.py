"""World-model quality measured without planning: collapse, probes, k-step error, energy shape.

Everything here is a pure function of a model and/or latents; nothing is written or logged.
The pipeline is: `encode_episodes` once (images -> latents, the expensive part), then every metric
works on the returned `EncodedEpisodes`:

- `effective_rank`, `per_dim_std`, `collapse_stats`: collapse watch (cheap; the trainer uses them).
- `linear_probe_r2`: closed-form ridge probe from latents to a known state, R^2 on held-out episodes.
- `fit_mlp_probe`, `mlp_probe_r2`: the same question for a small MLP (is the state there at all).
- `kstep_prediction_error`: open-loop rollout error at k = 1..k_max vs the copy-last baseline, and the
  same with shuffled actions (action sensitivity).
- `imagination_error`: the same rollouts read through MLP probes, in the task's units (metres).
- `energy_rank_correlation`: Spearman rho between latent distance and true task distance over
  (state, goal) pairs, binned curve, and the bins where the latent distance stops increasing.
- `calibrate_goal_energy_threshold`: latent distance below which a state counts as at the goal.
- `plot_energy_curve`: scatter + binned curve to PNG.

The latent distance ("energy") used throughout is the Euclidean norm ||z - z_goal||_2 (`latent_distance`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from planner.preprocess import images_to_model_input

# ----------------------------------------------------------------------------------------------------------
# Encoding


@dataclass
class EncodedEpisodes:
    """Latents of whole episodes plus what the metrics compare them against (all on CPU).

    latents[i] float32 [T_i+1, D]; actions[i] float32 [T_i, A] (normalized); task_states[i] float32
    [T_i+1, K]; goal_latents float32 [N, D] and goal_task_states float32 [N, K] (None when the episodes
    carry no goal); proprio[i] float32 [T_i+1, P] (None when the episodes carry none).
    """

    latents: list[torch.Tensor]
    actions: list[torch.Tensor]
    task_states: list[np.ndarray]
    goal_latents: torch.Tensor | None = None
    goal_task_states: np.ndarray | None = None
    proprio: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = len(self.latents)
        if n == 0:
            raise ValueError("EncodedEpisodes needs at least one episode")
        if len(self.actions) != n or len(self.task_states) != n:
            raise ValueError(
                f"latents, actions and task_states must have one entry per episode, got "
                f"{n}, {len(self.actions)}, {len(self.task_states)}"
            )
        for i, (z, a, s) in enumerate(zip(self.latents, self.actions, self.task_states, strict=True)):
            if z.ndim != 2 or a.ndim != 2 or s.ndim != 2:
                raise ValueError(f"episode {i}: latents/actions/task_states must be 2-D, got "
                                 f"{tuple(z.shape)}, {tuple(a.shape)}, {tuple(s.shape)}")
            if z.shape[0] != a.shape[0] + 1 or s.shape[0] != z.shape[0]:
                raise ValueError(f"episode {i}: expected T+1 latents and task states for T actions, got "
                                 f"{z.shape[0]} latents, {s.shape[0]} task states, {a.shape[0]} actions")
        if self.proprio is not None and [len(p) for p in self.proprio] != [len(z) for z in self.latents]:
            raise ValueError("proprio must have one [T_i+1, P] array per episode, matching the latents")
        if (self.goal_latents is None) != (self.goal_task_states is None):
            raise ValueError("goal_latents and goal_task_states must be given together")
        if self.goal_latents is not None and (len(self.goal_latents) != n or len(self.goal_task_states) != n):
            raise ValueError(f"need one goal latent and goal task state per episode ({n}), got "
                             f"{len(self.goal_latents)} and {len(self.goal_task_states)}")

    @property
    def has_goals(self) -> bool:
        return self.goal_latents is not None

    def all_latents(self) -> torch.Tensor:
        """float32 [sum_i (T_i+1), D]: every frame's latent, episodes concatenated."""
        return torch.cat(self.latents)

    def all_task_states(self) -> np.ndarray:
        """float32 [sum_i (T_i+1), K]."""
        return np.concatenate(self.task_states)


@torch.no_grad()
def encode_images(model, images: np.ndarray, device: str | torch.device = "cpu",
                  batch_size: int = 256) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float32 [N,D] on CPU, encoded in batches of `batch_size` on `device`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for start in range(0, len(images), batch_size):
        x = images_to_model_input(np.ascontiguousarray(images[start:start + batch_size]), device=device)
        out.append(model.encode(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_episodes(model, episodes: Iterable, device: str | torch.device = "cpu",
                    batch_size: int = 256) -> EncodedEpisodes:
    """Encode every frame (and the goal image, when present) of each episode; iterates `episodes` once.

    An episode needs `images` uint8 [T+1,H,W,3], `actions` [T,A], `task_state` [T+1,K], and optionally
    `proprio` [T+1,P] and `goal_image` uint8 [H,W,3] with `goal_task_state` [K] (planner.store.Episode
    has all of them).
    """
    latents, actions, task_states, proprio, goal_images, goal_states = [], [], [], [], [], []
    for ep in episodes:
        latents.append(encode_images(model, ep.images, device, batch_size))
        actions.append(torch.as_tensor(np.asarray(ep.actions, dtype=np.float32)))
        task_states.append(np.asarray(ep.task_state, dtype=np.float32))
        if getattr(ep, "proprio", None) is not None:
            proprio.append(np.asarray(ep.proprio, dtype=np.float32))
        goal_image = getattr(ep, "goal_image", None)
        if goal_image is not None:
            goal_images.append(goal_image)
            goal_states.append(np.asarray(ep.goal_task_state, dtype=np.float32))
    has_goals = len(goal_images) == len(latents) and len(latents) > 0
    return EncodedEpisodes(
        latents=latents,
        actions=actions,
        task_states=task_states,
        goal_latents=encode_images(model, np.stack(goal_images), device, batch_size) if has_goals else None,
        goal_task_states=np.stack(goal_states) if has_goals else None,
        proprio=proprio if len(proprio) == len(latents) and len(latents) > 0 else None,
    )


@torch.no_grad()
def in_energy_space(model, encoded: EncodedEpisodes) -> EncodedEpisodes:
    """The same episodes with latents (and goal latents) mapped by `model.energy_embed`, so that the energy
    metrics and the goal-threshold calibration measure the distance the planner uses. Identity for models
    without an energy head."""
    embed = getattr(model, "energy_embed", None)
    if embed is None or getattr(model, "energy_head", None) is None:
        return encoded
    device = next(model.parameters()).device

    def mapped(z: torch.Tensor) -> torch.Tensor:
        return embed(z.to(device)).float().cpu()

    return EncodedEpisodes(
        latents=[mapped(z) for z in encoded.latents],
        actions=encoded.actions,
        task_states=encoded.task_states,
        goal_latents=None if encoded.goal_latents is None else mapped(encoded.goal_latents),
        goal_task_states=encoded.goal_task_states,
        proprio=encoded.proprio,
    )


def scale_columns(encoded: EncodedEpisodes, weights: torch.Tensor) -> EncodedEpisodes:
    """The same episodes with every latent's (and goal latent's) columns scaled by `weights` float[E]: an
    energy space's, weighted as a final goal's energy is (planner.mpc.goal_energy_weights)."""
    return replace(encoded, latents=[z * weights for z in encoded.latents],
                   goal_latents=None if encoded.goal_latents is None else encoded.goal_latents * weights)


def with_proprio_in_state(encoded: EncodedEpisodes, dims: int) -> EncodedEpisodes:
    """The same episodes with each frame's first `dims` proprio columns put before its task state
    ([T+1, dims + K]) and no goals, so that pair distances measure the hand and the task state together
    (a sub-goal image shows both): planner calibrate --subgoal-success-threshold."""
    if dims < 1:
        raise ValueError(f"need dims >= 1 proprio columns, got {dims}")
    if encoded.proprio is None:
        raise ValueError("these episodes carry no proprio")
    states = [np.concatenate([p[:, :dims], s], axis=1) for p, s in
              zip(encoded.proprio, encoded.task_states, strict=True)]
    return replace(encoded, task_states=states, goal_latents=None, goal_task_states=None)


def latent_distance(z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """The energy: ||z - goal||_2 over the last dim; [..., D], [..., D] -> [...]."""
    return torch.linalg.vector_norm(z - goal, dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Collapse watch


@torch.no_grad()
def effective_rank(latents: torch.Tensor) -> float:
    """exp(entropy of the normalized singular values) of the centred latents [N, D]; in [1, min(N, D)].

    About D for an isotropic cloud, 1 for a rank-1 set; a constant set (total collapse) gives 0.
    """
    if latents.ndim != 2 or latents.shape[0] < 2:
        raise ValueError(f"effective_rank needs latents [N>=2, D], got {tuple(latents.shape)}")
    x = latents.detach().float()
    s = torch.linalg.svdvals(x - x.mean(dim=0, keepdim=True))
    total = s.sum()
    if total <= 1e-12 * max(1.0, float(x.abs().max())):
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def per_dim_std(latents: torch.Tensor) -> torch.Tensor:
    """Standard deviation of each latent dimension: [N, D] -> [D] (same device)."""
    if latents.ndim != 2 or latents.shape[0] < 2:
        raise ValueError(f"per_dim_std needs latents [N>=2, D], got {tuple(latents.shape)}")
    return latents.detach().float().std(dim=0)


@torch.no_grad()
def collapse_stats(latents: torch.Tensor, dead_std: float = 1e-2) -> dict[str, float]:
    """Collapse summary of latents [N, D]: effective rank, std min/mean/max, share of dims below dead_std."""
    std = per_dim_std(latents)
    return {
        "effective_rank": effective_rank(latents),
        "dim": int(latents.shape[1]),
        "std_min": float(std.min()),
        "std_mean": float(std.mean()),
        "std_max": float(std.max()),
        "frac_dims_dead": float((std < dead_std).float().mean()),
    }


# ----------------------------------------------------------------------------------------------------------
# Linear probe


@dataclass
class ProbeResult:
    """Held-out R^2 of a ridge probe: per target [K] and their mean."""

    r2: list[float]
    mean_r2: float

    def to_dict(self) -> dict:
        return {"r2": self.r2, "mean_r2": self.mean_r2}


def linear_probe_r2(train_latents, train_targets, test_latents, test_targets,
                    ridge: float = 1e-3, min_target_std: float = 1e-3) -> ProbeResult:
    """Closed-form ridge regression latents -> targets, fit on train, scored on test.

    Latents [N, D] are standardized with the train mean/std (constant dims dropped to zero); targets
    [N, K] are centred with the train mean. The penalty is `ridge * N_train` on the standardized weights.
    R^2 per target = 1 - SSE / SST on the test set (SST about the test mean). A target whose test std is
    below `min_target_std` (1 mm for our metre-valued task states: the height of a block resting on the
    table in push) has no variance to explain: it gets NaN and stays out of the mean.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    xs_tr, ytr, xs_te, yte = _probe_data(train_latents, train_targets, test_latents, test_targets)
    ymu = ytr.mean(0)
    gram = xs_tr.T @ xs_tr + ridge * len(xs_tr) * np.eye(xs_tr.shape[1])
    w = np.linalg.lstsq(gram, xs_tr.T @ (ytr - ymu), rcond=None)[0]
    return _held_out_r2(yte, xs_te @ w + ymu, min_target_std)


def _probe_data(train_latents, train_targets, test_latents, test_targets):
    """Checked float64 probe data: (latents_train, targets_train, latents_test, targets_test), the latents
    standardized with the train mean/std (constant dims carry nothing: they standardize to 0)."""
    xtr, ytr = _as_2d_f64(train_latents, "train_latents"), _as_2d_f64(train_targets, "train_targets")
    xte, yte = _as_2d_f64(test_latents, "test_latents"), _as_2d_f64(test_targets, "test_targets")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"latents and targets need the same number of rows: train {len(xtr)} vs {len(ytr)}, "
                         f"test {len(xte)} vs {len(yte)}")
    if xtr.shape[1] != xte.shape[1] or ytr.shape[1] != yte.shape[1]:
        raise ValueError("train and test must have the same latent and target widths")
    if len(xtr) < 2 or len(xte) < 2:
        raise ValueError("a probe needs at least 2 train and 2 test rows")
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd > 1e-8, sd, np.inf)
    return (xtr - mu) / sd, ytr, (xte - mu) / sd, yte


def _held_out_r2(yte: np.ndarray, pred: np.ndarray, min_target_std: float) -> ProbeResult:
    """R^2 per target column of test targets yte [N, K] against predictions [N, K] (SST about the test mean;
    NaN, and left out of the mean, for a target whose test std is below min_target_std)."""
    sse = ((yte - pred) ** 2).sum(0)
    sst = ((yte - yte.mean(0)) ** 2).sum(0)
    varies = yte.std(0) >= max(min_target_std, 1e-12)
    r2 = [float(1.0 - e / t) if v else float("nan") for e, t, v in zip(sse, sst, varies, strict=True)]
    finite = [v for v in r2 if math.isfinite(v)]
    return ProbeResult(r2=r2, mean_r2=float(np.mean(finite)) if finite else float("nan"))


@dataclass
class MLPProbe:
    """A fitted MLP probe: latents [N, D] -> targets [N, K] (planner.metrics.fit_mlp_probe)."""

    net: torch.nn.Module
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    y_std: np.ndarray

    @torch.no_grad()
    def __call__(self, latents) -> np.ndarray:
        """latents [N, D] (tensor or array) -> float64 [N, K] in the targets' units."""
        x = (_as_2d_f64(latents, "latents") - self.x_mean) / self.x_std
        return self.net(torch.as_tensor(x, dtype=torch.float32)).double().numpy() * self.y_std + self.y_mean


def fit_mlp_probe(train_latents, train_targets, hidden: int = 256, steps: int = 3000, batch_size: int = 512,
                  lr: float = 1e-3, seed: int = 0) -> MLPProbe:
    """A 2-hidden-layer GELU MLP latents [N, D] -> targets [N, K], Adam on standardized inputs (the train
    mean/std; constant dims standardize to 0) and targets, seeded."""
    xtr, ytr = _as_2d_f64(train_latents, "train_latents"), _as_2d_f64(train_targets, "train_targets")
    if len(xtr) != len(ytr) or len(xtr) < 2:
        raise ValueError(f"latents and targets need the same number of rows (>= 2), got {len(xtr)} vs "
                         f"{len(ytr)}")
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd > 1e-8, sd, np.inf)
    ymu, ysd = ytr.mean(0), np.where(ytr.std(0) > 1e-12, ytr.std(0), 1.0)
    x = torch.as_tensor((xtr - mu) / sd, dtype=torch.float32)
    y = torch.as_tensor((ytr - ymu) / ysd, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                        nn.Linear(hidden, y.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        i = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)
        loss = (net(x[i]) - y[i]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return MLPProbe(net=net.eval(), x_mean=mu, x_std=sd, y_mean=ymu, y_std=ysd)


def mlp_probe_r2(train_latents, train_targets, test_latents, test_targets, min_target_std: float = 1e-3,
                 probe: MLPProbe | None = None, **fit_kwargs) -> ProbeResult:
    """Held-out R^2 of an MLP probe (fit_mlp_probe on train with `fit_kwargs`, or the given fitted `probe`),
    with the same R^2 rule as linear_probe_r2. Where the linear probe says whether a quantity is linear in
    the latent, this one says whether it is there at all."""
    _probe_data(train_latents, train_targets, test_latents, test_targets)  # shape checks
    probe = probe or fit_mlp_probe(train_latents, train_targets, **fit_kwargs)
    return _held_out_r2(_as_2d_f64(test_targets, "test_targets"), probe(test_latents), min_target_std)


def _as_2d_f64(x, what: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{what} must be [N, D] (or [N]), got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------------------------------------
# k-step prediction error and action sensitivity


@dataclass
class KStepResult:
    """Open-loop error per k = 1..k_max (lists of length k_max), mean over windows of ||.||^2.

    `ratio` = model / copy-last (< 1: better than predicting no change); `action_sensitivity` =
    error with shuffled actions / error with the true ones (> 1: the model uses the actions);
    `relative_error` = model error / total latent variance (scale-free).
    """

    k: list[int]
    model_error: list[float]
    copy_last_error: list[float]
    ratio: list[float]
    shuffled_error: list[float]
    action_sensitivity: list[float]
    relative_error: list[float]
    n_windows: int
    energy_error_median: float | None = None
    """With `energy=True`: median over windows of ||e(imagined z[t+k_max]) - e(encoded z[t+k_max])||_2, e =
    model.energy_embed (the planner's cost space: metres of hand and block for a state head)."""

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@torch.no_grad()
def kstep_prediction_error(model, encoded: EncodedEpisodes, history_len: int, k_max: int = 5,
                           device: str | torch.device = "cpu", batch_size: int = 512,
                           max_windows: int | None = 4096, seed: int = 0,
                           energy: bool = False) -> KStepResult:
    """Roll the predictor k_max steps from real latents and compare with the encoded future.

    A window starting at t uses z[t-K+1..t] and a[t-K+1..t-1] as history and a[t..t+k_max-1] as the
    plan; `model.rollout(z_hist [B,K,D], a_prev [B,K-1,A], actions [B,1,k_max,A]) -> [B,1,k_max,D]`.
    Shuffled: each window's plan is replaced by another window's (a derangement, history kept).
    At most `max_windows` windows (a seeded random subset) are used. `energy`: also read the k_max-step
    error in the energy head's space, from the same rollouts (KStepResult.energy_error_median).
    """
    if history_len < 1 or k_max < 1:
        raise ValueError(f"history_len and k_max must be >= 1, got {history_len} and {k_max}")
    z_hist, a_prev, plan, target, z_last = _windows(encoded, history_len, k_max)
    n = len(plan)
    if n < 2:
        raise ValueError(f"need at least 2 windows of {history_len - 1 + k_max} steps for k-step error "
                         f"(k_max={k_max}); episodes are too short or too few")
    gen = torch.Generator().manual_seed(seed)
    if max_windows is not None and n > max_windows:
        keep = torch.randperm(n, generator=gen)[:max_windows]
        z_hist, a_prev, plan, target, z_last = (t[keep] for t in (z_hist, a_prev, plan, target, z_last))
        n = max_windows
    order = torch.randperm(n, generator=gen)
    derange = torch.empty(n, dtype=torch.long)
    derange[order] = order.roll(-1)  # window order[i] takes the plan of window order[i+1]
    plan_shuffled = plan[derange]

    err = torch.zeros(k_max, dtype=torch.float64)
    err_shuf = torch.zeros(k_max, dtype=torch.float64)
    dist = []  # energy-space distances at k_max, true plans
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        zh, ap = z_hist[sl].to(device), a_prev[sl].to(device)
        tgt = target[sl].to(device)
        for acts, acc in ((plan[sl], err), (plan_shuffled[sl], err_shuf)):
            pred = model.rollout(zh, ap, acts.to(device)[:, None])[:, 0]  # [B, k_max, D]
            acc += ((pred.float() - tgt) ** 2).sum(-1).sum(0).double().cpu()
            if energy and acc is err:
                dist.append((model.energy_embed(pred[:, -1].float()) - model.energy_embed(tgt[:, -1]))
                            .norm(dim=-1).double().cpu())
    err, err_shuf = (err / n).tolist(), (err_shuf / n).tolist()
    copy = ((z_last[:, None] - target) ** 2).sum(-1).mean(0).double().tolist()
    total_var = float(encoded.all_latents().double().var(dim=0).sum())
    return KStepResult(
        k=list(range(1, k_max + 1)),
        model_error=err,
        copy_last_error=copy,
        ratio=[_safe_div(e, c) for e, c in zip(err, copy, strict=True)],
        shuffled_error=err_shuf,
        action_sensitivity=[_safe_div(s, e) for s, e in zip(err_shuf, err, strict=True)],
        relative_error=[_safe_div(e, total_var) for e in err],
        n_windows=n,
        energy_error_median=float(torch.cat(dist).median()) if energy else None,
    )


def _windows(encoded: EncodedEpisodes, history_len: int, k_max: int):
    """All windows: z_hist [N,K,D], a_prev [N,K-1,A], plan [N,k_max,A], target [N,k_max,D], z_last [N,D]."""
    z_hist, a_prev, plan, target = [], [], [], []
    for z, a in zip(encoded.latents, encoded.actions, strict=True):
        t = _window_starts(z.shape[0], history_len, k_max)
        if len(t) == 0:
            continue
        h = t[:, None] + torch.arange(-history_len + 1, 1)  # [n, K]
        f = t[:, None] + torch.arange(0, k_max)  # [n, k_max]
        z_hist.append(z[h])
        a_prev.append(a[h[:, :-1]])
        plan.append(a[f])
        target.append(z[f + 1])
    if not z_hist:
        d, a_dim = encoded.latents[0].shape[1], encoded.actions[0].shape[1]
        empty = torch.zeros
        return (empty(0, history_len, d), empty(0, history_len - 1, a_dim), empty(0, k_max, a_dim),
                empty(0, k_max, d), empty(0, d))
    z_hist_t = torch.cat(z_hist)
    return z_hist_t, torch.cat(a_prev), torch.cat(plan), torch.cat(target), z_hist_t[:, -1]


def _window_starts(n_frames: int, history_len: int, k_max: int) -> torch.Tensor:
    """Start frames t of the k-step windows of an episode of n_frames frames: K-1 <= t, t + k_max < n."""
    return torch.arange(history_len - 1, max(history_len - 1, n_frames - k_max))


@dataclass
class ImaginationError:
    """The model's open-loop imagination read in the task's units through MLP probes: per probed quantity
    (e.g. `task_state` = the block's position in metres), per k = 1..k_max, the distance between the probe's
    reading of the imagined latent and of the encoded true one (median, 90th percentile, and median over
    the windows in which the task state moves), beside the probe's own error on encoded frames
    (`probe_floor`: probe(true latent) against the true state, median).

    Displacement fidelity over the k_max steps, per quantity, in the windows where its true value moves by
    more than `displacement_threshold` (the pushes, for the block): `displacement_slope` = sum(d_im . d) /
    sum(|d|^2) (1: the imagined motion has the true size along the true direction; 0: the model imagines
    nothing moving) and `displacement_cosine` (median cosine between d_im and d), where d is the true
    displacement (recorded values) and d_im = probe(imagined z_t+k_max) - probe(z_t)."""

    k: list[int]
    median: dict[str, list[float]]
    p90: dict[str, list[float]]
    moving_median: dict[str, list[float]]
    probe_floor: dict[str, float]
    n_windows: int
    n_moving: int
    moving_threshold: float
    displacement_slope: dict[str, float]
    displacement_cosine: dict[str, float]
    n_displaced: dict[str, int]
    displacement_threshold: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def imagination_error(model, encoded: EncodedEpisodes, probes: dict[str, tuple[MLPProbe, slice]],
                      states: dict[str, list[np.ndarray]], history_len: int, k_max: int = 5,
                      device: str | torch.device = "cpu", batch_size: int = 512,
                      moving_threshold: float = 0.002,
                      displacement_threshold: float = 0.01) -> ImaginationError:
    """Roll the predictor k_max steps from every window of `encoded` (as kstep_prediction_error) and read
    predicted and encoded latents with fitted probes.

    probes: name -> (probe, columns): the quantity is probe(z)[:, columns] (e.g. the hand = the first three
    proprio columns); states: name -> per-episode true values [T_i+1, C] of the same columns (the probe
    floor). A window counts as moving when the task state moves more than `moving_threshold` (its units)
    between its start and its last frame.
    """
    if set(states) != set(probes):
        raise ValueError(f"states and probes must name the same quantities, got {sorted(states)} and "
                         f"{sorted(probes)}")
    z_hist, a_prev, plan, target, z_last = _windows(encoded, history_len, k_max)
    n = len(plan)
    if n < 1:
        raise ValueError(f"no window of {history_len - 1 + k_max} steps in these episodes (k_max={k_max})")
    pred = torch.cat([model.rollout(z_hist[s:s + batch_size].to(device), a_prev[s:s + batch_size].to(device),
                                    plan[s:s + batch_size].to(device)[:, None])[:, 0].float().cpu()
                      for s in range(0, n, batch_size)])  # [N, k_max, D]
    d = pred.shape[-1]
    starts = [_window_starts(z.shape[0], history_len, k_max).numpy() for z in encoded.latents]

    def displacement(values: list[np.ndarray]) -> np.ndarray:
        """Per-episode values [T_i+1, C] -> [N, C]: each window's change from its start to its last frame."""
        return np.concatenate([v[t + k_max] - v[t] for v, t in zip(values, starts, strict=True)])

    moving = np.linalg.norm(displacement(encoded.task_states), axis=-1) > moving_threshold
    median, p90, moving_median, floor, slope, cosine, n_displaced = {}, {}, {}, {}, {}, {}, {}
    for name, (probe, cols) in probes.items():
        read_pred = probe(pred.reshape(-1, d))[:, cols].reshape(n, k_max, -1)
        read_true = probe(target.reshape(-1, d))[:, cols].reshape(n, k_max, -1)
        err = np.linalg.norm(read_pred - read_true, axis=-1)  # [N, k_max]
        median[name] = np.median(err, 0).tolist()
        p90[name] = np.quantile(err, 0.9, axis=0).tolist()
        moving_median[name] = (np.median(err[moving], 0).tolist() if moving.any()
                               else [float("nan")] * k_max)
        truth = np.concatenate(states[name])
        floor[name] = float(np.median(np.linalg.norm(probe(encoded.all_latents())[:, cols] - truth, axis=-1)))
        true_d = displacement(states[name])
        imag_d = read_pred[:, -1] - probe(z_last)[:, cols]
        big = np.linalg.norm(true_d, axis=-1) > displacement_threshold
        n_displaced[name] = int(big.sum())
        if big.any():
            slope[name] = float(np.sum(imag_d[big] * true_d[big]) / np.sum(true_d[big] ** 2))
            cos = np.sum(imag_d[big] * true_d[big], -1) / np.maximum(
                np.linalg.norm(imag_d[big], axis=-1) * np.linalg.norm(true_d[big], axis=-1), 1e-12)
            cosine[name] = float(np.median(cos))
        else:
            slope[name] = cosine[name] = float("nan")
    return ImaginationError(k=list(range(1, k_max + 1)), median=median, p90=p90, moving_median=moving_median,
                            probe_floor=floor, n_windows=n, n_moving=int(moving.sum()),
                            moving_threshold=moving_threshold, displacement_slope=slope,
                            displacement_cosine=cosine, n_displaced=n_displaced,
                            displacement_threshold=displacement_threshold)


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


# ----------------------------------------------------------------------------------------------------------
# Energy shape: rank correlation, binned curve, flatness


@dataclass
class EnergyBin:
    """True-distance bin [lo, hi) -> latent distance mean/std over the pairs in it."""

    lo: float
    hi: float
    count: int
    mean: float
    std: float
    flat: bool
    """The mean latent distance rose by less than flat_tol x the bins' spread since the previous bin."""


@dataclass
class EnergyCorrelation:
    """Spearman rho between latent and true distance, the binned curve and its flat stretches.

    `spearman` keys: `within` (pairs inside one episode), `across` (pairs from two episodes), `all`
    (both), `goal` (each state vs its episode's goal image, the pairing planning uses; absent without
    goals). `goal_span` is the largest true distance that goals present (95th percentile of the goal
    pairing, or of all pairs without goals): flatness is checked only below it. `bins` / `flat_ranges`
    are over the state pairs; `goal_bins` / `goal_flat_ranges` over the goal pairing (None without goals).
    """

    spearman: dict[str, float]
    bins: list[EnergyBin]
    flat_ranges: list[tuple[float, float]]
    goal_span: float
    n_pairs: dict[str, int]
    true_distance: np.ndarray = field(repr=False)
    """float [M]: true distance of every pair used (within + across), for plots."""
    latent_distance: np.ndarray = field(repr=False)
    """float [M]: latent distance of the same pairs."""
    goal_true_distance: np.ndarray | None = field(default=None, repr=False)
    goal_latent_distance: np.ndarray | None = field(default=None, repr=False)
    goal_bins: list[EnergyBin] | None = None
    goal_flat_ranges: list[tuple[float, float]] | None = None

    def to_dict(self) -> dict:
        return {
            "spearman": self.spearman,
            "n_pairs": self.n_pairs,
            "goal_span": self.goal_span,
            "flat_ranges": [list(r) for r in self.flat_ranges],
            "bins": [b.__dict__ for b in self.bins],
            "goal_flat_ranges": (None if self.goal_flat_ranges is None
                                 else [list(r) for r in self.goal_flat_ranges]),
            "goal_bins": None if self.goal_bins is None else [b.__dict__ for b in self.goal_bins],
        }


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two equal-length 1-D arrays (NaN when either is constant)."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"spearman needs two arrays of equal length >= 3, got {len(x)} and {len(y)}")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def sample_pair_distances(encoded: EncodedEpisodes, n_pairs: int, rng: np.random.Generator,
                          across: bool) -> tuple[np.ndarray, np.ndarray]:
    """(true task distance [n], latent distance [n]) of random frame pairs: two different frames of one
    episode (`across=False`) or frames of two different episodes (`across=True`, needs >= 2 episodes)."""
    lengths = np.array([len(z) for z in encoded.latents])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n_eps = len(lengths)
    ep_a = rng.integers(0, n_eps, n_pairs)
    fa = (rng.random(n_pairs) * lengths[ep_a]).astype(np.int64)
    if across:
        if n_eps < 2:
            raise ValueError("pairs across episodes need at least 2 episodes")
        ep_b = (ep_a + rng.integers(1, n_eps, n_pairs)) % n_eps
        fb = (rng.random(n_pairs) * lengths[ep_b]).astype(np.int64)
    else:
        ep_b = ep_a
        fb = (fa + 1 + (rng.random(n_pairs) * (lengths[ep_a] - 1)).astype(np.int64)) % lengths[ep_a]
    i, j = offsets[ep_a] + fa, offsets[ep_b] + fb
    z, s = encoded.all_latents(), encoded.all_task_states().astype(np.float64)
    return np.linalg.norm(s[i] - s[j], axis=-1), latent_distance(z[i], z[j]).double().numpy()


def goal_pair_distances(encoded: EncodedEpisodes) -> tuple[np.ndarray, np.ndarray]:
    """Every state vs its own episode's goal: (true task distance [M], latent distance [M]), M = sum T_i+1."""
    if not encoded.has_goals:
        raise ValueError("these episodes carry no goal image / goal_task_state")
    pairs = zip(encoded.task_states, encoded.goal_task_states, encoded.latents, encoded.goal_latents,
                strict=True)
    true_d, lat_d = [], []
    for s, gs, z, gz in pairs:
        true_d.append(np.linalg.norm(s.astype(np.float64) - gs, axis=-1))
        lat_d.append(latent_distance(z, gz).double().numpy())
    return np.concatenate(true_d), np.concatenate(lat_d)


def energy_rank_correlation(encoded: EncodedEpisodes, n_pairs: int = 5000, seed: int = 0, n_bins: int = 10,
                            flat_tol: float = 0.2, min_bin_count: int = 10) -> EnergyCorrelation:
    """Rank correlation of ||z(s) - z(g)|| with the true task distance ||task_state(s) - task_state(g)||.

    `n_pairs` pairs are drawn within episodes and `n_pairs` across episodes (seeded). Bins split
    [0, goal_span] into `n_bins` equal widths; a bin is `flat` when its mean latent distance exceeds the
    previous counted bin's by less than `flat_tol` x their pooled std (both need `min_bin_count` pairs).
    """
    if n_pairs < 3:
        raise ValueError(f"n_pairs must be >= 3, got {n_pairs}")
    rng = np.random.default_rng(seed)
    true_d, lat_d, rho, counts = {}, {}, {}, {}
    for name in ("within", "across") if len(encoded.latents) >= 2 else ("within",):
        true_d[name], lat_d[name] = sample_pair_distances(encoded, n_pairs, rng, across=name == "across")
        rho[name] = spearman(true_d[name], lat_d[name])
        counts[name] = n_pairs
    td, ld = np.concatenate(list(true_d.values())), np.concatenate(list(lat_d.values()))
    rho["all"], counts["all"] = spearman(td, ld), len(td)

    goal_td = goal_ld = None
    if encoded.has_goals:
        goal_td, goal_ld = goal_pair_distances(encoded)
        rho["goal"], counts["goal"] = spearman(goal_td, goal_ld), len(goal_td)
        goal_span = float(np.quantile(goal_td, 0.95))
    else:
        goal_span = float(np.quantile(td, 0.95))

    bins = energy_bins(td, ld, hi=goal_span, n_bins=n_bins, flat_tol=flat_tol, min_count=min_bin_count)
    goal_bins = None
    if goal_td is not None:
        goal_bins = energy_bins(goal_td, goal_ld, hi=goal_span, n_bins=n_bins, flat_tol=flat_tol,
                                min_count=min_bin_count)
    return EnergyCorrelation(spearman=rho, bins=bins, flat_ranges=flat_ranges(bins), goal_span=goal_span,
                             n_pairs=counts, goal_bins=goal_bins,
                             goal_flat_ranges=None if goal_bins is None else flat_ranges(goal_bins),
                             true_distance=td, latent_distance=ld,
                             goal_true_distance=goal_td, goal_latent_distance=goal_ld)


def energy_bins(true_d: np.ndarray, lat_d: np.ndarray, hi: float, n_bins: int = 10, flat_tol: float = 0.2,
                min_count: int = 10) -> list[EnergyBin]:
    """Bin pairs by true distance over [0, hi) and mark bins where the latent distance stops rising."""
    if n_bins < 2 or not hi > 0:
        raise ValueError(f"energy_bins needs n_bins >= 2 and hi > 0, got {n_bins} and {hi}")
    edges = np.linspace(0.0, hi, n_bins + 1)
    which = np.digitize(true_d, edges) - 1
    bins, prev = [], None
    for b in range(n_bins):
        sel = lat_d[which == b]
        mean = float(sel.mean()) if len(sel) else float("nan")
        std = float(sel.std()) if len(sel) else float("nan")
        flat = False
        if len(sel) >= min_count:
            if prev is not None:
                spread = math.sqrt((prev.std ** 2 + std ** 2) / 2)
                flat = (mean - prev.mean) <= flat_tol * spread
            bins.append(EnergyBin(float(edges[b]), float(edges[b + 1]), len(sel), mean, std, flat))
            prev = bins[-1]
        else:
            bins.append(EnergyBin(float(edges[b]), float(edges[b + 1]), len(sel), mean, std, False))
    return bins


def flat_ranges(bins: list[EnergyBin]) -> list[tuple[float, float]]:
    """Merge consecutive flat bins into [lo, hi) true-distance ranges."""
    out: list[tuple[float, float]] = []
    for b in bins:
        if not b.flat:
            continue
        if out and math.isclose(out[-1][1], b.lo):
            out[-1] = (out[-1][0], b.hi)
        else:
            out.append((b.lo, b.hi))
    return out


# ----------------------------------------------------------------------------------------------------------
# Goal-reached threshold


@dataclass
class GoalThreshold:
    """Energy below which a state counts as at the goal, and how it was chosen.

    Rule: the `boundary_accept` quantile of the energy over near misses, pairs whose true distance lies in
    [success_threshold, band * success_threshold): an agent that stops when the energy falls below it stops
    at a state just outside success at most that often. `source`: `goal` (states vs their episode's goal
    image) or `states` (pairs of recorded states within episodes, used when too few states came near their
    goal). `recall`: share of pairs truly within the success threshold that the threshold accepts;
    `false_accept_rate`: share of all pairs beyond the success threshold that it accepts.
    """

    threshold: float
    boundary_accept: float
    band: float
    success_threshold: float
    source: str
    n_close: int
    n_band: int
    recall: float
    false_accept_rate: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def calibrate_goal_energy_threshold(encoded: EncodedEpisodes, success_threshold: float,
                                    boundary_accept: float = 0.05, band: float = 1.5, min_pairs: int = 20,
                                    n_pairs: int = 20000, seed: int = 0) -> GoalThreshold:
    """The goal_reached energy threshold by the rule of `GoalThreshold` (energies from `encoded`'s latents:
    map them with `in_energy_space` first when the model has an energy head)."""
    if not success_threshold > 0 or not 0 < boundary_accept < 1 or not band > 1:
        raise ValueError(f"need success_threshold > 0, 0 < boundary_accept < 1 and band > 1, got "
                         f"{success_threshold}, {boundary_accept} and {band}")

    def split(true_d):
        return true_d < success_threshold, (true_d >= success_threshold) & (true_d < band * success_threshold)

    source = "goal"
    true_d = lat_d = None
    if encoded.has_goals:
        true_d, lat_d = goal_pair_distances(encoded)
    if true_d is None or min(int(m.sum()) for m in split(true_d)) < min_pairs:
        source = "states"
        true_d, lat_d = sample_pair_distances(encoded, n_pairs, np.random.default_rng(seed), across=False)
    close, near_miss = split(true_d)
    n_close, n_band = int(close.sum()), int(near_miss.sum())
    if min(n_close, n_band) < min_pairs:
        raise ValueError(f"only {n_close} pairs closer than success_threshold={success_threshold} and "
                         f"{n_band} near misses; need {min_pairs} of each: use more episodes or more pairs")
    thr = float(np.quantile(lat_d[near_miss], boundary_accept))
    far = ~close
    return GoalThreshold(threshold=thr, boundary_accept=boundary_accept, band=band,
                         success_threshold=success_threshold, source=source, n_close=n_close, n_band=n_band,
                         recall=float((lat_d[close] <= thr).mean()),
                         false_accept_rate=float((lat_d[far] <= thr).mean()) if far.any() else float("nan"))


# ----------------------------------------------------------------------------------------------------------
# Plot


def plot_energy_curve(result: EnergyCorrelation, path: str | Path, title: str = "",
                      max_points: int = 4000, seed: int = 0) -> Path:
    """Scatter latent vs true distance (pairs, and goal pairs when present) + binned mean/std -> PNG.

    Red bands: flat ranges of the goal pairing (of the state pairs when there are no goals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    sel = rng.permutation(len(result.true_distance))[:max_points]
    ax.scatter(result.true_distance[sel], result.latent_distance[sel], s=3, alpha=0.25, color="tab:blue",
               label=f"state pairs (rho={result.spearman['all']:.2f})")
    if result.goal_true_distance is not None:
        gsel = rng.permutation(len(result.goal_true_distance))[:max_points]
        ax.scatter(result.goal_true_distance[gsel], result.goal_latent_distance[gsel], s=3, alpha=0.25,
                   color="tab:orange", label=f"state vs goal image (rho={result.spearman['goal']:.2f})")
    curves = [(result.bins, "black", "binned mean ± std (state pairs)")]
    if result.goal_bins is not None:
        curves.append((result.goal_bins, "saddlebrown", "binned mean ± std (goal pairs)"))
    for bins, color, label in curves:
        counted = [b for b in bins if b.count > 0]
        ax.errorbar([(b.lo + b.hi) / 2 for b in counted], [b.mean for b in counted],
                    yerr=[b.std for b in counted], color=color, marker="o", ms=3, capsize=2, label=label)
    flat = result.goal_flat_ranges if result.goal_flat_ranges is not None else result.flat_ranges
    for lo, hi in flat:
        ax.axvspan(lo, hi, color="red", alpha=0.12)
    ax.axvline(result.goal_span, color="gray", ls="--", lw=0.8, label="goal span (95th pct)")
    ax.set_xlabel("true task distance [m]")
    ax.set_ylabel("latent distance ||z - z_goal||")
    ax.set_title(title or "energy vs true distance (red: flat)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
