"""JEPA latent world model: conv encoder + action-conditioned residual MLP predictor (imports only torch).

Shapes: B batch, T frames, K history length, S candidates, H horizon, D latent dim, A action dim.
Images enter as float [B,3,H,W] in [-1, 1] (planner.preprocess.images_to_model_input).
The training objective (prediction + open-loop rollout loss, VICReg or SIGReg anti-collapse, optional EMA
target encoder, temporal-ordering energy shaping) lives here too, as pure functions of tensors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from planner.energy_head import EnergyHead


@dataclass
class WorldModelConfig:
    """Architecture of the JEPA world model (recorded in config.json under `architecture`)."""

    image_size: int = 64
    """S: side in pixels of each square view; must be divisible by 2**len(enc_channels)."""
    image_views: int = 1
    """V: square views side by side in each image ([3,S,V*S], an env's `view_layout="wide"`). Each view goes
    through the same conv layers on its own and has its own P keypoints; the linear head reads all of them
    (V * 2P keypoint coordinates, and with enc_keypoint_latent all V * 2P in the latent)."""
    action_dim: int = 4
    """A: normalized action dimension."""
    latent_dim: int = 64
    """D: latent dimension."""
    history_len: int = 2
    """K: number of past latents (and actions) the predictor sees."""
    enc_channels: tuple[int, ...] = (16, 32, 64, 128)
    """Channels of the stride-2 conv layers of the encoder."""
    enc_groups: int = 8
    """GroupNorm groups in the encoder."""
    enc_keypoints: int = 0
    """P: spatial-softmax keypoints (Finn et al. 2016, deep spatial autoencoders) read from the feature map
    after encoder layer `enc_keypoint_layer`: a 1x1 conv to P maps, a softmax over each map, and its
    expected (x, y) in [-1, 1], concatenated to the flattened features before the linear head. Image
    coordinates of small objects (the block) then reach the latent linearly. 0: none."""
    enc_keypoint_layer: int = 2
    """1-based encoder layer whose output feeds the keypoints (2: a 16x16 map at 64 px)."""
    enc_keypoint_latent: bool = False
    """Keypoints in the latent itself: its last 2P dimensions are the keypoints' coordinates (times a
    learned per-coordinate scale) and the linear head fills only the first D - 2P. Without it the head mixes
    the coordinates with the 2,048 conv features and a linear readout of the latent finds the block less
    well. Trained, the coordinates shrink to small movements that still follow the block (push, D = 256,
    P = 32, 5,500 steps, two seeds: linear probe x 0.95-0.97 against 0.85-0.89 without; 0.96 / 0.98 at
    18,000 steps; docs/BENCHMARKS.md, session 14)."""
    enc_coords: bool = False
    """CoordConv (Liu et al. 2018): every encoder conv also sees two constant channels holding its input's
    pixel coordinates (x, y in [-1, 1]), so features can carry where a small object is as a value rather
    than only as which cell fires. On push it holds the block more sharply (docs/BENCHMARKS.md, session
    11); `checkpoints/arm-push-surprise` uses it."""
    pred_hidden: int = 256
    """Predictor hidden width."""
    pred_blocks: int = 1
    """Residual blocks (LayerNorm -> Linear -> GELU -> Linear) in the predictor."""
    pred_ensemble: int = 1
    """M: predictors. Member 0 (`predictor`) is the model's prediction everywhere (training, `predict`,
    surprise, quality); members 1..M-1 (`extra_predictors`, assembled by `planner ensemble` from predictors
    refitted on the same frozen encoder) join only planning, whose objective can penalize their
    disagreement (planner.objectives, `disagreement`)."""
    energy_head_dim: int = 0
    """E of the energy head (planner.energy_head) fitted after training; 0: no head, the energy is the raw
    latent distance. Set by the fit, not by hand."""
    energy_head_hidden: int = 256
    """Hidden width of the energy head (when energy_head_dim > 0)."""

    def __post_init__(self) -> None:
        self.enc_channels = tuple(int(c) for c in self.enc_channels)
        n = len(self.enc_channels)
        if n < 1 or self.image_size % (2**n) != 0:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{n} (one halving per encoder layer)"
            )
        for name in ("image_views", "action_dim", "latent_dim", "history_len", "pred_hidden",
                     "pred_ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.enc_keypoints < 0 or not 1 <= self.enc_keypoint_layer <= n:
            raise ValueError(f"enc_keypoints must be >= 0 and enc_keypoint_layer in 1..{n}, got "
                             f"{self.enc_keypoints}, {self.enc_keypoint_layer}")
        if self.enc_keypoint_latent and not 0 < 2 * self.enc_keypoints * self.image_views < self.latent_dim:
            raise ValueError("enc_keypoint_latent needs 0 < 2 * enc_keypoints * image_views < latent_dim, "
                             f"got {self.enc_keypoints} keypoints, {self.image_views} views and latent_dim "
                             f"{self.latent_dim}")
        if any(c % self.enc_groups for c in self.enc_channels):
            raise ValueError(
                f"enc_channels {self.enc_channels} must be multiples of enc_groups {self.enc_groups}"
            )

    @property
    def latent_keypoint_dims(self) -> int:
        """How many of z's dimensions (the last ones) are keypoint coordinates: 2PV with enc_keypoint_latent,
        else 0."""
        return 2 * self.enc_keypoints * self.image_views if self.enc_keypoint_latent else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["enc_channels"] = list(self.enc_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WorldModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class SpatialSoftmax(nn.Module):
    """features [N,C,H,W] -> keypoints [N,2P]: per map (1x1 conv of the features) the softmax-weighted mean
    image coordinate (x then y, each in [-1, 1]), with a learned temperature."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        logits = self._logits(feats)
        return self._expected_xy(torch.softmax(logits, dim=-1), feats.shape[-2:])

    def attend(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [N,C,H,W] -> (keypoints [N,2P] as `forward`, entropy [N,P] of each map's attention in
        nats: 0 when it sits on one cell, log(H*W) when uniform; exp(entropy) is how many cells it
        effectively covers). Training only; encoding for planning calls `forward`."""
        log_attn = torch.log_softmax(self._logits(feats), dim=-1)
        attn = log_attn.exp()
        return self._expected_xy(attn, feats.shape[-2:]), -(attn * log_attn).sum(-1)

    def _logits(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [N,C,H,W] -> tempered logits [N,P,H*W]."""
        return self.proj(feats).flatten(2) / self.log_temperature.exp()

    @staticmethod
    def _expected_xy(attn: torch.Tensor, hw: torch.Size) -> torch.Tensor:
        """attn [N,P,H*W] (each row sums to 1) -> expected coordinates [N,2P], x then y in [-1, 1]."""
        n, p, _ = attn.shape
        h, w = hw
        attn = attn.view(n, p, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=attn.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=attn.device, dtype=attn.dtype)
        x = (attn.sum(2) * xs).sum(-1)
        y = (attn.sum(3) * ys).sum(-1)
        return torch.cat([x, y], dim=1)


class CoordConv2d(nn.Conv2d):
    """x [N,C,H,W] -> conv of x with two more input channels, its pixel coordinates (x then y in [-1, 1])."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__(in_channels + 2, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
        return super().forward(torch.cat([x, xs, ys], dim=1))


class Encoder(nn.Module):
    """images [N,3,S,V*S] -> z [N,D]: each of the V views through stride-2 conv (CoordConv when
    cfg.enc_coords) + GroupNorm + SiLU layers, then one linear head over all views' features (fed also with
    spatial-softmax keypoints [N,V*2P] of an intermediate layer when cfg.enc_keypoints > 0; with
    cfg.enc_keypoint_latent the head gives z[:, :D-2PV] and the scaled keypoints are z[:, D-2PV:])."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        conv = CoordConv2d if cfg.enc_coords else nn.Conv2d
        for c in cfg.enc_channels:
            layers += [conv(c_in, c, 4, stride=2, padding=1), nn.GroupNorm(cfg.enc_groups, c), nn.SiLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.views = cfg.image_views
        side = cfg.image_size // (2 ** len(cfg.enc_channels))
        self.keypoint_at = 3 * cfg.enc_keypoint_layer - 1  # index in self.convs of that layer's SiLU
        self.keypoints = (SpatialSoftmax(cfg.enc_channels[cfg.enc_keypoint_layer - 1], cfg.enc_keypoints)
                          if cfg.enc_keypoints else None)
        in_latent = cfg.latent_keypoint_dims
        self.keypoint_scale = nn.Parameter(torch.full((in_latent,), 3.0 ** 0.5)) if in_latent else None
        per_view = c_in * side * side + 2 * cfg.enc_keypoints
        self.head = nn.Linear(self.views * per_view, cfg.latent_dim - in_latent)

    def split_views(self, images: torch.Tensor) -> torch.Tensor:
        """images [N,3,S,V*S] -> [N*V,3,S,S], the views of image n at rows n*V .. n*V+V-1."""
        if self.views == 1:
            return images
        n, c, s, _ = images.shape
        return images.reshape(n, c, s, self.views, s).permute(0, 3, 1, 2, 4).reshape(n * self.views, c, s, s)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._encode(images, with_entropy=False)[0]

    def encode_with_attention(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images [N,3,S,V*S] -> (z [N,D], the keypoints' attention entropy [N,V*P] in nats, or None without
        keypoints; what ObjectiveConfig.keypoint_spread_weight penalizes). Training only; z equals
        forward's."""
        return self._encode(images, with_entropy=True)

    def _encode(self, images: torch.Tensor, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = images.shape[0]
        if self.keypoints is None:
            return self.head(self.convs(self.split_views(images)).reshape(n, -1)), None
        x, keypoints, entropy = self.split_views(images), None, None
        for i, layer in enumerate(self.convs):
            x = layer(x)
            if i == self.keypoint_at:
                if with_entropy:
                    keypoints, entropy = self.keypoints.attend(x)
                    entropy = entropy.reshape(n, -1)
                else:
                    keypoints = self.keypoints(x)
                keypoints = keypoints.reshape(n, -1)
        z = self.head(torch.cat([x.reshape(n, -1), keypoints], dim=1))
        if self.keypoint_scale is not None:
            z = torch.cat([z, keypoints * self.keypoint_scale], dim=1)
        return z, entropy


class ResidualBlock(nn.Module):
    """x [N,W] -> x + MLP(LayerNorm(x))."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Predictor(nn.Module):
    """(z_hist [N,K,D], a_hist [N,K,A]) -> z_next [N,D] = z_hist[:, -1] + MLP(flattened history)."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        k, d, a, w = cfg.history_len, cfg.latent_dim, cfg.action_dim, cfg.pred_hidden
        self.inp = nn.Linear(k * (d + a), w)
        self.blocks = nn.ModuleList(ResidualBlock(w) for _ in range(cfg.pred_blocks))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, d)

    def forward(self, z_hist: torch.Tensor, a_hist: torch.Tensor) -> torch.Tensor:
        x = self.inp(torch.cat([z_hist.flatten(1), a_hist.flatten(1)], dim=1))
        for block in self.blocks:
            x = block(x)
        return z_hist[:, -1] + self.out(F.gelu(self.norm(x)))


class WorldModel(nn.Module):
    """JEPA world model: encode (pixels -> latent), predict (one step), rollout (batched open loop)."""

    model_type = "jepa"

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.cfg = replace(cfg)  # own copy: attach_energy_head updates it, never the caller's config
        self.encoder = Encoder(cfg)
        self.predictor = Predictor(cfg)
        self.extra_predictors = nn.ModuleList(Predictor(cfg) for _ in range(cfg.pred_ensemble - 1))
        self.energy_head = None
        if cfg.energy_head_dim:
            self.energy_head = EnergyHead(cfg.latent_dim, cfg.energy_head_dim, cfg.energy_head_hidden)

    @property
    def history_len(self) -> int:
        return self.cfg.history_len

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B,3,S,V*S] in [-1,1] -> z [B,D]."""
        s, v = self.cfg.image_size, self.cfg.image_views
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, v * s):
            raise ValueError(f"encode expects images [B,3,{s},{v * s}] in [-1, 1], got {tuple(images.shape)}")
        return self.encoder(images)

    def energy_embed(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., D] -> the space the planning energy is measured in: [..., E] through the energy head,
        or z itself when the model has none. energy(z, g) = ||energy_embed(z) - energy_embed(g)||_2."""
        return z if self.energy_head is None else self.energy_head(z)

    @property
    def keypoint_dims(self) -> slice:
        """z's keypoint coordinates: the last 2P dimensions with cfg.enc_keypoint_latent, else empty."""
        d = self.cfg.latent_dim
        return slice(d - self.cfg.latent_keypoint_dims, d)

    @torch.no_grad()
    def rescale_keypoint_dims(self, factor: torch.Tensor) -> None:
        """Multiply z's keypoint dimensions by factor [2P] (through Encoder.keypoint_scale) and divide the
        energy head's first-layer weights on them by it: every image's energy reading stays the same. The
        predictor, whose inputs and targets change, must be trained again (planner.refit_predictor)."""
        n = self.cfg.latent_keypoint_dims
        if not n:
            raise ValueError("rescale_keypoint_dims needs a model with keypoints in its latent "
                             "(enc_keypoint_latent)")
        factor = torch.as_tensor(factor, dtype=torch.float32)
        valid = bool((torch.isfinite(factor) & (factor > 0)).all())
        if factor.shape != (n,) or not valid:
            raise ValueError(f"factor must be {n} finite positive numbers, got shape {tuple(factor.shape)}")
        self.encoder.keypoint_scale.mul_(factor.to(self.encoder.keypoint_scale))
        if self.energy_head is not None:
            self.energy_head.rescale_inputs(self.keypoint_dims, factor)

    def attach_energy_head(self, head: EnergyHead) -> None:
        """Install a fitted energy head (recorded in cfg, so it saves and loads with the checkpoint)."""
        self.energy_head = head
        self.cfg.energy_head_dim = head.net[-1].out_features
        self.cfg.energy_head_hidden = head.net[0].out_features

    def predict(self, z_hist: torch.Tensor, a_hist: torch.Tensor) -> torch.Tensor:
        """z_hist [B,K,D], a_hist [B,K,A] (a_hist[:, -1] taken at the last frame) -> z_next [B,D]."""
        return self.predictor(z_hist, a_hist)

    @property
    def members(self) -> list[nn.Module]:
        """The M predictors, member 0 first."""
        return [self.predictor, *self.extra_predictors]

    def rollout_members(self, z_hist: torch.Tensor, a_prev: torch.Tensor,
                        actions: torch.Tensor) -> torch.Tensor:
        """`rollout` by every ensemble member: -> z [M,B,S,H,D]."""
        return torch.stack([self.rollout(z_hist, a_prev, actions, member=m)
                            for m in range(self.cfg.pred_ensemble)])

    def rollout(self, z_hist: torch.Tensor, a_prev: torch.Tensor, actions: torch.Tensor,
                member: int = 0) -> torch.Tensor:
        """Open-loop imagination for B problems x S candidates x H steps; encodes nothing.

        z_hist [B,K,D] latest K latents; a_prev [B,K-1,A] actions taken between them (K-1 may be 0);
        actions [B,S,H,A] candidate sequences -> z [B,S,H,D], z[:, :, h] the latent after actions[:, :, h].
        member: which ensemble predictor imagines (0: the model's own).
        """
        predictor = self.members[member]
        b, s, h, a = actions.shape
        k, d = self.cfg.history_len, self.cfg.latent_dim
        if z_hist.shape != (b, k, d) or a_prev.shape != (b, k - 1, a):
            raise ValueError(
                f"rollout expects z_hist [{b},{k},{d}] and a_prev [{b},{k - 1},{a}], "
                f"got {tuple(z_hist.shape)} and {tuple(a_prev.shape)}"
            )
        z = z_hist.unsqueeze(1).expand(b, s, k, d).reshape(b * s, k, d)
        a_ctx = a_prev.unsqueeze(1).expand(b, s, k - 1, a).reshape(b * s, k - 1, a)
        acts = actions.reshape(b * s, h, a)
        out = []
        for t in range(h):
            a_win = torch.cat([a_ctx, acts[:, t : t + 1]], dim=1)
            z_next = predictor(z, a_win)
            out.append(z_next)
            z = torch.cat([z[:, 1:], z_next.unsqueeze(1)], dim=1)
            a_ctx = a_win[:, 1:]
        return torch.stack(out, dim=1).reshape(b, s, h, d)

    def forward(
        self, images: torch.Tensor, actions: torch.Tensor, rollout_steps: int
    ) -> dict[str, torch.Tensor]:
        """Training forward pass (goes through DDP). images [B,T,3,S,S], actions [B,T-1,A].

        Returns z [B,T,D] (online latents), teacher-forced predictions tf [B,T-K,D] of frames K..T-1 from
        true latents, and open-loop predictions roll [B,R,D] of frames K..K+R-1 from the first K latents;
        with keypoints also keypoint_entropy [B,T,V*P] (Encoder.encode_with_attention).
        """
        b, t = images.shape[:2]
        k = self.cfg.history_len
        if t < k + rollout_steps or actions.shape[:2] != (b, t - 1):
            raise ValueError(
                f"need T >= K + rollout_steps = {k + rollout_steps} frames and T-1 actions, "
                f"got images {tuple(images.shape)} actions {tuple(actions.shape)}"
            )
        z, entropy = self.encoder.encode_with_attention(images.flatten(0, 1))
        z = z.view(b, t, -1)
        out = {"z": z, **self.predict_windows(z, actions, rollout_steps)}
        if entropy is not None:
            out["keypoint_entropy"] = entropy.view(b, t, -1)
        return out

    def predict_windows(self, z: torch.Tensor, actions: torch.Tensor,
                        rollout_steps: int) -> dict[str, torch.Tensor]:
        """The predictor's half of `forward`, from latents z [B,T,D] and actions [B,T-1,A]: teacher-forced
        predictions tf [B,T-K,D] of frames K..T-1 and open-loop predictions roll [B,R,D] of frames
        K..K+R-1 (also what `planner refit-predictor` trains on frozen latents)."""
        b, t = z.shape[:2]
        k = self.cfg.history_len
        # teacher forcing: all windows of K true latents, batched
        z_win = z.unfold(1, k, 1)[:, : t - k].permute(0, 1, 3, 2)  # [B,T-K,K,D]
        a_win = actions.unfold(1, k, 1)[:, : t - k].permute(0, 1, 3, 2)  # [B,T-K,K,A]
        tf = self.predictor(z_win.flatten(0, 1), a_win.flatten(0, 1)).view(b, t - k, -1)
        # open loop from the first K latents
        zs = z[:, :k]
        roll = []
        for r in range(rollout_steps):
            zn = self.predictor(zs, actions[:, r : r + k])
            roll.append(zn)
            zs = torch.cat([zs[:, 1:], zn.unsqueeze(1)], dim=1)
        return {"tf": tf, "roll": torch.stack(roll, dim=1) if roll else z[:, :0]}


# ----------------------------------------------------------------------------------------------------------
# Objective


@dataclass
class ObjectiveConfig:
    """JEPA training objective (recorded in config.json under `training.objective`)."""

    rollout_steps: int = 4
    """R: open-loop steps in the multi-step rollout loss (also the teacher-forcing window)."""
    rollout_weight: float = 1.0
    """Weight of the open-loop rollout loss (teacher forcing has weight 1)."""
    regularizer: str = "sigreg"
    """Anti-collapse term on the online latents: `sigreg` (measured best), `vicreg` or `none`."""
    var_weight: float = 1.0
    """VICReg: weight of the per-dimension std hinge (std target 1)."""
    cov_weight: float = 1.0
    """VICReg: weight of the off-diagonal covariance penalty."""
    sigreg_weight: float = 0.05
    """SIGReg: weight of the Epps-Pulley statistic over random 1-D projections."""
    sigreg_projections: int = 64
    """SIGReg: random directions per step."""
    ema_target: bool = False
    """Regress predictions onto an EMA copy of the encoder with stop-gradient (else onto online latents)."""
    ema_decay: float = 0.99
    """EMA decay of the target encoder."""
    temporal_weight: float = 0.1
    """Temporal-ordering hinge: within a trajectory ||z_t - z_t+k|| must grow with k (0 disables)."""
    temporal_span: int = 5
    """Longest offset k of the temporal term; windows hold max(K + R, span + 1) frames."""
    temporal_margin: float = 0.05
    """Hinge margin, relative to the mean latent distance in the batch."""
    keypoint_spread_weight: float = 0.0
    """Weight of a hinge on how widely each spatial-softmax keypoint spreads its attention: the mean of
    relu(entropy - log(keypoint_spread_cells)), entropy in nats. Trained without it, each keypoint's
    attention grows nearly uniform (docs/BENCHMARKS.md, session 14) and its coordinate a blend that follows
    the block only weakly; the hinge keeps it on a few cells. Measured on two-view pick-and-place (session
    23): at weight 1 the keypoints go from 243 cells to under 4 in 1,000 steps, but no keypoint follows the
    block and its linear probe falls (0.90 in x at 3,000 steps, 0.88 at 6,000); 0.1 does nothing. Needs a
    model with enc_keypoints > 0; 0: off (the mean spread is logged as `keypoint_cells` either way)."""
    keypoint_spread_cells: float = 4.0
    """Cells of the keypoint map an attention may cover unpenalized (exp of its entropy); a few cells leave
    the coordinate sub-cell precision (a block covers about 2 x 2 cells of the 16 x 16 map)."""

    def __post_init__(self) -> None:
        if self.regularizer not in ("vicreg", "sigreg", "none"):
            raise ValueError(f"regularizer must be vicreg, sigreg or none, got {self.regularizer!r}")
        if self.rollout_steps < 1:
            raise ValueError(f"rollout_steps must be >= 1, got {self.rollout_steps}")
        if self.temporal_span < 1:
            raise ValueError(f"temporal_span must be >= 1, got {self.temporal_span}")
        if self.keypoint_spread_weight < 0 or self.keypoint_spread_cells < 1:
            raise ValueError("keypoint_spread_weight must be >= 0 and keypoint_spread_cells >= 1, got "
                             f"{self.keypoint_spread_weight}, {self.keypoint_spread_cells}")

    def window_len(self, history_len: int) -> int:
        """Frames per training window."""
        span = self.temporal_span + 1 if self.temporal_weight > 0 else 0
        return max(history_len + self.rollout_steps, span)


def vicreg_terms(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z [N,D] -> (std hinge mean(relu(1 - std_d)), off-diagonal covariance sum(c_ij^2)/D)."""
    z = z.float()
    zc = z - z.mean(0)
    std = torch.sqrt(zc.var(0) + 1e-4)
    var = F.relu(1.0 - std).mean()
    n, d = z.shape
    cov = (zc.T @ zc) / max(n - 1, 1)
    off = cov - torch.diag(torch.diag(cov))
    return var, off.pow(2).sum() / d


def sigreg(
    z: torch.Tensor, num_projections: int, generator: torch.Generator, knots: int = 17
) -> torch.Tensor:
    """LeJEPA SIGReg: Epps-Pulley test of z [N,D] projections against N(0,1), averaged over random directions.

    Per direction: N * integral of |phi_emp(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt over t in [-5, 5] (the test
    statistic: 0.41 N when collapsed to a point, O(1) for a true Gaussian sample).
    """
    z = z.float()
    n, d = z.shape
    dirs = torch.randn(d, num_projections, generator=generator).to(z.device)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    x = z @ dirs  # [N,M]
    t = torch.linspace(-5.0, 5.0, knots, device=z.device)
    xt = x.unsqueeze(-1) * t  # [N,M,T]
    phi = torch.exp(-0.5 * t**2)
    err = (xt.cos().mean(0) - phi).pow(2) + xt.sin().mean(0).pow(2)  # [M,T]
    return n * torch.trapezoid(err * phi, t, dim=-1).mean()


def temporal_ordering(z: torch.Tensor, span: int, margin: float) -> torch.Tensor:
    """z [B,T,D] -> mean hinge relu(d(t,t+k) - d(t,t+k+1) + margin * mean_d) over t and k < span."""
    b, t, _ = z.shape
    span = min(span, t - 1)
    if span < 2:
        return z.new_zeros(())
    dist = torch.cdist(z.float(), z.float())  # [B,T,T]
    scale = dist.mean().detach() + 1e-6
    losses = []
    for k in range(1, span):
        near = torch.diagonal(dist, offset=k, dim1=1, dim2=2)[:, : t - k - 1]  # d(t, t+k)
        far = torch.diagonal(dist, offset=k + 1, dim1=1, dim2=2)  # d(t, t+k+1)
        losses.append(F.relu(near - far + margin * scale).mean())
    return torch.stack(losses).mean() / scale


def jepa_loss(
    out: dict[str, torch.Tensor],
    obj: ObjectiveConfig,
    history_len: int,
    generator: torch.Generator,
    target_z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts from WorldModel.forward output; target_z [B,T,D] is the EMA target if used."""
    z, tf, roll = out["z"], out["tf"].float(), out["roll"].float()
    k, r = history_len, roll.shape[1]
    target = (target_z if target_z is not None else z).float()
    pred = F.mse_loss(tf, target[:, k:])
    rollout = F.mse_loss(roll, target[:, k : k + r])
    total = pred + obj.rollout_weight * rollout
    parts = {"pred": pred.item(), "rollout": rollout.item()}
    flat = z.reshape(-1, z.shape[-1])
    if obj.regularizer == "vicreg":
        var, cov = vicreg_terms(flat)
        total = total + obj.var_weight * var + obj.cov_weight * cov
        parts.update(var=var.item(), cov=cov.item())
    elif obj.regularizer == "sigreg":
        sig = sigreg(flat, obj.sigreg_projections, generator)
        total = total + obj.sigreg_weight * sig
        parts["sigreg"] = sig.item()
    if obj.temporal_weight > 0:
        temp = temporal_ordering(z, obj.temporal_span, obj.temporal_margin)
        total = total + obj.temporal_weight * temp
        parts["temporal"] = temp.item()
    entropy = out.get("keypoint_entropy")
    if obj.keypoint_spread_weight > 0:
        if entropy is None:
            raise ValueError("keypoint_spread_weight > 0 needs a model with keypoints "
                             "(--model.enc-keypoints)")
        spread = F.relu(entropy.float() - math.log(obj.keypoint_spread_cells)).mean()
        total = total + obj.keypoint_spread_weight * spread
        parts["keypoint_spread"] = spread.item()
    if entropy is not None:
        parts["keypoint_cells"] = entropy.detach().float().exp().mean().item()
    parts["loss"] = total.item()
    return total, parts
