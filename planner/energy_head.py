"""A learned planning distance on top of frozen image latents: the energy head.

Why: an anti-collapse regularizer (SIGReg, VICReg) spreads latents over all D dimensions, so the few true
degrees of freedom of the scene (end effector xyz, gripper, block) are embedded on a curved manifold whose
straight-line distance saturates for far states (DESIGN 6: flat beyond ~10 cm). Planning needs a distance
that keeps growing with how far the goal really is.

What: a small MLP `m = head(z)` [.., D] -> [.., E], energy(z, g) = ||m(z) - m(g)||_2, fitted
self-supervised on the trajectories as a quasimetric-RL style reachability distance (Wang et al. 2023,
"Optimal goal-reaching RL via quasimetric learning"): make random pairs of states as far apart as possible
while every observed one-step transition stays within distance 1. The largest distance that respects all
transitions is the shortest number of steps between states, so the energy measures "steps to goal".
A random-pair distance is pushed up through a saturating transform (it stops pushing beyond `saturation`
steps) and the transition constraint is enforced with a learned Lagrange multiplier.

The head is fitted after the world model (latents frozen), in seconds to minutes on a CPU, and ships
inside the same checkpoint (`energy_head.*` weights, `architecture.energy_head` config).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

KINDS = ("reachability", "state")


@dataclass(frozen=True)
class EnergyHeadConfig:
    """Shape and fitting of the energy head."""

    dim: int = 16
    """Output dimension E of the embedding the energy is measured in."""
    hidden: int = 256
    """Hidden width of the 2-layer MLP."""
    steps: int = 4000
    """Optimisation steps of the fit (each one batch of transitions and one of random pairs)."""
    batch_size: int = 512
    """Transitions (and random pairs) per step."""
    lr: float = 1e-3
    """Adam learning rate of the head."""
    multiplier_lr: float = 0.5
    """Learning rate of the Lagrange multiplier of the transition constraint (starts at about 3)."""
    saturation: float = 50.0
    """Random pairs stop being pushed apart beyond about this many steps (set above the longest shortest
    path the task needs: a reach across the workspace is ~30 steps)."""
    slack: float = 0.02
    """Allowed mean squared excess of transition distances over 1 (the constraint's tolerance)."""
    seed: int = 0
    """Seed of the pair sampling and the head's initialisation."""
    kind: str = "reachability"
    """`reachability`: the self-supervised steps-to-goal distance above; `state`: a supervised readout of
    the recorded state (`fit_state_head`), so the energy is a distance in the state's units (metres in our
    arm envs). `state` needs stores that record proprio and task state (ours do; most real data has no
    task state) and ignores dim, saturation, slack and multiplier_lr."""
    state_proprio_dims: int = 4
    """state kind: leading proprio columns read (4 = end effector xyz + gripper opening in our arm envs)."""
    state_weights: tuple[float, float] = (1.0, 1.0)
    """state kind: weights of the proprio part and of the task-state part in the distance."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"energy head kind must be one of {KINDS}, got {self.kind!r}")
        if self.state_proprio_dims < 0 or len(self.state_weights) != 2 or min(self.state_weights) < 0:
            raise ValueError("state head needs state_proprio_dims >= 0 and two weights >= 0")
        if self.dim < 1 or self.hidden < 1 or self.steps < 1 or self.batch_size < 2:
            raise ValueError("energy head needs dim, hidden, steps >= 1 and batch_size >= 2")
        if self.saturation <= 1 or self.slack <= 0 or self.lr <= 0 or self.multiplier_lr <= 0:
            raise ValueError("energy head needs saturation > 1, slack > 0, lr > 0 and multiplier_lr > 0")

    def architecture(self) -> dict:
        """What a checkpoint must record to rebuild the module (not how it was fitted)."""
        return {"dim": self.dim, "hidden": self.hidden}

    def to_dict(self) -> dict:
        return asdict(self)


class EnergyHead(nn.Module):
    """z [..., D] -> m [..., E]; the planning energy is ||m(z) - m(goal)||_2."""

    def __init__(self, latent_dim: int, dim: int = 16, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., D] -> the last hidden layer [..., hidden], which the readout maps linearly to m(z)."""
        return self.net[:-1](z)

    @torch.no_grad()
    def rescale_inputs(self, dims: slice, factor: torch.Tensor) -> None:
        """Divide the first layer's weights on z's dims by factor [len(dims)], so that m reads z with those
        dimensions multiplied by factor exactly as it read z before."""
        first = self.net[0].weight  # [hidden, D]
        first[:, dims] /= factor.to(first)


@dataclass
class EnergyHeadFit:
    """Fit diagnostics: mean transition distance (should be <= ~1), mean random-pair distance (steps),
    the final Lagrange multiplier, and the constraint violation E[relu(d_trans - 1)^2]."""

    transition_distance: float
    random_pair_distance: float
    multiplier: float
    violation: float


def fit_energy_head(
    latents: list[torch.Tensor], latent_dim: int, cfg: EnergyHeadConfig, device="cpu", progress: bool = True
) -> tuple[EnergyHead, EnergyHeadFit]:
    """Fit a head on per-episode latent sequences (each float [T_i+1, D], consecutive frames = one step).

    Returns the head in eval mode on `device` and the final fit diagnostics.
    """
    from tqdm import trange

    latents = [z for z in latents if z.shape[0] >= 2]
    if not latents:
        raise ValueError("fitting the energy head needs at least one episode with two or more frames")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    all_z = torch.cat(latents).to(device=device, dtype=torch.float32)
    # index of every frame that has a successor in its episode
    starts, offset = [], 0
    for z in latents:
        starts.append(torch.arange(offset, offset + z.shape[0] - 1))
        offset += z.shape[0]
    has_next = torch.cat(starts)
    head = EnergyHead(latent_dim, cfg.dim, cfg.hidden).to(device)
    raw_multiplier = torch.full((), 3.0, device=device, requires_grad=True)
    opt = torch.optim.Adam([{"params": head.parameters(), "lr": cfg.lr},
                            {"params": [raw_multiplier], "lr": cfg.multiplier_lr}])
    n = all_z.shape[0]
    for _ in trange(cfg.steps, desc="energy head", disable=not progress, leave=False):
        i = has_next[torch.randint(len(has_next), (cfg.batch_size,), generator=gen)].to(device)
        a, b = (torch.randint(n, (cfg.batch_size,), generator=gen).to(device) for _ in range(2))
        m = head(torch.cat([all_z[i], all_z[i + 1], all_z[a], all_z[b]]))
        mi, mj, ma, mb = m.split(cfg.batch_size)
        d_trans = torch.linalg.vector_norm(mi - mj, dim=-1)
        d_rand = torch.linalg.vector_norm(ma - mb, dim=-1)
        violation = F.relu(d_trans - 1.0).square().mean()
        # saturating push: gradient ~1 below `saturation` steps, fading above it
        push = -F.softplus(cfg.saturation - d_rand, beta=0.1).mean()
        multiplier = F.softplus(raw_multiplier)
        # the head descends the Lagrangian -push + multiplier * (violation - slack); the multiplier ascends
        # it, which is what descending the last term (its sign flipped) does
        loss = -push + multiplier.detach() * violation - multiplier * (violation.detach() - cfg.slack)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.eval()
    fit = EnergyHeadFit(float(d_trans.detach().mean()), float(d_rand.detach().mean()),
                        float(F.softplus(raw_multiplier.detach())), float(violation.detach()))
    return head, fit


# ----------------------------------------------------------------------------------------------------------
# The state kind: a supervised readout


def state_targets(proprio, task_state, cfg: EnergyHeadConfig) -> torch.Tensor:
    """proprio [T, P] (or None when state_proprio_dims is 0), task_state [T, K] -> float32 [T, P' + K]: the
    first P' = state_proprio_dims proprio columns and the task state, each part times its weight."""
    w_p, w_t = cfg.state_weights
    parts = [torch.as_tensor(task_state, dtype=torch.float32) * w_t]
    if cfg.state_proprio_dims:
        if proprio is None or proprio.shape[1] < cfg.state_proprio_dims:
            raise ValueError(f"the state energy head reads {cfg.state_proprio_dims} proprio columns; these "
                             f"episodes have {None if proprio is None else proprio.shape[1]}")
        parts.insert(0, torch.as_tensor(proprio[:, :cfg.state_proprio_dims], dtype=torch.float32) * w_p)
    return torch.cat(parts, dim=1)


def state_column_weights(e_dim: int, proprio_dims: int, proprio_weight: float) -> torch.Tensor:
    """float[E] weights of a state head's readout columns: `proprio_weight` on the first `proprio_dims` (the
    proprio part, state_targets puts it first), 1 on the task state (a final goal's energy, planner
    calibrate --goal-proprio-weight)."""
    if not 0 < proprio_dims < e_dim:
        raise ValueError(f"a state head's {proprio_dims} proprio columns must be fewer than its {e_dim} "
                         "columns and at least one")
    weights = torch.ones(e_dim)
    weights[:proprio_dims] = proprio_weight
    return weights


@dataclass
class StateHeadFit:
    """Fit diagnostics of a state head: median absolute readout error per target column (weighted units)
    and its mean, on the fit data."""

    median_error: list[float]
    mean_median_error: float


def fit_state_head(latents: torch.Tensor, targets: torch.Tensor, cfg: EnergyHeadConfig, device="cpu",
                   progress: bool = True) -> tuple[EnergyHead, StateHeadFit]:
    """Regress targets [N, C] (state_targets) from latents [N, D] with an EnergyHead-shaped MLP (Adam,
    seeded) on standardized inputs and on targets centred by their medians and divided by one pooled
    robust scale (1.4826 x the median absolute deviation over all columns), with a Huber loss. One scale
    for all columns keeps the loss a distance in the targets' units (a near-constant column such as the
    gripper in push is not blown up); the robust scale and the Huber loss keep rare outliers (a block
    knocked off the table falls metres) from setting the scale or dominating the fit. The standardization
    is folded into the first and last layers, so head(z) reads the state directly and ||head(z) - head(g)||
    is a distance in its units."""
    from tqdm import trange

    z = latents.to(device=device, dtype=torch.float32)
    y = targets.to(device=device, dtype=torch.float32)
    if z.ndim != 2 or y.ndim != 2 or len(z) != len(y) or len(z) < 2:
        raise ValueError(f"state head needs latents [N, D] and targets [N, C] with N >= 2, got "
                         f"{tuple(z.shape)} and {tuple(y.shape)}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_mu, x_sd = z.mean(0), z.std(0).clamp_min(1e-6)
    y_mu = y.median(0).values
    y_sd = (1.4826 * (y - y_mu).abs().median()).clamp_min(1e-6).expand(y.shape[1])
    x, t = (z - x_mu) / x_sd, (y - y_mu) / y_sd
    head = EnergyHead(z.shape[1], y.shape[1], cfg.hidden).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    for _ in trange(cfg.steps, desc="state head", disable=not progress, leave=False):
        i = torch.randint(len(x), (min(cfg.batch_size, len(x)),), generator=gen).to(device)
        loss = F.huber_loss(head(x[i]), t[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        first, last = head.net[0], head.net[-1]
        first.bias -= (first.weight / x_sd) @ x_mu
        first.weight /= x_sd
        last.weight *= y_sd[:, None]
        last.bias.mul_(y_sd).add_(y_mu)
        err = (head(z) - y).abs().median(0).values.cpu()
    head.eval()
    return head, StateHeadFit(median_error=err.tolist(), mean_median_error=float(err.mean()))
