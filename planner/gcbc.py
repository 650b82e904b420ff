"""Goal-conditioned behaviour cloning (GCBC): the no-world-model comparison (docs/COMPARISON.md).

One encoder (the JEPA encoder class and size) embeds the K most recent observation frames and the goal
image; an MLP (residual blocks as in the JEPA predictor) maps [z_obs_1..K, z_goal] to a normalized action.
Trained with hindsight relabelling: the goal of the pair (frames t-K+1..t, action a_t) is frame t+k of the
same trajectory, k uniform in [min_goal_offset, max_goal_offset]; loss MSE or Gaussian NLL.
`PolicyAgent` acts with it through the interface `planner eval` uses for MPCAgent (no planning).

Shapes: B batch, K history length, S image side, D latent dim, A action dim; images float [..,3,S,S] in
[-1, 1] for the model, uint8 [..,S,S,3] for the agent.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from planner.world_model import Encoder, ResidualBlock, WorldModelConfig

HEADS = ("mse", "gaussian")
LOG_STD_RANGE = (-5.0, 2.0)


@dataclass
class GCBCConfig:
    """Architecture of the GCBC policy (config.json `architecture`); encoder defaults = the JEPA encoder's."""

    image_size: int = 64
    """Square input side in pixels; must be divisible by 2**len(enc_channels)."""
    action_dim: int = 4
    """A: normalized action dimension."""
    latent_dim: int = 64
    """D: encoder output dimension (observation and goal share the encoder)."""
    history_len: int = 1
    """K: observation frames the policy sees (the goal is one more image)."""
    enc_channels: tuple[int, ...] = (16, 32, 64, 128)
    """Channels of the stride-2 conv layers of the encoder."""
    enc_groups: int = 8
    """GroupNorm groups in the encoder."""
    hidden: int = 256
    """Policy MLP hidden width."""
    blocks: int = 1
    """Residual blocks in the policy MLP."""
    head: str = "mse"
    """`mse`: the MLP outputs the action (MSE loss); `gaussian`: mean and log-std (Gaussian NLL)."""

    def __post_init__(self) -> None:
        self.enc_channels = tuple(int(c) for c in self.enc_channels)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        for name in ("history_len", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.encoder_config()  # validates image size / channels / groups with the JEPA rules

    def encoder_config(self) -> WorldModelConfig:
        """The WorldModelConfig whose encoder this policy uses (same class, same size rules)."""
        return WorldModelConfig(image_size=self.image_size, action_dim=self.action_dim,
                                latent_dim=self.latent_dim, enc_channels=self.enc_channels,
                                enc_groups=self.enc_groups)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["enc_channels"] = list(self.enc_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GCBCConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@dataclass
class GCBCObjectiveConfig:
    """Hindsight relabelling (config.json `training.gcbc_objective`)."""

    min_goal_offset: int = 1
    """Smallest k: the goal is frame t+k of the same trajectory."""
    max_goal_offset: int = 20
    """Largest k (windows hold K + max_goal_offset frames; episodes must be at least that long)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_goal_offset <= self.max_goal_offset:
            raise ValueError(f"need 1 <= min_goal_offset <= max_goal_offset, got {self.min_goal_offset} and "
                             f"{self.max_goal_offset}")

    def window_len(self, history_len: int) -> int:
        return history_len + self.max_goal_offset


class GCBCPolicy(nn.Module):
    """(obs frames [B,K,3,S,S], goal [B,3,S,S]) -> action mean [B,A] (+ log-std [B,A] for head=gaussian)."""

    model_type = "gcbc"

    def __init__(self, cfg: GCBCConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder_config())
        self.inp = nn.Linear((cfg.history_len + 1) * cfg.latent_dim, cfg.hidden)
        self.blocks = nn.ModuleList(ResidualBlock(cfg.hidden) for _ in range(cfg.blocks))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.action_dim * (2 if cfg.head == "gaussian" else 1))

    @property
    def history_len(self) -> int:
        return self.cfg.history_len

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images float [N,3,S,S] in [-1,1] -> z [N,D]."""
        s = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != s or images.shape[-2] != s:
            raise ValueError(f"encode expects images [N,3,{s},{s}] in [-1, 1], got {tuple(images.shape)}")
        return self.encoder(images)

    def act_latent(
        self, z_obs: torch.Tensor, z_goal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z_obs [B,K,D], z_goal [B,D] -> (mean [B,A], log_std [B,A] or None for head=mse)."""
        k, d = self.cfg.history_len, self.cfg.latent_dim
        if z_obs.shape[1:] != (k, d) or z_goal.shape != (z_obs.shape[0], d):
            raise ValueError(f"act_latent expects z_obs [B,{k},{d}] and z_goal [B,{d}], got "
                             f"{tuple(z_obs.shape)} and {tuple(z_goal.shape)}")
        x = self.inp(torch.cat([z_obs.flatten(1), z_goal], dim=1))
        for block in self.blocks:
            x = block(x)
        y = self.out(F.gelu(self.norm(x)))
        if self.cfg.head == "mse":
            return y, None
        mean, log_std = y.chunk(2, dim=1)
        return mean, log_std.clamp(*LOG_STD_RANGE)

    def forward(self, obs: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """obs [B,K,3,S,S], goal [B,3,S,S] (both in [-1,1]) -> act_latent output; one encoder pass."""
        b, k = obs.shape[:2]
        if k != self.cfg.history_len or goal.shape[0] != b:
            raise ValueError(f"forward expects obs [B,{self.cfg.history_len},3,S,S] and goal [B,3,S,S], got "
                             f"{tuple(obs.shape)} and {tuple(goal.shape)}")
        z = self.encode(torch.cat([obs.flatten(0, 1), goal]))
        return self.act_latent(z[: b * k].view(b, k, -1), z[b * k :])


def build_gcbc(architecture: dict) -> GCBCPolicy:
    """checkpoint registry builder (model_type "gcbc")."""
    return GCBCPolicy(GCBCConfig.from_dict(architecture))


def gcbc_loss(
    mean: torch.Tensor, log_std: torch.Tensor | None, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """mean/log_std/target [B,A] -> (MSE, or Gaussian NLL per action dim when log_std is given; parts)."""
    mse = F.mse_loss(mean, target)
    if log_std is None:
        return mse, {"mse": mse.item(), "loss": mse.item()}
    z = (target - mean) * torch.exp(-log_std)
    nll = (0.5 * z.pow(2) + log_std + 0.5 * math.log(2 * math.pi)).mean()
    return nll, {"mse": mse.item(), "nll": nll.item(), "loss": nll.item()}


def relabel(
    images: torch.Tensor, actions: torch.Tensor, history_len: int, obj: GCBCObjectiveConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hindsight goals from windows. images [B,T,...] with T = K + max_goal_offset, actions [B,T-1,A] ->
    (obs [B,K,...] = frames 0..K-1, goal [B,...] = frame K-1+k with k ~ U[min, max], action [B,A] = a_{K-1}).
    """
    b, t = images.shape[:2]
    k = history_len
    if t < obj.window_len(k):
        raise ValueError(f"relabel needs windows of {obj.window_len(k)} frames, got {t}")
    offsets = torch.randint(obj.min_goal_offset, obj.max_goal_offset + 1, (b,), generator=generator)
    goal = images[torch.arange(b, device=images.device), (k - 1 + offsets).to(images.device)]
    return images[:, :k], goal, actions[:, k - 1]


class PolicyAgent:
    """Acts with a loaded GCBC checkpoint through the MPCAgent interface `planner eval` uses.

    `encode_goal(uint8 [S,S,3] | [B,S,S,3]) -> z_goal`; `plan(images uint8 [B,K,S,S,3], prev_actions
    [B,K-1,A] native, goal_latents [B,D], warm_start=None, *, executed_steps=1, seed=0) -> planner.mpc.Plan`
    with a horizon of 1 (the policy's action). energy/current_energy are the latent distance between the
    current frame and the goal in the policy's encoder (a diagnostic only); goal_reached is always False
    (GCBC has no calibrated stop criterion, so episodes run to the step budget). prev_actions, warm_start,
    executed_steps and seed are accepted for the interface and not used (the policy is deterministic).
    """

    def __init__(self, loaded, *, device: str | torch.device = "cpu"):
        from planner.mpc import ActionSpec

        if loaded.config.get("model_type") != "gcbc":
            raise ValueError(f"PolicyAgent needs a gcbc checkpoint, got model_type "
                             f"{loaded.config.get('model_type')!r}")
        self.loaded, self.model, self.name = loaded, loaded.model, loaded.name
        self.device = torch.device(device)
        self.action_spec = ActionSpec.from_config(loaded.config["action"])
        self.history_len = int(loaded.config["history_len"])
        self.image_size = int(loaded.config["image"]["size"])
        self.goal_energy_threshold = self.subgoal_energy_threshold = float("nan")

    def _check(self, images, ndim: int, shape_hint: str) -> np.ndarray:
        images = np.asarray(images)
        s = self.image_size
        if images.dtype != np.uint8 or images.ndim != ndim or images.shape[-3:] != (s, s, 3):
            raise ValueError(f"images must be {shape_hint} uint8 RGB with S={s} (this checkpoint's image "
                             f"size; preprocess with planner.preprocess.preprocess_image), got "
                             f"{images.dtype} {images.shape}")
        return images

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """uint8 [N,S,S,3] -> float [N,D] on the agent's device."""
        from planner.preprocess import images_to_model_input

        images = self._check(images, 4, "[N,S,S,3]")
        return self.model.encode(images_to_model_input(images, device=self.device))

    def encode_goal(self, goal_image) -> torch.Tensor:
        """uint8 [S,S,3] -> float [D], or [B,S,S,3] -> float [B,D]."""
        goal_image = np.asarray(goal_image)
        if goal_image.ndim == 3:
            return self.encode(goal_image[None])[0]
        return self.encode(goal_image)

    @torch.no_grad()
    def plan(self, images, prev_actions, goal_latents, warm_start=None, *, executed_steps: int = 1,
             seed: int = 0, subgoal=False):
        """One step for B problems -> Plan with actions [B,1,A] (the mean action, native + normalized);
        `subgoal` is accepted for MPCAgent's interface and changes nothing."""
        from planner.mpc import Plan

        t0 = time.perf_counter()
        k = self.history_len
        images = self._check(images, 5, f"[B,{k},S,S,3]")
        b = images.shape[0]
        if images.shape[1] != k:
            raise ValueError(f"images must be [B,{k},S,S,3] (history_len={k}), got shape {images.shape}")
        goal = torch.as_tensor(goal_latents, dtype=torch.float32).to(self.device)
        if goal.shape != (b, self.model.cfg.latent_dim):
            raise ValueError(f"goal_latents must be [B,D] = [{b},{self.model.cfg.latent_dim}] (encode_goal), "
                             f"got {tuple(goal.shape)}")
        z = self.encode(images.reshape(b * k, *images.shape[2:])).view(b, k, -1)
        mean, _ = self.model.act_latent(z, goal)
        norm = mean.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)[:, None]  # [B,1,A]
        e_now = torch.linalg.vector_norm(z[:, -1] - goal, dim=-1).cpu().numpy().astype(np.float32)
        return Plan(
            actions=self.action_spec.to_native(norm),
            actions_normalized=norm,
            energy=e_now,
            current_energy=e_now,
            goal_reached=np.zeros(b, dtype=bool),
            plan_ms=(time.perf_counter() - t0) * 1e3,
            warm_start=[None] * b,
        )
