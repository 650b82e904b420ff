"""Trajectory optimizers: pure functions of an objective (they know nothing of models, envs or HTTP).

An objective maps candidate action sequences `float[B,S,H,A]` (B independent problems, S candidates each,
horizon H, action dim A, normalized to the bounds) to costs `float[B,S]` (lower is better).
`solve(objective, cfg, batch=B, horizon=H, action_dim=A, init=None, generator=g) -> Solution`.

Randomness: a single `torch.Generator` drives noise that is drawn once and shared by all B problems, so a
problem's result depends only on its own objective and the seed, never on what else is in the batch
(batched == each alone with the same seed). Pass a list of B generators for independent noise per problem.
Warm start: `init` float[B,H,A] is the initial guess (the mean for CEM/iCEM/MPPI/CMA-ES, the first restart
for GD); build it from a previous `Solution.state` with `shift_plan(state, executed_steps)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import numpy as np
import torch

Objective = Callable[[torch.Tensor], torch.Tensor]
"""actions float[B,S,H,A] -> cost float[B,S]."""

MAX_SAMPLES = 16384
"""Upper limit on candidates per iteration (samples; restarts for GD)."""
MAX_ITERATIONS = 500
"""Upper limit on optimizer iterations."""
MAX_HORIZON = 256
"""Upper limit on the planning horizon (steps)."""


@dataclass(frozen=True)
class SolverConfig:
    """Fields shared by every solver. Budgets are validated by `validate_budget`."""

    name: ClassVar[str] = ""
    samples: int = 256
    """Candidates per iteration and problem (GD: number of restarts)."""
    iterations: int = 5
    """Optimizer iterations (GD: Adam steps)."""
    init_std: float = 0.5
    """Initial sampling standard deviation in normalized action units."""
    low: float = -1.0
    """Lower action bound (normalized units)."""
    high: float = 1.0
    """Upper action bound (normalized units)."""
    max_step_norm: float | None = None
    """If set, every step's action vector is scaled down to at most this L2 norm."""
    binary_dims: tuple[int, ...] = ()
    """Action dimensions that take only their bounds: every candidate is snapped to the nearer of `low` and
    `high` there before it is scored (and so is the plan returned). For commands the training data only
    ever gave at their extremes, such as our arm's gripper (fully open or fully closed): a half-closed
    command is outside what the model has seen, and on the real arm a loose grip. Sampling solvers keep
    their distribution over the snapped values (a CEM mean of 0.6 closes in 80% of the candidates); GD's
    gradient moves such a dimension only by flipping it across the midpoint."""
    fixed_dims: tuple[tuple[int, float], ...] = ()
    """(dimension, value) pairs the solver does not search: every candidate holds the dimension at the value
    (normalized units, within [low, high]). For a command the task should never change, e.g. a gripper
    that a pushing task keeps closed. (Measured on our push model, which cannot see the fingers: holding
    the gripper closed or open plans worse than leaving it free; docs/BENCHMARKS.md, session 10.)"""


@dataclass(frozen=True)
class CEMConfig(SolverConfig):
    """Cross-entropy method: Gaussian around a mean, refit to the top-k elites each iteration."""

    name: ClassVar[str] = "cem"
    samples: int = 128
    """Candidates per iteration. 128, not 256: on the shipped reach model both reach 90% over the same 50
    episodes, at 72 ms against 115 ms per MPC step (docs/BENCHMARKS.md)."""
    elites: int = 32
    """Top-k candidates refit each iteration (clipped to samples)."""
    mean_momentum: float = 0.1
    """new mean = m * old mean + (1 - m) * elite mean."""
    std_momentum: float = 0.1
    """new std = m * old std + (1 - m) * elite std."""
    min_std: float = 0.05
    """Floor on the sampling std (keeps exploring)."""


@dataclass(frozen=True)
class ICEMConfig(CEMConfig):
    """iCEM (Pinneri et al. 2020): coloured noise, elites kept across iterations, decaying population."""

    name: ClassVar[str] = "icem"
    samples: int = 256
    """Population of the first iteration (it decays by `population_decay` per iteration)."""
    beta: float = 2.0
    """Noise colour exponent: power spectrum ~ 1/f^beta along time (0 white, 2 smooth)."""
    keep_elites: float = 0.3
    """Fraction of the previous iteration's elites re-evaluated in the next population."""
    population_decay: float = 1.25
    """Population of iteration i = max(2 * elites, samples / decay^i)."""


