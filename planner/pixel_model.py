"""Generative (pixel-reconstruction) world model: the JEPA encoder and predictor plus a conv decoder.

The comparison model for "does predicting in representation space win here?" (docs/COMPARISON.md). The
architecture is `planner.world_model.WorldModelConfig` unchanged (same encoder, same predictor, same
latent size); a decoder mirrors the encoder. Training is pixel MSE only, no JEPA loss: reconstruct every
frame of a window, decode the teacher-forced one-step predictions, and decode the open-loop rollout.

Shapes: B batch, T frames, K history length, R rollout steps, S image side, D latent dim, A action dim.
Images are float [.., 3, S, S] in [-1, 1] (planner.preprocess.images_to_model_input), as for JEPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from planner.world_model import WorldModel, WorldModelConfig


@dataclass
class PixelObjectiveConfig:
    """Pixel-space training loss of the generative world model (config.json `training.pixel_objective`)."""

    rollout_steps: int = 4
    """R: open-loop steps whose decoded frames are scored (windows hold K + R frames)."""
    recon_weight: float = 1.0
    """Weight of the reconstruction MSE of every frame of the window (decode(encode(x)) vs x)."""
    pred_weight: float = 1.0
    """Weight of the decoded teacher-forced one-step predictions vs the true frames K..T-1."""
    rollout_weight: float = 1.0
    """Weight of the decoded open-loop rollout frames K..K+R-1 vs the true frames."""

    def __post_init__(self) -> None:
        if self.rollout_steps < 1:
            raise ValueError(f"rollout_steps must be >= 1, got {self.rollout_steps}")
        for name in ("recon_weight", "pred_weight", "rollout_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def window_len(self, history_len: int) -> int:
        """Frames per training window."""
        return history_len + self.rollout_steps


class Decoder(nn.Module):
    """z [N,D] -> images [N,3,S,S] (unbounded; trained towards [-1, 1]): the encoder mirrored.

    Linear to [C_last, S/2^L, S/2^L], then L stride-2 transposed convs (GroupNorm + SiLU after all but
    the last, which outputs the 3 RGB channels).
    """

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        chans = list(cfg.enc_channels)
        self.side = cfg.image_size // (2 ** len(chans))
        self.c0 = chans[-1]
        self.head = nn.Linear(cfg.latent_dim, self.c0 * self.side * self.side)
        layers: list[nn.Module] = []
        c_in = self.c0
        for c in reversed(chans[:-1]):
            layers += [nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1), nn.GroupNorm(cfg.enc_groups, c),
                       nn.SiLU()]
            c_in = c
        layers.append(nn.ConvTranspose2d(c_in, 3, 4, stride=2, padding=1))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.head(z)).view(-1, self.c0, self.side, self.side)
        return self.deconvs(x)


class PixelWorldModel(WorldModel):
    """WorldModel (encode / predict / rollout, same modules) + `decode`; trained on pixels only."""

    model_type = "pixel"

    def __init__(self, cfg: WorldModelConfig):
        super().__init__(cfg)
        self.decoder = Decoder(cfg)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [N,D] -> images float [N,3,S,S] (model input scale, about [-1, 1])."""
        if z.ndim != 2 or z.shape[1] != self.cfg.latent_dim:
            raise ValueError(f"decode expects z [N,{self.cfg.latent_dim}], got {tuple(z.shape)}")
        return self.decoder(z)


def build_pixel(architecture: dict) -> PixelWorldModel:
    """checkpoint registry builder (model_type "pixel")."""
    return PixelWorldModel(WorldModelConfig.from_dict(architecture))


