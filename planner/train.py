"""`planner train`: fit the JEPA world model on a trajectory store and write a self-describing checkpoint.

Runs on one process (`planner train ...`) or many (`torchrun --nproc_per_node N -m planner.cli train ...`,
DistributedDataParallel over gloo on CPU, NCCL on CUDA). Data order, learning rate and every random draw
are functions of (seed, rank, step), and the training state (model, EMA encoder, optimizer, RNG, step) is
saved atomically every --save-every steps, so `--resume` continues exactly where the run stopped.
Collapse watch: the effective rank and per-dimension std of every batch's latents are checked; a sustained
collapse stops training with CollapseError and writes no checkpoint.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from itertools import chain
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from planner import checkpoint
from planner.cli import invoked_command
from planner.data import WindowDataset, WindowSpec, episode_lengths, split_episodes
from planner.energy_head import (
    EnergyHeadConfig,
    fit_energy_head,
    fit_state_head,
    state_column_weights,
    state_targets,
)
from planner.metrics import (
    calibrate_goal_energy_threshold,
    collapse_stats,
    encode_episodes,
    energy_rank_correlation,
    in_energy_space,
    kstep_prediction_error,
    linear_probe_r2,
    scale_columns,
    with_proprio_in_state,
)
from planner.preprocess import images_to_model_input
from planner.store import META_FILE, StoreError, TrajectoryStore
from planner.world_model import ObjectiveConfig, WorldModel, WorldModelConfig, jepa_loss

STATE_FILE = "train_state.pt"


@dataclass
class TrainConfig:
    """Train the latent (JEPA) world model on a trajectory store and write a checkpoint directory."""

    data: Path
    """Trajectory store directory (made by `planner collect` or `planner import`)."""
    out: Path
    """Checkpoint directory to write (config.json, model.safetensors, card.md); replaced atomically."""
    steps: int = 3000
    """Total optimizer steps (the LR schedule spans them)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: CUDA when present, else CPU. Under torchrun each rank uses cuda:LOCAL_RANK."""
    resume: bool = False
    """Continue from LOG_DIR/train_state.pt (same config required; continues exactly)."""
    init_from: Path | None = None
    """Start from this checkpoint's encoder and predictor weights instead of a random initialization, with
    a fresh optimizer and LR schedule over --steps (train a finished model longer, or on more data). Its
    architecture must equal --model's; its energy head is dropped (the fit after training makes a new one)."""
    log_dir: Path | None = None
    """Where train_log.csv, val_log.csv and train_state.pt go (default: runs/<out dir name>)."""
    batch_size: int = 32
    """Windows per step per process."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warmup steps, then cosine decay to lr * min_lr_ratio."""
    min_lr_ratio: float = 0.05
    """Final learning rate as a fraction of --lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this."""
    seed: int = 0
    """Seeds initialization, data order and random projections."""
    val_fraction: float = 0.1
    """Share of episodes (the highest indices) held out for validation."""
    val_every: int = 500
    """Validation metrics every this many steps (0: only at the end)."""
    val_episodes: int = 20
    """Held-out episodes used for validation metrics (also the number of training episodes used to fit
    probes and calibrate the goal-energy threshold)."""
    goal_margin: float = 0.5
    """goal_reached is calibrated for this fraction of the task's success distance (0.5: an agent that
    stops on goal_reached stops about 2.5 cm from a reach goal, not at the 5 cm edge; measured in
    docs/BENCHMARKS.md)."""
    calibration_episodes: int = 200
    """Training episodes whose states (against their goal images, when enough come near them) calibrate
    the goal-energy threshold."""
    save_every: int = 200
    """Save the training state every this many steps."""
    workers: int = 1
    """DataLoader worker processes per rank (0: load in the main process)."""
    episodes_per_batch: int = 16
    """Distinct episodes each batch draws windows from."""
    task_motion_fraction: float = 0.0
    """Share of training windows drawn among those in which the recorded task state moves (block tasks:
    the contact windows, 12.5% of push steps), where an episode has any; 0: uniform. The task state only
    weights the sampling, it is never a training target (docs/MODEL.md)."""
    task_motion_threshold: float = 0.002
    """Metres per step above which the task state counts as moving (for task_motion_fraction)."""
    cache_episodes: int = 64
    """Decoded episodes kept per worker (bounded memory)."""
    threads: int = 2
    """torch CPU threads per process."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """CUDA only: `bf16` runs the forward pass under bfloat16 autocast, `fp32` in full precision (the CPU
    always trains in fp32). Measured on push: docs/BENCHMARKS.md, "GPU training and the regularizer's
    balance"."""
    stop_at: int | None = None
    """Stop (saving the training state, no checkpoint) at this step; finish later with --resume."""
    success_threshold: float | None = None
    """Task success distance [m] for the goal-energy calibration (default: the env's task spec)."""
    collapse_rank_floor: float = 2.0
    """Collapse when the batch latents' effective rank stays below this ..."""
    collapse_std_floor: float = 1e-2
    """... or their mean per-dimension std stays below this ..."""
    collapse_patience: int = 50
    """... for this many consecutive steps."""
    fit_energy_head: bool = True
    """After training, fit the energy head (planner.energy_head: a learned steps-to-goal distance on the
    frozen latents) that the planner's energy and goal threshold then use."""
    energy_head_episodes: int = 2000
    """Training episodes (spread over the store) whose latents the energy head is fitted on."""
    energy_head: EnergyHeadConfig = field(default_factory=EnergyHeadConfig)
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


