"""`planner surprise`: physical-surprise detection with the world model's prediction error (docs/SURPRISE.md).

Per-step surprise of a clip (frames uint8 [T+1,H,W,3], actions [T,A] normalized): for every step t the
residual r[t] = predict(z[t-K+1..t], a[t-K+1..t]) - z[t+1] (K = history length; before K frames exist the
first latent repeats and the missing actions are zero, as the MPC pads) gives
    errors[t] = ||r[t]||^2                    (plain, space "latent"), or
    errors[t] = r[t]^T P r[t]                 (`planner surprise --whiten`, the default),
with P the inverse of the residual covariance on calibration data (shrunk toward its mean variance), so an
error in a latent direction the model usually predicts well counts more than one in a noisy direction.
A checkpoint with an energy head is also scored in the planning energy's space (`world_model_energy`,
||e(predict) - e(z[t+1])||^2 with e = model.energy_embed: metres of hand and block for a state head;
space "energy", which `score_clip` uses for such a checkpoint when no calibration says otherwise), and in
the energy head's last hidden layer (`world_model_head_features`, ||f(predict) - f(z[t+1])||^2 with f =
`energy_head.features`). Space "energy_features" adds the two, the features weighted by w = typical energy
error / typical feature error (measured on the calibration clips, saved with the calibration): the readout
catches where the block went, the features also how it looks; `planner surprise` judges and saves it for a
checkpoint with an energy head (it detects best, docs/SURPRISE.md).
Errors are normalised by the typical error (median per-step error over possible clips, from a calibration
set disjoint from the evaluation clips). Steps t < K-1 have padded context and are left out
of the clip score (max over the remaining steps) and of the flags.

The command generates matched possible / impossible clips (envs.impossible) and reports, for our model and
two baselines (pixel difference, and the same architecture untrained), the clip-level AUROC, the pairwise
accuracy (impossible clip scores above its matched possible clip) and the fraction of impossible clips
whose peak step lies within one step of the violation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from envs.impossible import KINDS, ClipConfig, mean_pixel_change
from planner.preprocess import Preprocessing, images_to_model_input

SCORE_SPACES = ("latent", "energy", "energy_features")
"""Where `score_clip` measures a step's prediction error: the latent, the planning energy's space, or that
space plus the energy head's hidden features (weighted; needs a calibration's feature_weight)."""
CALIBRATION_SCORES = {"latent": "l2", "energy": "energy", "energy_features": "energy_features"}
"""Score space -> the `score` name a config.json `surprise` calibration records it under."""
DEFAULT_FLAG_THRESHOLD = 10.0
"""Flag a step whose error is this many typical errors (used when no calibrated threshold is given)."""
TARGETS = {"auroc": 0.95, "pairwise_accuracy": 0.95, "peak_within_1": 0.90}
"""Targets on the push task (docs/SURPRISE.md)."""


@dataclass
class SurpriseConfig:
    """Physical-surprise benchmark: matched possible / impossible clips, our model against two baselines."""

    checkpoint: Path
    """Checkpoint directory (config.json + model.safetensors)."""
    env: str
    """Block task to generate clips in: ArmPush-v0 or ArmPickPlace-v0."""
    episodes: int = 20
    """N: matched (possible, impossible) pairs per violation kind (one possible clip per start)."""
    json: Path | None = None
    """Write the results object here (atomic)."""
    kinds: tuple[str, ...] = KINDS
    """Violation kinds to test."""
    seed: int = 0
    """Base seed; clip starts come from the `eval` seed stream (never a collection start)."""
    calibration_episodes: int = 20
    """Possible clips (eval-stream indices after the evaluation ones) that set the typical error and the
    flag threshold."""
    flag_quantile: float = 0.95
    """Flag threshold = this quantile of the calibration clips' scores (max normalized error per clip), so
    about 1 - q of possible clips get a flag."""
    steps: int = 16
    """T: control steps per clip."""
    device: str = "cpu"
    """Torch device (cpu, cuda, cuda:1)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice; 1 is fastest on a busy shared machine)."""
    figure: Path | None = None
    """Write a PNG: the first start's clips around the violation (possible + each kind) and their
    normalized per-step surprise."""
    whiten: bool = True
    """Score latent residuals by r^T P r (P: inverse shrunk residual covariance on calibration data) for
    the world model and the untrained encoder; also reports the plain ||r||^2 world model as
    `world_model_l2`. --no-whiten: plain squared error only."""
    shrinkage: float = 0.1
    """Whitening covariance = (1 - s) * sample covariance + s * (mean variance) * I, in [0, 1]."""
    whitening_episodes: int = 100
    """Possible clips (eval-stream indices after the calibration ones) whose residuals give the whitening
    covariance when --calibration-data is not set (disjoint from the calibration clips, so the typical
    error and the flag threshold are measured out of sample)."""
    calibration_data: Path | None = None
    """Trajectory store (e.g. the checkpoint's training store) whose highest-index episodes (the held-out
    split of `planner train`) give the whitening covariance instead of --whitening-episodes clips."""
    calibration_data_episodes: int = 100
    """Episodes of --calibration-data used for the covariance."""
    score: str | None = None
    """The served score: judged against the targets (`judged_detector`) and saved by --save-calibration:
    latent | energy | energy_features (None: energy_features for a checkpoint with an energy head, else
    latent)."""
    save_calibration: bool = False
    """Write the served score's calibration (`serving_calibration`: score space, typical error, flag
    threshold and, for energy_features, the feature weight)
    into the checkpoint's config.json under `surprise`, where POST /v1/surprise reads it; the weights and
    the model's name are unchanged, the card's appended sections are kept."""
    progress: bool = True
    """Show tqdm progress."""


@dataclass
class Whitening:
    """Residual whitening: residuals [T,D] -> r^T P r [T], P [D,D] the inverse of the shrunk covariance."""

    precision: np.ndarray

    @classmethod
    def fit(cls, residuals: np.ndarray, shrinkage: float = 0.1) -> Whitening:
        """residuals [N,D] (N > 1, finite) -> Whitening with P = ((1-s) C + s tr(C)/D I)^-1."""
        r = np.asarray(residuals, dtype=np.float64)
        if r.ndim != 2 or len(r) < 2 or not np.all(np.isfinite(r)):
            raise ValueError(f"whitening needs finite residuals [N>1, D], got shape {r.shape}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        cov = np.cov(r, rowvar=False)
        scale = max(float(np.trace(cov)) / cov.shape[0], 1e-12)
        cov = (1.0 - shrinkage) * cov + shrinkage * scale * np.eye(cov.shape[0])
        return cls(precision=np.linalg.pinv(cov, hermitian=True))

    def __call__(self, residuals: np.ndarray) -> np.ndarray:
        r = np.asarray(residuals, dtype=np.float64)
        return np.einsum("td,de,te->t", r, self.precision, r)


@dataclass
class SurpriseResult:
    """Surprise of one clip: errors float [T] (raw squared latent error), normalized [T] (errors /
    typical_error), flagged (steps t >= K-1 with normalized > threshold), score (max of normalized over
    t >= K-1) and peak_step (its argmax)."""

    errors: np.ndarray
    normalized: np.ndarray
    flagged: list[int]
    score: float
    peak_step: int
    typical_error: float
    threshold: float


# ----------------------------------------------------------------------------------------------------------
# Scoring


def _check_clip(frames: np.ndarray, actions: np.ndarray, image_shape: tuple[int, int], action_dim: int):
    frames, actions = np.asarray(frames), np.asarray(actions, dtype=np.float32)
    h, w = image_shape
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
        raise ValueError(f"frames must be uint8 [T+1,{h},{w},3], got {frames.dtype} {tuple(frames.shape)}")
    if actions.ndim != 2 or actions.shape[1] != action_dim or len(frames) != len(actions) + 1:
        raise ValueError(f"actions must be [T,{action_dim}] with T = frames - 1 = {len(frames) - 1}, got "
                         f"{tuple(actions.shape)}")
    if len(actions) < 1:
        raise ValueError("a clip needs at least 2 frames and 1 action")
    if not np.all(np.isfinite(actions)):
        raise ValueError("actions must be finite")
    return frames, actions


def history_windows(z: torch.Tensor, actions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z [T+1,D], actions [T,A] -> (z_hist [T,K,D], a_hist [T,K,A]) for predicting z[1..T].

    Window t holds z[t-K+1..t] and actions[t-K+1..t]; before index 0 the first latent repeats and the
    actions are zero (planner.mpc.pad_history's rule).
    """
    t = actions.shape[0]
    z_pad = torch.cat([z[:1].expand(k - 1, -1), z[:t]])  # [T+K-1,D]
    a_pad = torch.cat([actions.new_zeros(k - 1, actions.shape[1]), actions])  # [T+K-1,A]
    idx = torch.arange(t).unsqueeze(1) + torch.arange(k).unsqueeze(0)  # [T,K]
    return z_pad[idx], a_pad[idx]