def pixel_loss(
    model: PixelWorldModel, images: torch.Tensor, actions: torch.Tensor, obj: PixelObjectiveConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """images [B,T,3,S,S] in [-1,1], actions [B,T-1,A] -> (weighted pixel MSE, its parts as floats).

    recon: decode(z_t) vs frame t for all T; pred: decoded one-step predictions from K true latents vs
    frames K..T-1; rollout: decoded open-loop predictions from the first K latents vs frames K..K+R-1.
    """
    k, r = model.cfg.history_len, obj.rollout_steps
    out = model(images, actions, r)
    b, t = images.shape[:2]
    img_shape = images.shape[2:]
    recon = F.mse_loss(model.decode(out["z"].flatten(0, 1)).view(b, t, *img_shape), images)
    pred = F.mse_loss(model.decode(out["tf"].flatten(0, 1)).view(b, t - k, *img_shape), images[:, k:])
    roll = F.mse_loss(model.decode(out["roll"].flatten(0, 1)).view(b, r, *img_shape), images[:, k : k + r])
    total = obj.recon_weight * recon + obj.pred_weight * pred + obj.rollout_weight * roll
    parts = {"recon": recon.item(), "pred": pred.item(), "rollout": roll.item(), "loss": total.item()}
    return total, parts


@torch.no_grad()
def pixel_prediction_error(
    model: PixelWorldModel, episodes, k_max: int = 5, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Held-out pixel metrics over `episodes` (store Episodes): per-pixel MSE in model-input units.

    recon_mse: decode(encode(x)) vs x; kstep_mse_k{1,k_max}: frames decoded from the open-loop rollout
    (from K true frames) vs the true frames; copy_last_mse_k*: the last history frame as the prediction;
    kstep_ratio_k*: model / copy-last (< 1: better than predicting no change).
    """
    from planner.preprocess import images_to_model_input

    k = model.cfg.history_len
    recon_sum, n_frames, n_win = 0.0, 0, 0
    model_sum = torch.zeros(k_max, dtype=torch.float64)
    copy_sum = torch.zeros(k_max, dtype=torch.float64)
    for ep in episodes:
        x = images_to_model_input(ep.images, device=device)  # [T+1,3,S,S]
        z = model.encode(x)
        recon_sum += (model.decode(z) - x).pow(2).mean(dim=(1, 2, 3)).sum().item()
        n_frames += x.shape[0]
        acts = torch.as_tensor(ep.actions, device=device)
        starts = range(k - 1, acts.shape[0] - k_max + 1)  # t: the last history frame
        if len(starts) == 0:
            continue
        z_hist = torch.stack([z[t - k + 1 : t + 1] for t in starts])  # [N,K,D]
        a_prev = torch.stack([acts[t - k + 1 : t] for t in starts])  # [N,K-1,A]
        plan = torch.stack([acts[t : t + k_max] for t in starts])[:, None]  # [N,1,k_max,A]
        pred = model.rollout(z_hist, a_prev, plan)[:, 0]  # [N,k_max,D]
        frames = model.decode(pred.flatten(0, 1)).view(len(starts), k_max, *x.shape[1:])
        truth = torch.stack([x[t + 1 : t + 1 + k_max] for t in starts])  # [N,k_max,3,S,S]
        last = torch.stack([x[t] for t in starts])[:, None]  # [N,1,3,S,S]
        model_sum += (frames - truth).pow(2).mean(dim=(2, 3, 4)).sum(0).double().cpu()
        copy_sum += (last - truth).pow(2).mean(dim=(2, 3, 4)).sum(0).double().cpu()
        n_win += len(starts)
    if n_win == 0:
        raise ValueError(f"pixel_prediction_error needs episodes of at least {k - 1 + k_max} actions "
                         f"(history {k}, k_max {k_max})")
    out = {"recon_mse": recon_sum / n_frames}
    for i in sorted({0, k_max - 1}):
        m, c = float(model_sum[i]) / n_win, float(copy_sum[i]) / n_win
        out[f"kstep_mse_k{i + 1}"] = m
        out[f"copy_last_mse_k{i + 1}"] = c
        out[f"kstep_ratio_k{i + 1}"] = m / c if c > 0 else float("nan")
    return out