class TrainError(ValueError):
    """Training cannot start: the message says what to fix."""


class CollapseError(RuntimeError):
    """Training stopped because the representation collapsed; no checkpoint was written."""


@dataclass
class CollapseMonitor:
    """Raises CollapseError when effective rank or mean std stay below their floors for `patience` checks."""

    rank_floor: float = 2.0
    std_floor: float = 1e-2
    patience: int = 50
    bad: int = 0

    def is_collapsed(self, stats: dict) -> bool:
        return stats["effective_rank"] < self.rank_floor or stats["std_mean"] < self.std_floor

    def update(self, collapsed: bool, stats: dict, step: int) -> None:
        self.bad = self.bad + 1 if collapsed else 0
        if self.bad >= self.patience:
            raise CollapseError(
                f"representation collapsed at step {step}: effective rank {stats['effective_rank']:.2f} "
                f"(floor {self.rank_floor}), mean latent std {stats['std_mean']:.2e} (floor "
                f"{self.std_floor}) for {self.bad} consecutive steps. No checkpoint written. Use "
                f"--objective.regularizer vicreg or sigreg, raise --objective.var-weight / "
                f"--objective.sigreg-weight, or lower --lr."
            )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


# ----------------------------------------------------------------------------------------------------------
# Set-up


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(cfg: TrainConfig, d: Dist) -> torch.device:
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda but no CUDA device is visible; use --device cpu")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def check_store(store: TrajectoryStore, cfg: TrainConfig) -> list[int]:
    """Episodes of the store after checking it matches the model config; raises TrainError."""
    meta = store.meta
    if meta.image_size != cfg.model.image_size:
        raise TrainError(
            f"{store.path / META_FILE}: images are {meta.image_size}x{meta.image_size} but the model expects "
            f"{cfg.model.image_size}; pass --model.image-size {meta.image_size}"
        )
    views, model_views = meta.image_views, getattr(cfg.model, "image_views", 1)
    if views != model_views:  # (the comparison models' configs have one view and no image_views)
        raise TrainError(
            f"{store.path / META_FILE}: images hold {views} view(s) side by side but the model expects "
            f"{model_views}; pass --model.image-views {views}"
        )
    if meta.action_dim != cfg.model.action_dim:
        raise TrainError(
            f"{store.path / META_FILE}: actions have {meta.action_dim} dims but the model expects "
            f"{cfg.model.action_dim}; pass --model.action-dim {meta.action_dim}"
        )
    indices = store.indices()
    if len(indices) < 2:
        raise TrainError(
            f"{store.path} holds {len(indices)} episode(s); training needs at least 2 (one held out). "
            "Collect more with `planner collect --resume --episodes N`"
        )
    return indices