@torch.no_grad()
def predictions(model, frames: np.ndarray, actions: np.ndarray, device: str | torch.device = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """frames uint8 [T+1,S,V*S,3], actions [T,A] normalized -> (predicted z[1..T], encoded z[1..T]), [T,D]."""
    cfg = model.cfg
    frames, actions = _check_clip(frames, actions, (cfg.image_size, cfg.image_views * cfg.image_size),
                                  cfg.action_dim)
    z = model.encode(images_to_model_input(np.ascontiguousarray(frames), device=device)).float()
    a = torch.as_tensor(actions, device=z.device)
    z_hist, a_hist = history_windows(z, a, model.history_len)
    return model.predict(z_hist, a_hist).float(), z[1:]


def prediction_residuals(model, frames: np.ndarray, actions: np.ndarray, device: str | torch.device = "cpu"
                         ) -> np.ndarray:
    """frames uint8 [T+1,S,S,3], actions [T,A] normalized -> float64 [T,D]: predict - z[t+1] per step."""
    pred, z_next = predictions(model, frames, actions, device)
    return (pred - z_next).double().cpu().numpy()


@torch.no_grad()
def energy_space_errors(model, pred: torch.Tensor, z_next: torch.Tensor) -> np.ndarray:
    """`predictions`' output [T,D] x 2 read in the planning energy's space: float64 [T] of
    ||e(predict) - e(z[t+1])||^2, e = model.energy_embed (metres of hand and block for a state head)."""
    return (model.energy_embed(pred) - model.energy_embed(z_next)).double().square().sum(-1).cpu().numpy()


@torch.no_grad()
def head_feature_errors(model, pred: torch.Tensor, z_next: torch.Tensor) -> np.ndarray:
    """`predictions`' output [T,D] x 2 read in the energy head's last hidden layer: float64 [T] of
    ||f(predict) - f(z[t+1])||^2, f = model.energy_head.features."""
    f = model.energy_head.features
    return (f(pred) - f(z_next)).double().square().sum(-1).cpu().numpy()


def energy_features_errors(energy_errors: np.ndarray, feature_errors: np.ndarray,
                           feature_weight: float) -> np.ndarray:
    """Space "energy_features" per step [T]: energy_space_errors + feature_weight x head_feature_errors."""
    return energy_errors + feature_weight * feature_errors


def default_score_space(model) -> str:
    """The space needing no calibration: "energy" for a model with an energy head, else "latent"."""
    return "energy" if getattr(model, "energy_head", None) is not None else "latent"


def _check_feature_weight(feature_weight) -> float:
    if feature_weight is None or not (np.isfinite(feature_weight) and feature_weight > 0):
        raise ValueError("space 'energy_features' needs a positive feature_weight (typical energy error / "
                         f"typical feature error, from `planner surprise` calibration), got {feature_weight}")
    return float(feature_weight)


def prediction_errors(model, frames: np.ndarray, actions: np.ndarray, device: str | torch.device = "cpu",
                      space: str = "latent", feature_weight: float | None = None) -> np.ndarray:
    """frames uint8 [T+1,S,S,3], actions [T,A] normalized -> float64 [T] per step: ||predict - z[t+1]||^2
    (space "latent"), the same in the energy head's space (space "energy", energy_space_errors), or that
    plus feature_weight x head_feature_errors (space "energy_features")."""
    if space not in SCORE_SPACES:
        raise ValueError(f"space must be one of {SCORE_SPACES}, got {space!r}")
    if space == "latent":
        return np.square(prediction_residuals(model, frames, actions, device)).sum(-1)
    if default_score_space(model) != "energy":
        raise ValueError(f"space {space!r} needs a checkpoint with an energy head; this one has none")
    weight = _check_feature_weight(feature_weight) if space == "energy_features" else None
    pred, z_next = predictions(model, frames, actions, device)
    errors = energy_space_errors(model, pred, z_next)
    if weight is None:
        return errors
    return energy_features_errors(errors, head_feature_errors(model, pred, z_next), weight)


def summarize(errors: np.ndarray, typical_error: float, threshold: float, first_step: int) -> SurpriseResult:
    """Normalize per-step errors [T] and take the clip score / peak / flags over steps >= first_step."""
    errors = np.asarray(errors, dtype=np.float64)
    if not (np.isfinite(typical_error) and typical_error > 0):
        raise ValueError(f"typical_error must be a positive number, got {typical_error}")
    if not 0 <= first_step < len(errors):
        raise ValueError(f"the clip has {len(errors)} steps; scoring starts at step {first_step}: send "
                         f"at least {first_step + 2} frames")
    norm = errors / typical_error
    peak = first_step + int(np.argmax(norm[first_step:]))
    flagged = [int(t) for t in np.flatnonzero(norm > threshold) if t >= first_step]
    return SurpriseResult(errors=errors, normalized=norm, flagged=flagged, score=float(norm[peak]),
                          peak_step=peak, typical_error=float(typical_error), threshold=float(threshold))


@dataclass(frozen=True)
class ServingScore:
    """How POST /v1/surprise scores a clip: the error space and, when calibrated, the typical error."""

    space: str
    typical_error: float | None
    threshold: float
    feature_weight: float | None = None

    @classmethod
    def from_checkpoint(cls, config: dict, model) -> ServingScore:
        """From config.json `surprise` (written by `planner surprise --save-calibration`), else the model's
        default space, self-normalized, DEFAULT_FLAG_THRESHOLD. ValueError on a calibration that does not
        fit the model (unknown score, energy score without an energy head, energy_features without a
        feature weight)."""
        calib = config.get("surprise") or {}
        if not calib:
            return cls(default_score_space(model), None, DEFAULT_FLAG_THRESHOLD)
        spaces = {v: k for k, v in CALIBRATION_SCORES.items()}
        score = calib.get("score", "l2")
        if score not in spaces:
            raise ValueError(f"config.json surprise.score must be one of {list(spaces)}, got {score!r}")
        if spaces[score] != "latent" and default_score_space(model) != "energy":
            raise ValueError(f"config.json surprise.score is {score!r} but the model has no energy head")
        weight = None
        if spaces[score] == "energy_features":
            weight = _check_feature_weight(calib.get("feature_weight"))
        threshold = float(calib.get("threshold", DEFAULT_FLAG_THRESHOLD))
        return cls(spaces[score], float(calib["typical_error"]), threshold, weight)


def score_clip(model, frames: np.ndarray, actions: np.ndarray, device: str | torch.device = "cpu",
               typical_error: float | None = None,
               threshold: float = DEFAULT_FLAG_THRESHOLD, space: str | None = None,
               feature_weight: float | None = None) -> SurpriseResult:
    """Surprise of one clip: frames uint8 [T+1,S,S,3] (the model's size), actions [T,A] normalized.

    typical_error: the model's median per-step error on possible clips in `space` (`planner surprise`
    measures it); None normalizes by the clip's own median error over the scored steps (a violation is a
    spike against the rest of the clip). space: "latent" | "energy" | "energy_features" (default:
    default_score_space; energy_features needs feature_weight). Needs T >= K (history length) so that one
    step has full context.
    """
    errors = prediction_errors(model, frames, actions, device, space or default_score_space(model),
                               feature_weight)
    first = model.history_len - 1
    if typical_error is None:
        if first >= len(errors):
            raise ValueError(f"send at least {first + 2} frames: the model's history length is {first + 1}")
        typical_error = max(float(np.median(errors[first:])), 1e-12)
    return summarize(errors, typical_error, threshold, first)


# ----------------------------------------------------------------------------------------------------------
# Detection metrics


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > a random negative), ties counting one half (Mann-Whitney U / n1 n0)."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"AUROC needs positive and negative scores, got {pos.size} and {neg.size}")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def pairwise_accuracy(impossible: np.ndarray, possible: np.ndarray) -> float:
    """Fraction of matched pairs whose impossible clip scores above its possible clip (ties: one half)."""
    imp, pos = np.asarray(impossible, dtype=np.float64), np.asarray(possible, dtype=np.float64)
    if imp.shape != pos.shape or imp.size == 0:
        raise ValueError(f"need matched, non-empty score arrays, got shapes {imp.shape} and {pos.shape}")
    return float(np.mean((imp > pos) + 0.5 * (imp == pos)))