@dataclass(frozen=True)
class MPPIConfig(SolverConfig):
    """Model-predictive path integral: exponentially weighted average of perturbed sequences."""

    name: ClassVar[str] = "mppi"
    temperature: float = 0.1
    """Softmax temperature on cost differences (lower is greedier)."""
    noise_std: float = 0.5
    """Std of the perturbations around the current mean at the first iteration (normalized units)."""
    noise_decay: float = 0.85
    """The perturbation std is multiplied by this after every iteration (annealing; 1 = plain MPPI)."""


@dataclass(frozen=True)
class CMAESConfig(SolverConfig):
    """CMA-ES via the `cma` package: one strategy per problem, all populations in one objective call."""

    name: ClassVar[str] = "cmaes"
    samples: int = 64
    """Population size (lambda) per problem."""
    iterations: int = 10
    """Generations."""


@dataclass(frozen=True)
class GDConfig(SolverConfig):
    """Gradient descent with Adam through a differentiable objective, several restarts, clamped to bounds."""

    name: ClassVar[str] = "gd"
    samples: int = 8
    """Restarts (restart 0 starts at `init` or zero, the rest uniformly at random)."""
    iterations: int = 30
    """Adam steps."""
    lr: float = 0.1
    """Adam learning rate."""


SOLVERS: dict[str, type[SolverConfig]] = {
    c.name: c for c in (CEMConfig, ICEMConfig, MPPIConfig, CMAESConfig, GDConfig)
}


@dataclass
class Solution:
    """actions float[B,H,A] (best found), cost float[B], state float[B,H,A] (warm start for next solve)."""

    actions: torch.Tensor
    cost: torch.Tensor
    state: torch.Tensor


