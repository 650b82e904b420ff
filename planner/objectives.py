"""Planning objectives: candidate action sequences -> cost, built from a world model and a goal latent.

The energy everywhere (goal_reached, calibration in planner.metrics, reports) is the Euclidean distance
||e(z) - e(z_goal)||_2 where e = model.energy_embed: the learned energy head when the checkpoint has one
(planner.energy_head), else the identity on latents. The planning cost may differ from it: L1 or L2, at
the final step or averaged/weighted over the horizon, plus an optional action-smoothness term. Our world
models do not predict proprioception, so there is no proprio term (a goal's proprio is not used for planning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

DISTANCES = ("l2", "l1")
REDUCTIONS = ("final", "mean", "weighted")
SPACES = ("latent", "pixel")


@dataclass(frozen=True)
class ObjectiveConfig:
    """How imagined latents are scored against the goal latent."""

    distance: str = "l2"
    """`l2`: Euclidean norm (the energy); `l1`: sum of absolute differences."""
    reduce: str = "weighted"
    """`final`: distance after the last action; `mean`: average over the horizon; `weighted`: weights
    discount^(H-1-h), normalized to sum 1 (the final step weighs most)."""
    discount: float = 0.8
    """Per-step weight decay backwards from the final step (only for reduce=weighted)."""
    smoothness: float = 0.0
    """Weight of the mean squared difference between consecutive actions (normalized units)."""
    space: str = "latent"
    """`latent`: distances between latents; `pixel`: between frames decoded from the imagined latents and
    the decoded goal latent, per pixel (RMS for l2, mean for l1); needs a model with `decode` (model_type
    pixel, planner.pixel_model)."""
    disagreement: float = 0.0
    """w > 0: every ensemble member (a model with pred_ensemble > 1) imagines each candidate, and the cost is
    mean_m c_m + w * std_m c_m over the members' costs c_m, so that a plan only some members believe in
    costs more (a search exploits one model's errors; docs/PLANNING.md). 0: member 0 alone."""
    approach: float = 0.0
    """w > 0 (a state energy head that reads the hand's and the object's xy, `ApproachColumns`): add w times
    the distance from the imagined hand's xy to the point `approach_offset` behind the imagined block on the
    line from the block to the goal's block, the push's pre-contact point, scaled down linearly when the
    block is within `approach_offset` of the goal; reduced over the horizon like the distance. A pushing
    plan whose hand is not behind the block costs more, so the search prefers going round the block to
    pushes the model only imagines (docs/PLANNING.md, "Approach term"). 0: off."""
    approach_offset: float = 0.045
    """Metres behind the block's centre of the approach term's point (the push's resting hand distance)."""

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"objective space must be one of {SPACES}, got {self.space!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"objective distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"objective reduce must be one of {REDUCTIONS}, got {self.reduce!r}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"objective discount must be in (0, 1], got {self.discount}")
        if self.smoothness < 0:
            raise ValueError(f"objective smoothness must be >= 0, got {self.smoothness}")
        if not 0.0 <= self.disagreement < float("inf"):
            raise ValueError(f"objective disagreement must be a finite number >= 0, got {self.disagreement}")
        if not 0.0 <= self.approach < float("inf"):
            raise ValueError(f"objective approach must be a finite number >= 0, got {self.approach}")
        if not 0.0 < self.approach_offset < 1.0:
            raise ValueError(f"objective approach_offset must be in (0, 1) metres, got "
                             f"{self.approach_offset}")


@dataclass(frozen=True)
class ApproachColumns:
    """Where a state energy head's readout holds the hand's and the block's xy: columns `hand`, `hand` + 1
    and `block`, `block` + 1 (planner.energy_head: the first `proprio_dims` columns are proprio times
    `hand_scale`, then the task state times `block_scale`)."""

    hand: int
    block: int
    hand_scale: float = 1.0
    block_scale: float = 1.0

    @classmethod
    def from_config(cls, config: dict) -> ApproachColumns | None:
        """From a checkpoint config's `energy_head_fit` (a `state` head with >= 2 proprio columns, the end
        effector's x, y first, and >= 2 task-state columns, the block's x, y first); None otherwise."""
        fit = ((config.get("energy_head_fit") or {}).get("config")) or {}
        e_dim = int((config.get("architecture") or {}).get("energy_head_dim", 0) or 0)
        p = int(fit.get("state_proprio_dims", 0) or 0)
        if fit.get("kind") != "state" or p < 2 or e_dim < p + 2:
            return None
        w_p, w_t = (float(w) for w in fit.get("state_weights", (1.0, 1.0)))
        if w_p <= 0 or w_t <= 0:
            return None
        return cls(hand=0, block=p, hand_scale=w_p, block_scale=w_t)

    def approach_distance(self, e: torch.Tensor, e_goal: torch.Tensor, offset: float) -> torch.Tensor:
        """Readouts e [..., E] (imagined), e_goal [..., E] (broadcast) -> [...]: metres from the hand's xy to
        the point `offset` behind the block on the block -> goal line, times min(1, block-goal / offset)."""
        hand = e[..., self.hand:self.hand + 2] / self.hand_scale
        block = e[..., self.block:self.block + 2] / self.block_scale
        to_goal = e_goal[..., self.block:self.block + 2] / self.block_scale - block
        dist = torch.linalg.vector_norm(to_goal, dim=-1, keepdim=True)
        pre = block - offset * to_goal / dist.clamp_min(1e-6)
        gate = (dist[..., 0] / offset).clamp(max=1.0)
        return torch.linalg.vector_norm(hand - pre, dim=-1) * gate


def check_approach(cfg: ObjectiveConfig, columns: ApproachColumns | None) -> None:
    """ValueError unless cfg's approach term (if on) has the readout columns it needs and a latent space."""
    if cfg.approach > 0 and (columns is None or cfg.space != "latent"):
        raise ValueError("objective approach > 0 needs space 'latent' and a state energy head that reads the "
                         "hand's and the block's xy (planner fit-energy-head --energy-head.kind state with "
                         "--energy-head.state-proprio-dims >= 2)")


def energy(z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """The energy ||z - goal||_2 over the last dim: [..., D], [..., D] (broadcast) -> [...]."""
    return torch.linalg.vector_norm(z - goal, dim=-1)


def energy_space(model, weights: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's map from latents [B, ..., D] into the energy's space [B, ..., E] (identity for models
    without one); `weights` float[B,E] scales each problem's columns (MPCAgent: the final goal's energy)."""
    embed = getattr(model, "energy_embed", None) or (lambda z: z)
    if weights is None:
        return embed

    return lambda z: weigh_columns(embed(z), weights)


def weigh_columns(e: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Energy-space points e [B, ..., E] with each problem's columns scaled by weights [B,E] (None: as is)."""
    return e if weights is None else e * weights.view(e.shape[0], *([1] * (e.ndim - 2)), -1)


def latent_distance(z: torch.Tensor, goal: torch.Tensor, kind: str) -> torch.Tensor:
    """[..., D], [..., D] -> [...] by `kind` (l2 or l1)."""
    if kind == "l2":
        return energy(z, goal)
    if kind == "l1":
        return (z - goal).abs().sum(dim=-1)
    raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")


def horizon_weights(horizon: int, cfg: ObjectiveConfig, device=None) -> torch.Tensor:
    """float[H] summing to 1: how much each step's distance counts."""
    if cfg.reduce == "final":
        w = torch.zeros(horizon, device=device)
        w[-1] = 1.0
        return w
    if cfg.reduce == "mean":
        return torch.full((horizon,), 1.0 / horizon, device=device)
    w = cfg.discount ** torch.arange(horizon - 1, -1, -1, device=device, dtype=torch.float32)
    return w / w.sum()


def make_objective(
    model,
    z_hist: torch.Tensor,
    a_prev: torch.Tensor,
    z_goal: torch.Tensor,
    cfg: ObjectiveConfig,
    energy_weights: torch.Tensor | None = None,
    approach_columns: ApproachColumns | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """objective(actions float[B,S,H,A] normalized) -> cost float[B,S].

    model: has `rollout(z_hist [B,K,D], a_prev [B,K-1,A], actions [B,S,H,A]) -> z [B,S,H,D]` (and, for
    cfg.disagreement > 0, `rollout_members` -> [M,B,S,H,D]).
    z_hist [B,K,D] latest latents, a_prev [B,K-1,A] normalized actions between them, z_goal [B,D];
    energy_weights float[B,E] (latent space only): per-problem weights of the energy space's columns;
    approach_columns: the readout's hand and block columns, needed when cfg.approach > 0.
    Differentiable in `actions` (for gradient-based solvers).
    """
    members = getattr(getattr(model, "cfg", None), "pred_ensemble", 1)
    if cfg.disagreement > 0 and (members < 2 or cfg.space != "latent"):
        raise ValueError(f"objective disagreement > 0 needs an ensemble of predictors (`planner ensemble`) "
                         f"and space 'latent'; this model has {members} predictor(s), space {cfg.space!r}")
    check_approach(cfg, approach_columns)
    if cfg.space == "pixel":
        if not hasattr(model, "decode"):
            raise ValueError(f"objective space 'pixel' needs a model with decode (a pixel checkpoint); "
                             f"{type(model).__name__} has none: use space 'latent'")
        with torch.no_grad():
            goal = model.decode(z_goal).flatten(1)[:, None, None, :]  # [B,1,1,P]
    else:
        embed = energy_space(model, energy_weights)
        with torch.no_grad():
            goal = embed(z_goal)[:, None, None, :]  # [B,1,1,E]
            if cfg.approach > 0:
                raw_goal = model.energy_embed(z_goal)[:, None, None, :]  # unweighted: metres

    def distance(z: torch.Tensor) -> torch.Tensor:
        """[B,S,H',D] -> [B,S,H'] in the objective's space."""
        if cfg.space == "latent":
            return latent_distance(embed(z), goal, cfg.distance)
        frames = model.decode(z.flatten(0, 2)).view(*z.shape[:3], -1)  # [B,S,H',P]
        per_pixel = latent_distance(frames, goal, cfg.distance)
        return per_pixel / (frames.shape[-1] ** 0.5 if cfg.distance == "l2" else frames.shape[-1])

    def per_step(z: torch.Tensor) -> torch.Tensor:
        """[B,S,H',D] -> [B,S,H']: the distance plus the approach term."""
        if cfg.approach <= 0:
            return distance(z)
        raw = model.energy_embed(z)  # [B,S,H',E], read once for both terms
        term = approach_columns.approach_distance(raw, raw_goal, cfg.approach_offset)
        return latent_distance(weigh_columns(raw, energy_weights), goal, cfg.distance) + cfg.approach * term

    def reduced(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Imagined latents [B,S,H,D] -> cost [B,S] over the horizon."""
        return per_step(z[:, :, -1:])[:, :, 0] if cfg.reduce == "final" else (per_step(z) * w).sum(-1)

    def objective(actions: torch.Tensor) -> torch.Tensor:
        w = horizon_weights(actions.shape[2], cfg, device=actions.device)
        if cfg.disagreement > 0:
            costs = torch.stack([reduced(z, w) for z in model.rollout_members(z_hist, a_prev, actions)])
            cost = costs.mean(0) + cfg.disagreement * costs.std(0)  # [M,B,S] -> [B,S]
        else:
            cost = reduced(model.rollout(z_hist, a_prev, actions), w)  # rollout [B,S,H,D]
        if cfg.smoothness > 0 and actions.shape[2] > 1:
            cost = cost + cfg.smoothness * actions.diff(dim=2).pow(2).sum(-1).mean(-1)
        return cost

    return objective