def peak_within(peak_steps, violation_steps, tolerance: int = 1) -> float:
    """Fraction of clips whose peak step is within `tolerance` steps of the violation step."""
    peaks, viol = np.asarray(peak_steps), np.asarray(violation_steps)
    if peaks.shape != viol.shape or peaks.size == 0:
        raise ValueError(f"need matched, non-empty step arrays, got shapes {peaks.shape} and {viol.shape}")
    return float(np.mean(np.abs(peaks - viol) <= tolerance))


def detection_metrics(imp_scores, pos_scores, imp_peaks, violation_steps) -> dict:
    """{auroc, pairwise_accuracy, peak_within_1} of matched impossible / possible clip scores."""
    return dict(
        auroc=auroc(imp_scores, pos_scores),
        pairwise_accuracy=pairwise_accuracy(imp_scores, pos_scores),
        peak_within_1=peak_within(imp_peaks, violation_steps, 1),
    )


# ----------------------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class _Detector:
    """A detector's typical (median) per-step value on calibration clips and its scored clips."""

    name: str
    typical: float = 1.0
    scores: dict = field(default_factory=dict)  # (index, kind) -> SurpriseResult


def held_out_episodes(store_path: Path, episodes: int, rule, action_dim: int) -> list[tuple]:
    """(frames uint8 [T+1,S,S,3] brought to the model's size by `rule`, actions [T,A]) of the
    highest-index `episodes` episodes of a trajectory store (the held-out split of `planner train`)."""
    from planner.preprocess import preprocess_image
    from planner.store import TrajectoryStore

    store = TrajectoryStore.open(store_path)
    if store.meta.action_dim != action_dim:
        raise ValueError(f"--calibration-data {store_path}: actions have dim {store.meta.action_dim}, the "
                         f"model {action_dim}")
    out = [(np.stack([preprocess_image(im, rule) for im in ep.images]), ep.actions)
           for ep in store.iter_episodes(store.indices()[-episodes:])]
    if not out:
        raise ValueError(f"--calibration-data {store_path} has no episodes")
    return out