def init_weights(model: WorldModel, path: Path) -> None:
    """Copy checkpoint `path`'s encoder and predictor weights into `model` (--init-from); raises TrainError
    when it cannot be loaded or its architecture differs from the model's (energy head aside)."""
    try:
        loaded = checkpoint.load(path)
    except (checkpoint.CheckpointError, OSError) as e:
        raise TrainError(f"--init-from: {e}") from e
    if (kind := loaded.config.get("model_type")) != "jepa":
        raise TrainError(f"--init-from: {path} is a {kind!r} model, not a jepa one")
    theirs, ours = ({k: v for k, v in c.to_dict().items() if not k.startswith("energy_head")}
                    for c in (loaded.model.cfg, model.cfg))
    if diff := config_differences(theirs, ours):
        shown = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in diff)
        raise TrainError(f"--init-from: {path} has a different architecture ({shown}); pass the same "
                         "--model flags it was trained with")
    state = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("energy_head.")}
    model.load_state_dict(state)


def config_dict(cfg):
    """A config dataclass (or one of its field values) as plain JSON values."""
    return json.loads(json.dumps(asdict(cfg) if is_dataclass(cfg) else cfg, default=str))


# Fields that may differ between a run and its --resume without changing the result.
RESUME_FREE = {"resume", "stop_at", "workers", "log_dir", "val_every", "save_every", "device", "threads"}


def with_added_defaults(saved: dict, cls: type) -> dict:
    """A saved config (dict) with the fields a later version added to `cls` (nested dataclasses included)
    filled in at their defaults, so a run stopped before an option existed still resumes. Options are only
    ever added with a default that keeps the old behaviour (docs/MODEL.md); a field the saved config does
    hold is left as it is and still compared."""
    out = dict(saved)
    for f in fields(cls):
        if f.name not in out:
            out[f.name] = config_dict(f.default if f.default is not MISSING else f.default_factory())
        elif isinstance(out[f.name], dict) and f.default_factory is not MISSING \
                and is_dataclass(sub := f.default_factory()):
            out[f.name] = with_added_defaults(out[f.name], type(sub))
    return out