def make_solver(name: str, **overrides) -> SolverConfig:
    """Config for solver `name` (cem|icem|mppi|cmaes|gd) with field overrides; unknown names/fields raise."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of: {', '.join(SOLVERS)}")
    cls = SOLVERS[name]
    known = {f.name for f in fields(cls)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"solver {name!r} has no option(s) {bad}; known: {sorted(known)}")
    cfg = cls(**overrides)
    validate_budget(cfg.samples, cfg.iterations, 1)
    return cfg


def validate_budget(samples: int, iterations: int, horizon: int) -> None:
    """Raise ValueError naming the limit when a budget is < 1 or above its documented maximum."""
    for what, value, limit in (
        ("samples", samples, MAX_SAMPLES),
        ("iterations", iterations, MAX_ITERATIONS),
        ("horizon", horizon, MAX_HORIZON),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"{what} must be an integer, got {value!r}")
        if not 1 <= value <= limit:
            raise ValueError(f"{what} must be between 1 and {limit}, got {value}")


def validate_action_dims(binary_dims=(), fixed_dims=(), action_dim: int | None = None, low: float = -1.0,
                         high: float = 1.0) -> None:
    """Raise ValueError unless `binary_dims` (dimensions) and `fixed_dims` ((dimension, value) pairs) name
    distinct integer action dimensions (< action_dim if given), each fixed value finite in [low, high]."""
    fixed = [tuple(p) for p in fixed_dims]
    if any(len(p) != 2 for p in fixed):
        raise ValueError(f"fixed_dims must be (dimension, value) pairs, got {list(fixed_dims)}")
    for what, dims in (("binary_dims", list(binary_dims)), ("fixed_dims", [d for d, _ in fixed])):
        if any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0 for d in dims):
            raise ValueError(f"{what} must name action dimensions (integers >= 0), got {dims}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"{what} has repeats: {dims}")
        if action_dim is not None and any(d >= action_dim for d in dims):
            raise ValueError(f"{what} {dims} out of range for a {action_dim}-dimensional action")
    both = sorted(set(binary_dims) & {d for d, _ in fixed})
    if both:
        raise ValueError(f"dimension(s) {both} cannot be both binary and fixed")
    for d, v in fixed:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not low <= v <= high:
            raise ValueError(f"fixed_dims value for dimension {d} must be a number in [{low}, {high}] "
                             f"(normalized units), got {v!r}")


def action_dims_record(cfg: SolverConfig) -> dict:
    """The JSON record of the action dimensions a solver snaps or holds: {binary_dims: [d, ...],
    fixed_dims: {"d": value}} (eval results, GET /v1/models)."""
    return dict(binary_dims=list(cfg.binary_dims), fixed_dims={str(d): v for d, v in cfg.fixed_dims})


def with_action_dims(cfg: SolverConfig, source: SolverConfig) -> SolverConfig:
    """A copy of `cfg` constraining the action dimensions as `source` does (binary_dims, fixed_dims)."""
    return replace(cfg, binary_dims=source.binary_dims, fixed_dims=source.fixed_dims)


def with_fixed_dims(cfg: SolverConfig, extra: dict[int, float],
                    action_dim: int | None = None) -> SolverConfig:
    """A copy of `cfg` also holding the dimensions in `extra` ({dimension: normalized value}; they win over
    `cfg`'s own fixed or binary ones), validated (against `action_dim` when given)."""
    if not extra:
        return cfg
    held = {int(d): float(v) for d, v in extra.items()}
    fixed = tuple(sorted({**dict(cfg.fixed_dims), **held}.items()))
    binary = tuple(d for d in cfg.binary_dims if d not in held)
    validate_action_dims(binary, fixed, action_dim, cfg.low, cfg.high)
    return replace(cfg, fixed_dims=fixed, binary_dims=binary)


def shift_plan(actions: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """float[B,H,A] -> float[B,H,A]: drop the first `steps` executed actions, pad by repeating the last."""
    if steps < 0:
        raise ValueError(f"executed steps must be >= 0, got {steps}")
    h = actions.shape[1]
    if steps == 0:
        return actions.clone()
    steps = min(steps, h)
    last = actions[:, -1:].expand(-1, steps, -1)
    return torch.cat([actions[:, steps:], last], dim=1)


def solve(
    objective: Objective,
    cfg: SolverConfig,
    *,
    batch: int,
    horizon: int,
    action_dim: int,
    init: torch.Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    device: torch.device | str | None = None,
) -> Solution:
    """Minimize `objective` over action sequences float[batch,horizon,action_dim] with the solver `cfg`.

    Device: that of `init` if given, else `device`, else the generator's. `generator=None` seeds with 0.
    """
    validate_budget(cfg.samples, cfg.iterations, horizon)
    if batch < 1 or action_dim < 1:
        raise ValueError(f"batch and action_dim must be >= 1, got batch={batch}, action_dim={action_dim}")
    if cfg.low >= cfg.high:
        raise ValueError(f"action bounds need low < high, got [{cfg.low}, {cfg.high}]")
    validate_action_dims(cfg.binary_dims, cfg.fixed_dims, action_dim, cfg.low, cfg.high)
    gens = _generators(generator, batch)
    dev = torch.device(init.device if init is not None else device if device is not None else gens[0].device)
    if init is not None:
        if tuple(init.shape) != (batch, horizon, action_dim):
            raise ValueError(
                f"init must have shape (batch, horizon, action_dim) = {(batch, horizon, action_dim)}, "
                f"got {tuple(init.shape)}"
            )
        if not torch.isfinite(init).all():
            raise ValueError("init contains NaN or inf")
        init = _project(init.detach().float(), cfg)
    noise = _Noise(gens, batch, dev)
    if isinstance(cfg, ICEMConfig):
        return _icem(objective, cfg, batch, horizon, action_dim, init, noise, dev)
    if isinstance(cfg, CEMConfig):
        return _cem(objective, cfg, batch, horizon, action_dim, init, noise, dev)
    if isinstance(cfg, MPPIConfig):
        return _mppi(objective, cfg, batch, horizon, action_dim, init, noise, dev)
    if isinstance(cfg, CMAESConfig):
        return _cmaes(objective, cfg, batch, horizon, action_dim, init, noise, dev)
    if isinstance(cfg, GDConfig):
        return _gd(objective, cfg, batch, horizon, action_dim, init, noise, dev)
    raise TypeError(f"unknown solver config type {type(cfg).__name__}")


# ---------------------------------------------------------------------------------------------- helpers


def _generators(generator, batch: int) -> list[torch.Generator]:
    if generator is None:
        return [torch.Generator().manual_seed(0)]
    if isinstance(generator, torch.Generator):
        return [generator]
    gens = list(generator)
    if len(gens) != batch:
        raise ValueError(f"got {len(gens)} generators for a batch of {batch}; pass one or exactly {batch}")
    return gens


class _Noise:
    """Draws noise per problem: shared (one generator, broadcast over B) or one generator per problem."""

    def __init__(self, gens: list[torch.Generator], batch: int, device: torch.device):
        self.gens, self.batch, self.device = gens, batch, device

    def _draw(self, fn) -> torch.Tensor:
        parts = [fn(g).to(self.device) for g in self.gens]
        if len(parts) == 1:
            return parts[0].unsqueeze(0).expand(self.batch, *parts[0].shape)
        return torch.stack(parts)

    def normal(self, *shape: int) -> torch.Tensor:
        """float[B,*shape] standard normal."""
        return self._draw(lambda g: torch.randn(shape, generator=g, device=g.device))

    def uniform(self, *shape: int) -> torch.Tensor:
        """float[B,*shape] uniform in [0, 1)."""
        return self._draw(lambda g: torch.rand(shape, generator=g, device=g.device))

    def coloured(self, samples: int, horizon: int, dim: int, beta: float) -> torch.Tensor:
        """float[B,samples,horizon,dim]: unit-variance noise with power spectrum ~ 1/f^beta along time."""
        return self._draw(lambda g: _coloured_noise(samples, horizon, dim, beta, g))

    def seeds(self) -> list[int]:
        """One integer seed per problem (shared when there is one generator)."""
        s = [int(torch.randint(1, 2**31 - 1, (1,), generator=g, device=g.device)) for g in self.gens]
        return s * self.batch if len(s) == 1 else s


def _coloured_noise(samples: int, horizon: int, dim: int, beta: float, g: torch.Generator) -> torch.Tensor:
    """Power-law noise (the `colorednoise` package's recipe), float[samples,horizon,dim], unit variance."""
    if beta == 0 or horizon < 2:
        return torch.randn((samples, horizon, dim), generator=g, device=g.device)
    freqs = torch.fft.rfftfreq(horizon, device=g.device)
    freqs[0] = 1.0 / horizon
    scale = freqs ** (-beta / 2.0)
    w = scale[1:].clone()
    w[-1] *= (1 + (horizon % 2)) / 2.0
    sigma = 2.0 * torch.sqrt((w**2).sum()) / horizon
    real = torch.randn((samples, dim, scale.shape[0]), generator=g, device=g.device) * scale
    imag = torch.randn((samples, dim, scale.shape[0]), generator=g, device=g.device) * scale
    if horizon % 2 == 0:
        imag[..., -1] = 0.0
        real[..., -1] *= math.sqrt(2.0)
    imag[..., 0] = 0.0
    real[..., 0] *= math.sqrt(2.0)
    out = torch.fft.irfft(torch.complex(real, imag), n=horizon, dim=-1) / sigma
    return out.transpose(-1, -2).contiguous()


def _project(actions: torch.Tensor, cfg: SolverConfig) -> torch.Tensor:
    """Clamp to [low, high], snap `binary_dims` to the nearer bound, set `fixed_dims` and, if set, cap each
    step's L2 norm at max_step_norm (over the other dimensions). Shape preserved."""
    actions = actions.clamp(cfg.low, cfg.high)
    if cfg.binary_dims or cfg.fixed_dims:
        actions = actions.clone()
    if cfg.binary_dims:
        dims = list(cfg.binary_dims)
        mid = 0.5 * (cfg.low + cfg.high)
        actions[..., dims] = torch.where(actions[..., dims] >= mid, cfg.high, cfg.low)
    for d, v in cfg.fixed_dims:
        actions[..., d] = v
    if cfg.max_step_norm is not None:
        free = torch.ones(actions.shape[-1], dtype=torch.bool, device=actions.device)
        free[[*cfg.binary_dims, *(d for d, _ in cfg.fixed_dims)]] = False
        norm = (actions * free).norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scale = torch.where(free, (cfg.max_step_norm / norm).clamp(max=1.0), torch.ones_like(norm))
        actions = actions * scale
    return actions


def _evaluate(objective: Objective, actions: torch.Tensor) -> torch.Tensor:
    """Call the objective and check its output: actions [B,S,H,A] -> finite-checked cost [B,S]."""
    cost = objective(actions)
    if tuple(cost.shape) != tuple(actions.shape[:2]):
        raise ValueError(f"objective returned shape {tuple(cost.shape)}, expected {tuple(actions.shape[:2])}")
    return torch.nan_to_num(cost.float(), nan=float("inf"))


def _gather(actions: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """actions [B,S,H,A], idx [B,k] -> [B,k,H,A]."""
    return torch.gather(actions, 1, idx[:, :, None, None].expand(-1, -1, *actions.shape[2:]))


class _Best:
    """Tracks the best candidate seen per problem."""

    def __init__(self, batch: int, horizon: int, action_dim: int, device: torch.device):
        self.actions = torch.zeros(batch, horizon, action_dim, device=device)
        self.cost = torch.full((batch,), float("inf"), device=device)

    def update(self, actions: torch.Tensor, cost: torch.Tensor) -> None:
        c, i = cost.min(dim=1)
        better = c < self.cost
        self.cost = torch.where(better, c, self.cost)
        cand = _gather(actions, i[:, None])[:, 0]
        self.actions = torch.where(better[:, None, None], cand, self.actions)


# ---------------------------------------------------------------------------------------------- solvers


@torch.no_grad()
def _cem(objective, cfg: CEMConfig, b, h, a, init, noise: _Noise, dev) -> Solution:
    mean = init.clone() if init is not None else torch.zeros(b, h, a, device=dev)
    std = torch.full((b, h, a), cfg.init_std, device=dev)
    k = max(1, min(cfg.elites, cfg.samples))
    best = _Best(b, h, a, dev)
    for _ in range(cfg.iterations):
        cand = _project(mean[:, None] + std[:, None] * noise.normal(cfg.samples, h, a), cfg)
        cand[:, 0] = _project(mean, cfg)  # the current mean is always a candidate (keeps a good warm start)
        cost = _evaluate(objective, cand)
        best.update(cand, cost)
        elite = _gather(cand, cost.topk(k, dim=1, largest=False).indices)
        mean = cfg.mean_momentum * mean + (1 - cfg.mean_momentum) * elite.mean(1)
        e_std = elite.std(1, unbiased=False) if k > 1 else torch.zeros_like(mean)
        std = (cfg.std_momentum * std + (1 - cfg.std_momentum) * e_std).clamp_min(cfg.min_std)
    return Solution(best.actions, best.cost, _project(mean, cfg))


@torch.no_grad()
def _icem(objective, cfg: ICEMConfig, b, h, a, init, noise: _Noise, dev) -> Solution:
    mean = init.clone() if init is not None else torch.zeros(b, h, a, device=dev)
    std = torch.full((b, h, a), cfg.init_std, device=dev)
    k = max(1, min(cfg.elites, cfg.samples))
    best = _Best(b, h, a, dev)
    kept: torch.Tensor | None = None
    for i in range(cfg.iterations):
        n = max(2 * k, int(cfg.samples * cfg.population_decay ** (-i)))
        n = min(n, cfg.samples)
        cand = _project(mean[:, None] + std[:, None] * noise.coloured(n, h, a, cfg.beta), cfg)
        cand[:, 0] = _project(mean, cfg)
        if kept is not None:
            cand = torch.cat([cand, kept], dim=1)
        cost = _evaluate(objective, cand)
        best.update(cand, cost)
        top = cost.topk(min(k, cand.shape[1]), dim=1, largest=False).indices
        elite = _gather(cand, top)
        n_keep = int(round(cfg.keep_elites * elite.shape[1]))
        kept = elite[:, :n_keep] if n_keep > 0 else None
        mean = cfg.mean_momentum * mean + (1 - cfg.mean_momentum) * elite.mean(1)
        e_std = elite.std(1, unbiased=False) if elite.shape[1] > 1 else torch.zeros_like(mean)
        std = (cfg.std_momentum * std + (1 - cfg.std_momentum) * e_std).clamp_min(cfg.min_std)
    return Solution(best.actions, best.cost, _project(mean, cfg))


@torch.no_grad()
def _mppi(objective, cfg: MPPIConfig, b, h, a, init, noise: _Noise, dev) -> Solution:
    mean = init.clone() if init is not None else torch.zeros(b, h, a, device=dev)
    best = _Best(b, h, a, dev)
    for i in range(cfg.iterations):
        sigma = cfg.noise_std * cfg.noise_decay**i
        cand = _project(mean[:, None] + sigma * noise.normal(cfg.samples, h, a), cfg)
        cand[:, 0] = _project(mean, cfg)
        cost = _evaluate(objective, cand)
        best.update(cand, cost)
        finite = torch.isfinite(cost)
        shifted = torch.where(finite, cost - cost.min(dim=1, keepdim=True).values, torch.inf)
        w = torch.softmax(-shifted / cfg.temperature, dim=1)
        mean = _project((w[:, :, None, None] * cand).sum(1), cfg)
    final = _evaluate(objective, mean[:, None])
    best.update(mean[:, None], final)
    return Solution(best.actions, best.cost, mean)


def _cmaes(objective, cfg: CMAESConfig, b, h, a, init, noise: _Noise, dev) -> Solution:
    import cma

    n = h * a
    x0 = (init if init is not None else torch.zeros(b, h, a, device=dev)).reshape(b, n).cpu().double().numpy()
    span = cfg.high - cfg.low
    strategies = []
    for i, seed in enumerate(noise.seeds()):
        rng = np.random.RandomState(seed)
        opts = {
            "popsize": cfg.samples,
            "bounds": [cfg.low, cfg.high],
            "seed": np.nan,  # leave numpy's global RNG alone; sampling uses this problem's own generator
            "randn": rng.randn,
            "verbose": -9,
            "maxiter": cfg.iterations,
            "tolfun": 0,
            "tolx": 0,
            "tolfunhist": 0,
            "tolstagnation": 10**9,
            "CMA_diagonal": n > 100,  # full covariance is O(n^2) per sample; diagonal for long horizons
        }
        x = np.clip(x0[i], cfg.low + 1e-3 * span, cfg.high - 1e-3 * span)
        es = cma.CMAEvolutionStrategy(x, cfg.init_std, opts)
        if init is not None:
            es.inject([x], force=True)  # the warm start itself is a candidate of the first generation
        strategies.append(es)
    best = _Best(b, h, a, dev)
    for _ in range(cfg.iterations):
        pops = [np.asarray(es.ask(), dtype=np.float64) for es in strategies]
        raw = torch.as_tensor(np.stack(pops), dtype=torch.float32, device=dev).reshape(b, cfg.samples, h, a)
        cand = _project(raw, cfg)
        with torch.no_grad():
            cost = _evaluate(objective, cand)
        best.update(cand, cost)
        cost_np = cost.double().cpu().numpy()
        cost_np[~np.isfinite(cost_np)] = 1e30
        for es, pop, c in zip(strategies, pops, cost_np, strict=True):
            es.tell(list(pop), c.tolist())
    mean = torch.as_tensor(np.stack([es.mean for es in strategies]), dtype=torch.float32, device=dev)
    return Solution(best.actions, best.cost, _project(mean.reshape(b, h, a), cfg))


def _gd(objective, cfg: GDConfig, b, h, a, init, noise: _Noise, dev) -> Solution:
    r = cfg.samples
    start = cfg.low + (cfg.high - cfg.low) * noise.uniform(r, h, a)
    start = start.clone()
    start[:, 0] = init if init is not None else 0.0
    x = _project(start, cfg).detach().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    best = _Best(b, h, a, dev)
    with torch.enable_grad():
        for _ in range(cfg.iterations):
            cost = _evaluate(objective, x)
            if not cost.requires_grad:
                raise ValueError("gd needs a differentiable objective (the cost has no gradient)")
            best.update(x.detach(), cost.detach())
            opt.zero_grad(set_to_none=True)
            cost.sum().backward()
            opt.step()
            with torch.no_grad():
                x.copy_(_project(x, cfg))
    with torch.no_grad():
        final = _evaluate(objective, x.detach())
    best.update(x.detach(), final)
    return Solution(best.actions, best.cost, best.actions.clone())


def with_budget(
    cfg: SolverConfig, *, samples: int | None = None, iterations: int | None = None
) -> SolverConfig:
    """A copy of `cfg` with a new budget (validated); None keeps the current value."""
    out = replace(
        cfg,
        samples=cfg.samples if samples is None else samples,
        iterations=cfg.iterations if iterations is None else iterations,
    )
    validate_budget(out.samples, out.iterations, 1)
    return out