def _untrained_like(loaded, seed: int, device) -> torch.nn.Module:
    """Same architecture as the checkpoint, random init (seeded), eval mode."""
    from planner.checkpoint import build_model

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = build_model(loaded.config["model_type"], loaded.config["architecture"])
    torch.random.set_rng_state(state)
    return model.to(device).eval()


def _validate(cfg: SurpriseConfig) -> None:
    if cfg.episodes < 2:
        raise ValueError(f"--episodes must be >= 2 (AUROC needs several clips), got {cfg.episodes}")
    if cfg.calibration_episodes < 1:
        raise ValueError(f"--calibration-episodes must be >= 1, got {cfg.calibration_episodes}")
    if not 0.0 < cfg.flag_quantile <= 1.0:
        raise ValueError(f"--flag-quantile must be in (0, 1], got {cfg.flag_quantile}")
    bad = [k for k in cfg.kinds if k not in KINDS]
    if bad or not cfg.kinds:
        raise ValueError(f"--kinds: unknown or none {bad}; choose from {' '.join(KINDS)}")
    if cfg.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {cfg.seed}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
    if not 0.0 <= cfg.shrinkage <= 1.0:
        raise ValueError(f"--shrinkage must be in [0, 1], got {cfg.shrinkage}")
    if cfg.whitening_episodes < 1:
        raise ValueError(f"--whitening-episodes must be >= 1, got {cfg.whitening_episodes}")
    if cfg.calibration_data_episodes < 1:
        raise ValueError(f"--calibration-data-episodes must be >= 1, got {cfg.calibration_data_episodes}")
    if cfg.score is not None and cfg.score not in SCORE_SPACES:
        raise ValueError(f"--score must be one of {' '.join(SCORE_SPACES)}, got {cfg.score!r}")