def config_differences(first: dict, second: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(key, first's value, second's value) for each leaf that differs; nested configs as dotted keys."""
    out = []
    for k in sorted(set(first) | set(second)):
        a, b = first.get(k), second.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out


def check_resume_config(saved: dict, cfg, path: Path) -> None:
    """Refuse a resume whose config (a TrainConfig or a refit's config) differs from the saved one."""
    saved, now = with_added_defaults(saved, type(cfg)), config_dict(cfg)
    diff = config_differences({k: v for k, v in saved.items() if k not in RESUME_FREE},
                              {k: v for k, v in now.items() if k not in RESUME_FREE})
    if diff:
        shown = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, a, b in diff)
        raise TrainError(f"{path} was written with a different config ({shown}); rerun with the same flags")


# ----------------------------------------------------------------------------------------------------------
# Training state (tensors and plain Python values only, loaded with weights_only=True)


def save_state(path: Path, step: int, model: nn.Module, ema: nn.Module | None, opt, cfg: TrainConfig) -> None:
    state = {
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else {},
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "config": json.dumps(config_dict(cfg)),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, model: nn.Module, ema: nn.Module | None, opt, cfg: TrainConfig) -> int:
    if not path.is_file():
        raise TrainError(f"--resume: {path} does not exist (no earlier run with this --log-dir)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as e:
        raise TrainError(f"{path} is corrupt or truncated ({e}); delete it to start over") from e
    check_resume_config(json.loads(state["config"]), cfg, path)
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


# ----------------------------------------------------------------------------------------------------------
# Logging


class CsvLog:
    """Append-only CSV with a fixed header; on resume, rows past the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path, self.fields = path, None
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < resume_step]
            if rows:
                self.fields = list(rows[0])
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                if self.fields:
                    w = csv.DictWriter(f, self.fields)
                    w.writeheader()
                    w.writerows(rows)
            os.replace(tmp, path)
        elif path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


# ----------------------------------------------------------------------------------------------------------
# Validation


def spread(indices: list[int], n: int) -> list[int]:
    """n indices spread evenly over the list (deterministic)."""
    if len(indices) <= n:
        return list(indices)
    step = len(indices) / n
    return [indices[int(i * step)] for i in range(n)]


def fit_head(model: WorldModel, store: TrajectoryStore, train_eps: list[int], cfg: TrainConfig,
             device: torch.device) -> dict:
    """Fit and attach the energy head on frozen latents of training episodes; returns fit diagnostics."""
    return attach_fitted_head(model, store, spread(train_eps, cfg.energy_head_episodes), cfg.energy_head,
                              device)


def attach_fitted_head(model: WorldModel, store: TrajectoryStore, episodes: list[int],
                       head_cfg: EnergyHeadConfig, device: torch.device, progress: bool = True,
                       extra: Sequence[TrajectoryStore] = ()) -> dict:
    """Fit an energy head of `head_cfg.kind` on the frozen latents of these episodes and of every episode of
    the `extra` stores (for `state`, with their recorded proprio and task state as targets) and attach it;
    returns fit diagnostics."""
    model.eval()
    with torch.no_grad():
        sources = chain(store.iter_episodes(episodes), *(st.iter_episodes(st.indices()) for st in extra))
        enc = encode_episodes(model, sources, device)
    if head_cfg.kind == "state":
        proprio = enc.proprio or [None] * len(enc.latents)
        targets = torch.cat([state_targets(p, t, head_cfg)
                             for p, t in zip(proprio, enc.task_states, strict=True)])
        head, fit = fit_state_head(enc.all_latents(), targets, head_cfg, device=device, progress=progress)
    else:
        head, fit = fit_energy_head(enc.latents, model.cfg.latent_dim, head_cfg, device=device,
                                    progress=progress)
    model.attach_energy_head(head)
    return {f"energy_head_{k}": v for k, v in asdict(fit).items()}


@torch.no_grad()
def calibrate_goal_threshold(model: WorldModel, store: TrajectoryStore, episodes: list[int],
                             success_threshold: float, margin: float, device, proprio_weight: float = 1.0,
                             proprio_dims: int = 0, subgoal_success_threshold: float | None = None) -> dict:
    """goal_reached's energy threshold, calibrated (planner.metrics rule) for margin x the task's success
    distance on these episodes, so that "reached" means comfortably inside the success region. With
    `proprio_weight` != 1 (a state head's first `proprio_dims` columns weighted so in a final goal's
    energy, planner calibrate --goal-proprio-weight) the threshold is for that weighted energy, and
    `subgoal_threshold` (the plain energy's), `proprio_weight` and `proprio_dims` are recorded beside it
    for MPCAgent (planner.mpc.goal_energy_weights). With `subgoal_success_threshold` S [m], the sub-goals'
    threshold is calibrated separately by the same rule on the plain energy, for frame pairs whose hand
    (the head's first `proprio_dims` proprio columns) and task state together differ by less than S: a
    sub-goal (pre-grasp, grasp) is about where the hand is, which a goal calibrated on the block alone does
    not see; recorded as `subgoal_threshold` with its `subgoal_calibration`."""
    enc = in_energy_space(model, encode_episodes(model, store.iter_episodes(episodes), device))
    target = success_threshold * margin
    result = calibrate_goal_energy_threshold(enc, target).to_dict()
    if proprio_weight != 1.0:
        weights = state_column_weights(model.cfg.energy_head_dim, proprio_dims, proprio_weight)
        plain = result["threshold"]
        result = calibrate_goal_energy_threshold(scale_columns(enc, weights), target).to_dict()
        result |= {"proprio_weight": proprio_weight, "proprio_dims": proprio_dims, "subgoal_threshold": plain}
    if subgoal_success_threshold is not None:
        subgoal = calibrate_goal_energy_threshold(with_proprio_in_state(enc, proprio_dims),
                                                  subgoal_success_threshold).to_dict()
        result |= {"subgoal_threshold": subgoal["threshold"],
                   "subgoal_calibration": subgoal | {"proprio_dims": proprio_dims}}
    return {**result, "margin": margin, "task_success_threshold": success_threshold}


@torch.no_grad()
def validate(
    model: WorldModel,
    store: TrajectoryStore,
    train_eps: list[int],
    val_eps: list[int],
    cfg: TrainConfig,
    device: torch.device,
    success_threshold: float | None,
) -> tuple[dict, dict | None]:
    """Held-out metrics (flat dict of floats) and, when success_threshold is given, the goal threshold."""
    was_training = model.training
    model.eval()
    enc_val = encode_episodes(model, store.iter_episodes(spread(val_eps, cfg.val_episodes)), device)
    enc_tr = encode_episodes(model, store.iter_episodes(spread(train_eps, cfg.val_episodes)), device)
    k = cfg.model.history_len
    m: dict = {}
    coll = collapse_stats(enc_val.all_latents())
    m.update(effective_rank=coll["effective_rank"], std_min=coll["std_min"], std_mean=coll["std_mean"])
    probe = linear_probe_r2(enc_tr.all_latents(), enc_tr.all_task_states(), enc_val.all_latents(),
                            enc_val.all_task_states())
    m["probe_r2_task_state"] = probe.mean_r2
    if enc_tr.proprio is not None and enc_val.proprio is not None:
        import numpy as np

        pp = linear_probe_r2(enc_tr.all_latents(), np.concatenate(enc_tr.proprio), enc_val.all_latents(),
                             np.concatenate(enc_val.proprio))
        m["probe_r2_proprio"] = pp.mean_r2
    ks = kstep_prediction_error(model, enc_val, k, k_max=5, device=device)
    for i in (0, len(ks.k) - 1):
        m[f"kstep_ratio_k{ks.k[i]}"] = ks.ratio[i]
        m[f"action_sensitivity_k{ks.k[i]}"] = ks.action_sensitivity[i]
    enc_val = in_energy_space(model, enc_val)
    energy = energy_rank_correlation(enc_val)
    for name, rho in energy.spearman.items():
        m[f"energy_spearman_{name}"] = rho
    m["energy_flat_ranges"] = json.dumps([[round(a, 3), round(b, 3)] for a, b in energy.flat_ranges])
    threshold = None
    if success_threshold is not None:
        threshold = calibrate_goal_threshold(model, store, spread(train_eps, cfg.calibration_episodes),
                                             success_threshold, cfg.goal_margin, device)
    model.train(was_training)
    return m, threshold


def task_success_threshold(cfg: TrainConfig, meta) -> float:
    if cfg.success_threshold is not None:
        return cfg.success_threshold
    try:
        from envs import make_env

        env = make_env(meta.env_id, **meta.env_kwargs)
    except (ValueError, ImportError) as e:
        raise TrainError(
            f"cannot build env {meta.env_id!r} to read its success threshold ({e}); pass --success-threshold"
        ) from e
    try:
        return float(env.unwrapped.task.success_threshold)
    finally:
        env.close()


# ----------------------------------------------------------------------------------------------------------
# Main


def build_loader(ds: WindowDataset, workers: int):
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
                      persistent_workers=False)


def run(cfg: TrainConfig) -> Path | None:
    """Train; returns the checkpoint path (None when stopped early by --stop-at)."""
    if cfg.steps < 1:
        raise TrainError(f"--steps must be >= 1, got {cfg.steps}")
    if cfg.model.energy_head_dim:
        raise TrainError("--model.energy-head-dim is set by the energy-head fit after training; "
                         "use --energy-head.dim (and --no-fit-energy-head to skip the fit)")
    if cfg.objective.keypoint_spread_weight > 0 and not cfg.model.enc_keypoints:
        raise TrainError("--objective.keypoint-spread-weight penalizes keypoints' attention; the model has "
                         "none (pass --model.enc-keypoints P)")
    torch.set_num_threads(cfg.threads)
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    dev_kind = "cuda" if use_cuda else "cpu"
    d = init_distributed(dev_kind)
    device = resolve_device(cfg, d)
    try:
        store = TrajectoryStore.open(cfg.data)
    except StoreError as e:
        raise TrainError(str(e)) from e
    indices = check_store(store, cfg)
    train_eps, val_eps = split_episodes(indices, cfg.val_fraction)
    success_threshold = task_success_threshold(cfg, store.meta) if d.main else None
    log_dir = Path(cfg.log_dir) if cfg.log_dir is not None else Path("runs") / Path(cfg.out).name
    log_dir.mkdir(parents=True, exist_ok=True)
    state_path = log_dir / STATE_FILE

    torch.manual_seed(cfg.seed)
    model = WorldModel(cfg.model)
    if cfg.init_from is not None:
        init_weights(model, Path(cfg.init_from))
    model = model.to(device)
    ema = copy.deepcopy(model.encoder).requires_grad_(False) if cfg.objective.ema_target else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = load_state(state_path, model, ema, opt, cfg) if cfg.resume else 0
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    ddp_model: nn.Module = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        ddp_model = DistributedDataParallel(model, device_ids=ids)

    spec = WindowSpec(cfg.objective.window_len(cfg.model.history_len), cfg.batch_size, cfg.episodes_per_batch,
                      cfg.task_motion_fraction, cfg.task_motion_threshold)
    ds = WindowDataset(store.path, train_eps, episode_lengths(store, train_eps), spec, seed=cfg.seed,
                       rank=d.rank, start_step=start, end_step=end, cache_episodes=cfg.cache_episodes)
    monitor = CollapseMonitor(cfg.collapse_rank_floor, cfg.collapse_std_floor, cfg.collapse_patience)
    train_log = CsvLog(log_dir / "train_log.csv", start if cfg.resume else None) if d.main else None
    val_log = CsvLog(log_dir / "val_log.csv", start if cfg.resume else None) if d.main else None
    bf16 = device.type == "cuda" and cfg.precision == "bf16"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    from tqdm import tqdm

    bar = tqdm(total=end, initial=start, desc="train", unit="step", disable=not d.main, dynamic_ncols=True)
    model.train()
    t_last = time.perf_counter()
    step = start
    for step, batch in zip(range(start, end), build_loader(ds, cfg.workers), strict=False):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        images = images_to_model_input(batch["images"].to(device, non_blocking=True))
        actions = batch["actions"].to(device, non_blocking=True)
        with autocast:
            out = ddp_model(images, actions, cfg.objective.rollout_steps)
            target = None
            if ema is not None:
                with torch.no_grad():
                    target = ema(images.flatten(0, 1)).view(*images.shape[:2], -1)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 97 + d.rank)
        loss, parts = jepa_loss(out, cfg.objective, cfg.model.history_len, gen, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.encoder.parameters(), strict=True):
                    pe.lerp_(p.detach(), 1 - cfg.objective.ema_decay)
        stats = collapse_stats(out["z"].detach().float().flatten(0, 1))
        collapsed = monitor.is_collapsed(stats)
        if d.world > 1:
            import torch.distributed as dist

            flag = torch.tensor([float(collapsed)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            collapsed = bool(flag.item())
        monitor.update(collapsed, stats, step)
        if not math.isfinite(parts["loss"]):
            raise TrainError(f"loss became {parts['loss']} at step {step}; lower --lr or raise --grad-clip")
        if d.main:
            now = time.perf_counter()
            row = {"step": step, "lr": lr, **parts, "grad_norm": grad_norm,
                   "effective_rank": stats["effective_rank"], "std_mean": stats["std_mean"],
                   "std_min": stats["std_min"], "sec_per_step": now - t_last}
            t_last = now
            train_log.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}", erank=f"{stats['effective_rank']:.1f}")
        done = step + 1
        if d.main and cfg.val_every and done % cfg.val_every == 0 and done < cfg.steps:
            metrics, _ = validate(model, store, train_eps, val_eps, cfg, device, None)
            val_log.write({"step": step, **metrics})
        if d.main and (done % cfg.save_every == 0 or done == end):
            save_state(state_path, done, model, ema, opt, cfg)
        _barrier(d)
        step = done
    bar.close()
    if step < end:
        raise TrainError(f"data ran out at step {step} of {end}")  # cannot happen: the stream has end-start
    if end < cfg.steps:
        if d.main:
            print(f"stopped at step {end} (--stop-at); state in {state_path}; finish with --resume")
        return None
    path = None
    if d.main:
        head_fit = fit_head(model, store, train_eps, cfg, device) if cfg.fit_energy_head else {}
        metrics, threshold = validate(model, store, train_eps, val_eps, cfg, device, success_threshold)
        metrics.update(head_fit)
        val_log.write({"step": end - 1, **metrics})
        timing = training_time(log_dir / "train_log.csv", device, cfg.threads)
        path = write_checkpoint(cfg, model, store, indices, train_eps, val_eps, metrics, threshold, timing)
        print(f"wrote {path} ({checkpoint.checkpoint_name(path)}); metrics: "
              + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
    _barrier(d)
    return path


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def training_time(train_log: Path, device: torch.device, threads: int) -> dict:
    """Wall seconds of the logged optimizer steps (summed over resumed segments) and their device."""
    with open(train_log, newline="") as f:
        seconds = sum(float(row["sec_per_step"]) for row in csv.DictReader(f))
    where = (f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
             else f"cpu ({threads} torch thread{'s' if threads != 1 else ''})")
    return {"step_seconds": round(seconds, 1), "device": where}


def write_checkpoint(cfg: TrainConfig, model: WorldModel, store: TrajectoryStore, indices: list[int],
                     train_eps: list[int], val_eps: list[int], metrics: dict, threshold: dict,
                     timing: dict) -> Path:
    meta = store.meta
    meta_hash = meta.fingerprint()
    command = invoked_command("train")
    config = {
        "image": {"size": meta.image_size, "preprocessing": meta.preprocessing},
        "action": dict(meta.action_spec),
        "proprio": dict(meta.proprio_spec),
        "history_len": cfg.model.history_len,
        "training_data": {
            "store": str(cfg.data),  # as given on the command line (the card repeats the command)
            "env_id": meta.env_id,
            "env_kwargs": meta.env_kwargs,
            "meta_hash": meta_hash,
            "episodes": len(indices),
            "train_episodes": len(train_eps),
            "val_episodes": len(val_eps),
            "val_indices": [val_eps[0], val_eps[-1]],
            "policy": meta.policy,
            "control_hz": meta.control_hz,
        },
        "training": config_dict(cfg),
        "training_time": timing,
        "goal_energy_threshold": threshold["threshold"],
        "goal_energy_calibration": threshold,
        "metrics": metrics,
        "commands": [command] if command else [],
    }
    checkpoint.save(cfg.out, model, config)
    return Path(cfg.out)