SERVED_DETECTORS = {"energy": "world_model_energy", "energy_features": "world_model_energy_features"}
"""Score space -> the benchmark detector computing it (latent: world_model_l2, or world_model unwhitened)."""


def _served_space(cfg: SurpriseConfig, model) -> str:
    """The score `planner surprise` judges and saves: --score, else energy_features with an energy head."""
    has_head = default_score_space(model) == "energy"
    space = cfg.score or ("energy_features" if has_head else "latent")
    if space != "latent" and not has_head:
        raise ValueError(f"--score {space} needs a checkpoint with an energy head; {cfg.checkpoint} has none")
    return space


def _add_energy_features(step_values: dict, feature_weight: float) -> None:
    """Add the energy_features detector's per-step values [T] to one clip's detector values, in place."""
    step_values["world_model_energy_features"] = energy_features_errors(
        step_values["world_model_energy"], step_values["world_model_head_features"], feature_weight)


def _scoring_record(cfg: SurpriseConfig) -> dict:
    """How the latent residuals were scored (the `scoring` key of the results)."""
    if not cfg.whiten:
        return dict(whiten=False)
    if cfg.calibration_data:
        return dict(whiten=True, shrinkage=cfg.shrinkage, covariance_from=str(cfg.calibration_data),
                    episodes=cfg.calibration_data_episodes)
    return dict(whiten=True, shrinkage=cfg.shrinkage, covariance_from="whitening clips",
                episodes=cfg.whitening_episodes)


def benchmark(cfg: SurpriseConfig) -> dict:
    """Generate the clips, score them with every detector; returns the results (docs/SURPRISE.md)."""
    from tqdm import tqdm

    from envs import make_env, task_kwargs
    from envs.impossible import make_clips
    from planner.checkpoint import file_sha256, load
    from planner.evaluate import write_json_atomic
    from planner.seeding import episode_seed

    _validate(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    loaded = load(cfg.checkpoint, cfg.device)
    model, ck = loaded.model, loaded.config
    if not all(hasattr(model, m) for m in ("encode", "predict", "history_len")):
        raise ValueError(f"{cfg.checkpoint}: model_type {ck['model_type']!r} has no latent encoder + "
                         "predictor; surprise needs a world-model checkpoint")
    k = model.history_len
    train = ck.get("training_data", {})
    env_kwargs = task_kwargs(train.get("env_kwargs", {})) if train.get("env_id") == cfg.env else {}
    env_kwargs.update(image_size=int(ck["image"]["size"]), render_goal=False)
    env = make_env(cfg.env, **env_kwargs)
    space = _served_space(cfg, model)  # what the service computes once this run's calibration is saved
    if cfg.steps <= k:
        raise ValueError(f"--steps must exceed the model's history length {k} (clean context before the "
                         f"violation), got {cfg.steps}")
    clip_cfg = ClipConfig(steps=cfg.steps, violation_min=max(k, min(6, cfg.steps - 1)),
                          violation_max=max(k, min(10, cfg.steps - 1)))
    untrained = _untrained_like(loaded, cfg.seed, cfg.device)
    first = k - 1

    # calibration: possible clips of disjoint seeds set each detector's typical value (and, by default,
    # the whitening of the latent residuals)
    calib_idx = range(cfg.episodes, cfg.episodes + cfg.calibration_episodes)
    calib_clips = [make_clips(env, episode_seed(cfg.seed, i, "eval"), kinds=cfg.kinds[:1],
                              cfg=clip_cfg).possible
                   for i in tqdm(calib_idx, desc="surprise calibrate", disable=not cfg.progress)]
    models = {"world_model": model, "untrained": untrained}
    whitening = {}
    if cfg.whiten:
        if cfg.calibration_data:
            sources = held_out_episodes(cfg.calibration_data, cfg.calibration_data_episodes,
                                        Preprocessing.from_checkpoint_config(ck), model.cfg.action_dim)
        else:
            start = cfg.episodes + cfg.calibration_episodes
            sources = []
            for i in tqdm(range(start, start + cfg.whitening_episodes), desc="surprise whitening",
                          disable=not cfg.progress):
                clip = make_clips(env, episode_seed(cfg.seed, i, "eval"), kinds=cfg.kinds[:1], cfg=clip_cfg)
                sources.append((clip.possible.frames, clip.possible.actions))
        for name, m in models.items():
            res = np.concatenate([prediction_residuals(m, f, a, cfg.device)[first:] for f, a in sources])
            whitening[name] = Whitening.fit(res, cfg.shrinkage)

    feature_weight = None  # energy_features' weight, set from the calibration clips

    def step_scores(frames: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Every detector's per-step values [T] for one clip; one encode + predict pass per model."""
        out = {}
        for name, m in models.items():
            pred, z_next = predictions(m, frames, actions, cfg.device)
            res = (pred - z_next).double().cpu().numpy()
            plain = np.square(res).sum(-1)
            out[name] = whitening[name](res) if cfg.whiten else plain
            if cfg.whiten and name == "world_model":
                out["world_model_l2"] = plain
            if name == "world_model" and default_score_space(m) == "energy":
                out["world_model_energy"] = energy_space_errors(m, pred, z_next)
                out["world_model_head_features"] = head_feature_errors(m, pred, z_next)
                if feature_weight is not None:
                    _add_energy_features(out, feature_weight)
        out["pixel"] = mean_pixel_change(frames)
        return out

    def typical(values: list[np.ndarray]) -> float:
        """Median per-step value over the calibration clips' scored steps (floored away from zero)."""
        return max(float(np.median(np.concatenate([v[first:] for v in values]))), 1e-12)

    calib_steps = [step_scores(c.frames, c.actions) for c in calib_clips]
    if "world_model_head_features" in calib_steps[0]:
        feature_weight = (typical([s["world_model_energy"] for s in calib_steps])
                          / typical([s["world_model_head_features"] for s in calib_steps]))
        for steps in calib_steps:
            _add_energy_features(steps, feature_weight)
    detectors = [_Detector(name) for name in calib_steps[0]]  # world_model first: flags and targets
    calib_raw = {d.name: [steps[d.name] for steps in calib_steps] for d in detectors}
    for d in detectors:
        d.typical = typical(calib_raw[d.name])
    calib_scores = [float(e[first:].max()) / detectors[0].typical for e in calib_raw["world_model"]]
    threshold = float(np.quantile(calib_scores, cfg.flag_quantile))
    served_name = SERVED_DETECTORS.get(space, "world_model_l2" if cfg.whiten else "world_model")
    served = next(d for d in detectors if d.name == served_name)
    served_scores = [float(e[first:].max()) / served.typical for e in calib_raw[served.name]]
    serving = dict(score=CALIBRATION_SCORES[space], detector=served.name, typical_error=served.typical,
                   flag_quantile=cfg.flag_quantile, env=cfg.env,
                   calibration_episodes=cfg.calibration_episodes,
                   threshold=float(np.quantile(served_scores, cfg.flag_quantile)))
    if space == "energy_features":
        serving["feature_weight"] = feature_weight

    # evaluation clips
    records, pixel_at_v = [], {kind: {"possible": [], "impossible": []} for kind in cfg.kinds}
    for i in tqdm(range(cfg.episodes), desc="surprise clips", disable=not cfg.progress):
        seed = episode_seed(cfg.seed, i, "eval")
        clips = make_clips(env, seed, kinds=cfg.kinds, cfg=clip_cfg)
        for name, clip in [("possible", clips.possible), *clips.impossible.items()]:
            raw = step_scores(clip.frames, clip.actions)
            for d in detectors:
                thr = threshold if d.name == "world_model" else np.inf
                d.scores[(i, name)] = summarize(raw[d.name], d.typical, thr, first)
        v = next(iter(clips.impossible.values())).violation_step
        if i == 0 and cfg.figure:
            named = [("possible", clips.possible), *clips.impossible.items()]
            plot_clips(named, [detectors[0].scores[(0, n)] for n, _ in named], v, cfg.figure)
        pix_possible = mean_pixel_change(clips.possible.frames)[v]
        for kind, clip in clips.impossible.items():
            pixel_at_v[kind]["possible"].append(float(pix_possible))
            pixel_at_v[kind]["impossible"].append(float(mean_pixel_change(clip.frames)[v]))
            rec = dict(index=i, seed=seed, kind=kind, violation_step=v, start_step=clip.start_step)
            for d in detectors:
                imp, pos = d.scores[(i, kind)], d.scores[(i, "possible")]
                rec[d.name] = dict(impossible_score=imp.score, possible_score=pos.score,
                                   peak_step=imp.peak_step)
            wm_imp, wm_pos = detectors[0].scores[(i, kind)], detectors[0].scores[(i, "possible")]
            rec["world_model"].update(impossible_flags=wm_imp.flagged, possible_flags=wm_pos.flagged)
            records.append(rec)

    def metrics_for(name: str, kinds) -> dict:
        rs = [r for r in records if r["kind"] in kinds]
        return detection_metrics([r[name]["impossible_score"] for r in rs],
                                 [r[name]["possible_score"] for r in rs],
                                 [r[name]["peak_step"] for r in rs], [r["violation_step"] for r in rs])

    results = {}
    for d in detectors:
        overall = metrics_for(d.name, cfg.kinds)
        # overall AUROC counts each possible clip once (it is shared by the kinds of one start)
        overall["auroc"] = auroc([r[d.name]["impossible_score"] for r in records],
                                 [d.scores[(i, "possible")].score for i in range(cfg.episodes)])
        per_kind = {kind: metrics_for(d.name, [kind]) for kind in cfg.kinds}
        results[d.name] = dict(overall=overall, per_kind=per_kind, typical_step_value=d.typical)
    judged = results[served.name]["overall"]  # targets are judged on the score POST /v1/surprise serves
    flags = dict(
        threshold=threshold,
        quantile=cfg.flag_quantile,
        possible_clips_flagged=float(np.mean([bool(detectors[0].scores[(i, "possible")].flagged)
                                              for i in range(cfg.episodes)])),
        impossible_flagged_within_1=float(np.mean([
            any(abs(t - r["violation_step"]) <= 1 for t in r["world_model"]["impossible_flags"])
            for r in records
        ])),
    )
    result = dict(
        env=cfg.env, checkpoint=str(cfg.checkpoint), checkpoint_name=loaded.name,
        checkpoint_sha256=file_sha256(Path(cfg.checkpoint) / "model.safetensors"),
        episodes=cfg.episodes, seed=cfg.seed, kinds=list(cfg.kinds),
        calibration_episodes=cfg.calibration_episodes,
        scoring=_scoring_record(cfg),
        history_len=k, clip=asdict(clip_cfg), typical_error=detectors[0].typical, flags=flags,
        serving_calibration=serving,
        detectors=results, targets=TARGETS, judged_detector=served.name,
        meets_targets={m: bool(judged[m] >= t) for m, t in TARGETS.items()},
        beats_baselines={b: {m: bool(judged[m] > results[b]["overall"][m]) for m in TARGETS}
                         for b in ("untrained", "pixel")},
        pixel_change_at_violation={
            kind: {c: float(np.mean(vals)) for c, vals in pv.items()} for kind, pv in pixel_at_v.items()
        },
        device=str(cfg.device), threads=torch.get_num_threads(), seconds=time.perf_counter() - t0,
        per_clip=records,
    )
    if cfg.json:
        write_json_atomic(cfg.json, result)
    return result


def plot_clips(named_clips: list, results: list[SurpriseResult], violation_step: int, path) -> None:
    """PNG: per clip (rows) frames v-2..v+3 and the normalized per-step surprise, violation marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = violation_step
    shown = [t for t in range(v - 2, v + 4) if 0 <= t < len(named_clips[0][1].frames)]
    fig, axes = plt.subplots(len(named_clips), len(shown) + 1, figsize=(1.3 * len(shown) + 3.2,
                                                                          1.3 * len(named_clips)),
                             gridspec_kw={"width_ratios": [1] * len(shown) + [2.5]}, squeeze=False)
    top = max(float(r.normalized.max()) for r in results)
    for row, ((name, clip), res) in enumerate(zip(named_clips, results, strict=True)):
        for col, t in enumerate(shown):
            ax = axes[row, col]
            ax.imshow(clip.frames[t])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"frame {t}" + (" (v+1)" if t == v + 1 else ""), fontsize=7)
        axes[row, 0].set_ylabel(name, fontsize=8)
        ax = axes[row, -1]
        ax.plot(res.normalized, marker=".", lw=1)
        ax.axvline(v, color="r", lw=0.8, ls="--")
        ax.set_ylim(0, top * 1.05)
        ax.tick_params(labelsize=6)
        if row == 0:
            ax.set_title("surprise / typical (step t: frame t -> t+1)", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def format_table(res: dict) -> str:
    """The printed summary: one row per detector and kind."""
    names = list(res["detectors"])
    lines = [f"{res['env']} {res['checkpoint_name']}: {res['episodes']} pairs per kind, seed {res['seed']}",
             f"{'detector':<15} {'kind':<13} {'AUROC':>6} {'pairwise':>9} {'peak±1':>7}"]
    for name in names:
        d = res["detectors"][name]
        for kind, m in [("all", d["overall"]), *d["per_kind"].items()]:
            lines.append(f"{name:<15} {kind:<13} {m['auroc']:>6.3f} {m['pairwise_accuracy']:>9.3f} "
                         f"{m['peak_within_1']:>7.0%}")
    change = res["pixel_change_at_violation"]
    lines.append("mean pixel change at the violation step (possible -> impossible): " + ", ".join(
        f"{k} {v['possible']:.2f} -> {v['impossible']:.2f}" for k, v in change.items()))
    f = res["flags"]
    lines.append(f"flags (typical error {res['typical_error']:.4g}, threshold {f['threshold']:.2f} typical "
                 f"errors): possible clips flagged "
                 f"{f['possible_clips_flagged']:.0%}, impossible flagged within 1 step "
                 f"{f['impossible_flagged_within_1']:.0%}")
    return "\n".join(lines)


def run(cfg: SurpriseConfig) -> None:
    res = benchmark(cfg)
    print(format_table(res))
    if cfg.save_calibration:
        from planner import checkpoint

        loaded = checkpoint.load(cfg.checkpoint, cfg.device)
        name = checkpoint.update_config(cfg.checkpoint, loaded, {"surprise": res["serving_calibration"]})
        c = res["serving_calibration"]
        print(f"{name}: config.json surprise = typical error {c['typical_error']:.4g}, flag threshold "
              f"{c['threshold']:.2f} typical errors ({c['detector']} score, {c['flag_quantile']:.0%} "
              "quantile)")
    for path in (cfg.json, cfg.figure):
        if path:
            print(f"wrote {path}")

