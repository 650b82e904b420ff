"""`planner train-baseline`: train the comparison models (docs/COMPARISON.md) on the same trajectory store.

`--model-type pixel`: the generative world model (planner.pixel_model: JEPA encoder + predictor + decoder,
pixel MSE only). `--model-type gcbc`: goal-conditioned behaviour cloning (planner.gcbc, hindsight goals).
Same data pipeline (planner.data windows, same train/validation split), same optimizer, LR schedule and
store checks as `planner train` (the functions are reused from planner.train). `--time-budget SECONDS` (or
`--match-train-log runs/<jepa>/train_log.csv`) stops at the JEPA run's wall time, with the LR schedule
spanning that time, so the comparison is fair in compute. Single process; no --resume.
The checkpoint goes through planner.checkpoint like JEPA's (`model_type` pixel or gcbc in config.json) and
`planner eval` runs it (pixel: MPC with the same solvers; gcbc: the policy acts).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from planner import checkpoint
from planner.cli import invoked_command
from planner.data import WindowDataset, WindowSpec, episode_lengths, split_episodes
from planner.gcbc import GCBCConfig, GCBCObjectiveConfig, GCBCPolicy, gcbc_loss, relabel
from planner.pixel_model import PixelObjectiveConfig, PixelWorldModel, pixel_loss, pixel_prediction_error
from planner.preprocess import images_to_model_input
from planner.store import StoreError, TrajectoryStore
from planner.train import (
    CsvLog,
    Dist,
    TrainError,
    build_loader,
    check_store,
    config_dict,
    lr_at,
    resolve_device,
    spread,
    task_success_threshold,
    validate,
)
from planner.world_model import WorldModelConfig

DESCRIPTIONS = {
    "pixel": "A `pixel` (generative) world model, the comparison for the JEPA model: the same encoder and "
             "predictor plus a conv decoder, trained on pixel MSE only (reconstruct frames, decode the "
             "action-conditioned latent rollout). Plan with the same solvers, scoring the imagined latents "
             "(`--objective-space latent`) or the decoded frames (`--objective-space pixel`) against the "
             "goal.",
    "gcbc": "A `gcbc` goal-conditioned behaviour-cloning policy, the no-world-model comparison: the JEPA "
            "encoder embeds the current frame(s) and the goal image, an MLP outputs the normalized action. "
            "Trained with hindsight goals (a future frame of the same trajectory). `planner eval` acts with "
            "it directly (no planning, no goal-reached stop).",
}


@dataclass
class BaselineTrainConfig:
    """Train a comparison model (pixel world model or GCBC policy) on a trajectory store."""

    data: Path
    """Trajectory store directory (the same store the JEPA model was trained on)."""
    out: Path
    """Checkpoint directory to write (config.json, model.safetensors, card.md); replaced atomically."""
    model_type: Literal["pixel", "gcbc"] = "pixel"
    """`pixel`: generative world model (--pixel.*, --pixel-objective.*); `gcbc`: policy (--gcbc.*)."""
    steps: int = 3000
    """Maximum optimizer steps (the LR schedule spans them unless a time budget is set)."""
    time_budget: float | None = None
    """Stop after this many seconds of training (the LR schedule then spans the budget): set it to the
    JEPA run's training time for a fair comparison."""
    match_train_log: Path | None = None
    """Use the total `sec_per_step` of this train_log.csv (the JEPA run's) as --time-budget."""
    budget_clock: Literal["wall", "cpu"] = "wall"
    """Clock the time budget is counted on: `wall`, or `cpu` (this process's CPU time, time.process_time:
    fair when other jobs share the machine; with --threads 1 a CPU second is a core-second of training, and
    the JEPA run's logged wall time is at least its CPU time, so the baseline gets no less compute)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: CUDA when present, else CPU."""
    log_dir: Path | None = None
    """Where train_log.csv and val_log.csv go (default: runs/<out dir name>)."""
    batch_size: int = 32
    """Windows per step."""
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
    """Seeds initialization, data order and goal relabelling."""
    val_fraction: float = 0.1
    """Share of episodes (the highest indices) held out for validation (same split as planner train)."""
    val_episodes: int = 20
    """Held-out episodes used for validation metrics (and training episodes for probes / calibration)."""
    goal_margin: float = 0.5
    """goal_reached is calibrated for this fraction of the task's success distance (as `planner train`)."""
    calibration_episodes: int = 200
    """Training episodes that calibrate the goal-energy threshold (as `planner train`)."""
    workers: int = 1
    """DataLoader worker processes (0: load in the main process)."""
    episodes_per_batch: int = 16
    """Distinct episodes each batch draws windows from."""
    cache_episodes: int = 64
    """Decoded episodes kept per worker (bounded memory)."""
    threads: int = 2
    """torch CPU threads."""
    success_threshold: float | None = None
    """Task success distance [m] for the goal-energy calibration of the pixel model (default: the env's)."""
    pixel: WorldModelConfig = field(default_factory=WorldModelConfig)
    """Architecture of the pixel model (the JEPA WorldModelConfig: keep it equal to the JEPA run's)."""
    pixel_objective: PixelObjectiveConfig = field(default_factory=PixelObjectiveConfig)
    gcbc: GCBCConfig = field(default_factory=GCBCConfig)
    """Architecture of the GCBC policy (encoder defaults equal the JEPA encoder's)."""
    gcbc_objective: GCBCObjectiveConfig = field(default_factory=GCBCObjectiveConfig)

    @property
    def model(self) -> WorldModelConfig | GCBCConfig:
        """The architecture of the selected model type (planner.train helpers read cfg.model)."""
        return self.pixel if self.model_type == "pixel" else self.gcbc

    def window_len(self) -> int:
        if self.model_type == "pixel":
            return self.pixel_objective.window_len(self.pixel.history_len)
        return self.gcbc_objective.window_len(self.gcbc.history_len)


def read_train_seconds(path: Path) -> float:
    """Total sec_per_step of a planner train train_log.csv (the run's training wall time)."""
    if not Path(path).is_file():
        raise TrainError(f"--match-train-log {path} does not exist (expected runs/<jepa run>/train_log.csv)")
    with open(path, newline="") as f:
        try:
            total = sum(float(r["sec_per_step"]) for r in csv.DictReader(f))
        except (KeyError, ValueError) as e:
            raise TrainError(f"{path} has no numeric sec_per_step column (not a train log): {e}") from e
    if total <= 0:
        raise TrainError(f"{path} holds no training steps")
    return total


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters in total and per top-level submodule (e.g. encoder, predictor, decoder)."""
    counts = {"total": sum(p.numel() for p in model.parameters())}
    for name, child in model.named_children():
        counts[name] = sum(p.numel() for p in child.parameters())
    return counts


def schedule_step(step: int, elapsed: float, budget: float | None, cfg: BaselineTrainConfig) -> int:
    """The step planner.train.lr_at is evaluated at: `step` itself, or with a time budget, warmup by steps
    and then the cosine decay following the elapsed fraction of the budget (ending at the budget)."""
    if budget is None or step < cfg.warmup_steps:
        return step
    frac = min(1.0, elapsed / budget)
    return max(step, cfg.warmup_steps + int(frac * (cfg.steps - cfg.warmup_steps)))


def build(cfg: BaselineTrainConfig) -> PixelWorldModel | GCBCPolicy:
    return PixelWorldModel(cfg.pixel) if cfg.model_type == "pixel" else GCBCPolicy(cfg.gcbc)


def step_loss(model, cfg: BaselineTrainConfig, images: torch.Tensor, actions: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """images uint8 [B,T,S,S,3], actions [B,T-1,A] -> (loss, parts) for the selected model."""
    if cfg.model_type == "pixel":
        return pixel_loss(model, images_to_model_input(images), actions, cfg.pixel_objective)
    obs, goal, target = relabel(images, actions, cfg.gcbc.history_len, cfg.gcbc_objective, generator)
    mean, log_std = model(images_to_model_input(obs), images_to_model_input(goal))
    return gcbc_loss(mean, log_std, target)


@torch.no_grad()
def gcbc_validation(model: GCBCPolicy, store: TrajectoryStore, val_eps: list[int], cfg: BaselineTrainConfig,
                    device: torch.device, batches: int = 8) -> dict:
    """Held-out action MSE on relabelled windows of validation episodes (fixed seed) and the MSE of always
    predicting the batch-mean action (mse_ratio < 1: the goal tells the policy something)."""
    lengths = episode_lengths(store, val_eps)
    spec = WindowSpec(cfg.window_len(), cfg.batch_size, cfg.episodes_per_batch)
    ds = WindowDataset(store.path, val_eps, lengths, spec, seed=cfg.seed + 1, end_step=batches)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    se = se_mean = 0.0
    n = 0
    for step in range(batches):
        batch = ds.batch(step)
        obs, goal, target = relabel(batch["images"].to(device), batch["actions"].to(device),
                                    cfg.gcbc.history_len, cfg.gcbc_objective, gen)
        mean, _ = model(images_to_model_input(obs), images_to_model_input(goal))
        se += (mean.clamp(-1, 1) - target).pow(2).sum().item()
        se_mean += (target - target.mean(0)).pow(2).sum().item()
        n += target.numel()
    return {"val_action_mse": se / n, "val_mean_action_mse": se_mean / n,
            "val_mse_ratio": se / se_mean if se_mean > 0 else float("nan")}


def run(cfg: BaselineTrainConfig) -> Path:
    """Train the selected comparison model and write its checkpoint; returns the checkpoint path."""
    from tqdm import tqdm

    if cfg.steps < 1:
        raise TrainError(f"--steps must be >= 1, got {cfg.steps}")
    if cfg.time_budget is not None and cfg.match_train_log is not None:
        raise TrainError("pass either --time-budget or --match-train-log, not both")
    budget = read_train_seconds(cfg.match_train_log) if cfg.match_train_log is not None else cfg.time_budget
    if budget is not None and budget <= 0:
        raise TrainError(f"--time-budget must be > 0 seconds, got {budget}")
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg, Dist())
    try:
        store = TrajectoryStore.open(cfg.data)
    except StoreError as e:
        raise TrainError(str(e)) from e
    if store.meta.image_views > 1:
        raise TrainError(f"{cfg.data} holds {store.meta.image_views} views side by side "
                         "(view_layout='wide'); the comparison models take one square view per image")
    try:
        indices = check_store(store, cfg)
    except TrainError as e:  # its messages name planner train's --model.* flags
        raise TrainError(str(e).replace("--model.", f"--{cfg.model_type}.")) from e
    train_eps, val_eps = split_episodes(indices, cfg.val_fraction)
    success_threshold = task_success_threshold(cfg, store.meta) if cfg.model_type == "pixel" else None
    log_dir = Path(cfg.log_dir) if cfg.log_dir is not None else Path("runs") / Path(cfg.out).name
    log_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model = build(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    spec = WindowSpec(cfg.window_len(), cfg.batch_size, cfg.episodes_per_batch)
    try:
        ds = WindowDataset(store.path, train_eps, episode_lengths(store, train_eps), spec, seed=cfg.seed,
                           end_step=cfg.steps, cache_episodes=cfg.cache_episodes)
    except ValueError as e:
        raise TrainError(f"{e} (for gcbc: lower --gcbc-objective.max-goal-offset)") from e
    train_log = CsvLog(log_dir / "train_log.csv", None)
    bar = tqdm(total=cfg.steps, desc=f"train {cfg.model_type}", unit="step", dynamic_ncols=True)
    model.train()
    clock = time.process_time if cfg.budget_clock == "cpu" else time.perf_counter
    t_start = t_last = time.perf_counter()
    c_start = clock()
    done = 0
    for step, batch in zip(range(cfg.steps), build_loader(ds, cfg.workers), strict=False):
        elapsed = clock() - c_start
        if budget is not None and elapsed >= budget:
            break
        lr = lr_at(schedule_step(step, elapsed, budget, cfg), cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        images = batch["images"].to(device, non_blocking=True)
        actions = batch["actions"].to(device, non_blocking=True)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 97)
        loss, parts = step_loss(model, cfg, images, actions, gen)
        if not torch.isfinite(loss):
            raise TrainError(f"loss became {loss.item()} at step {step}; lower --lr or raise --grad-clip")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        now = time.perf_counter()
        train_log.write({"step": step, "lr": lr, **parts, "grad_norm": grad_norm,
                         "sec_per_step": now - t_last})
        t_last = now
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{parts['loss']:.4f}")
    bar.close()
    train_seconds = time.perf_counter() - t_start
    budget_seconds_used = clock() - c_start
    if done == 0:
        raise TrainError(f"--time-budget {budget} s ran out before the first step; raise it")

    model.eval()
    threshold = None
    if cfg.model_type == "pixel":
        metrics, threshold = validate(model, store, train_eps, val_eps, cfg, device, success_threshold)
        metrics.update(pixel_prediction_error(model, store.iter_episodes(spread(val_eps, cfg.val_episodes)),
                                              device=device))
    else:
        metrics = gcbc_validation(model, store, val_eps, cfg, device)
    val_log = CsvLog(log_dir / "val_log.csv", None)
    val_log.write({"step": done - 1, **metrics})
    write_checkpoint(cfg, model, store, indices, train_eps, val_eps, metrics, threshold, done, train_seconds,
                     budget, budget_seconds_used)
    print(f"wrote {cfg.out} ({checkpoint.checkpoint_name(cfg.out)}): {done} steps in {train_seconds:.0f} s; "
          + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return Path(cfg.out)


def write_checkpoint(cfg: BaselineTrainConfig, model: nn.Module, store: TrajectoryStore, indices: list[int],
                     train_eps: list[int], val_eps: list[int], metrics: dict, threshold: dict | None,
                     steps_done: int, train_seconds: float, budget: float | None,
                     budget_seconds_used: float) -> None:
    meta = store.meta
    meta_hash = meta.fingerprint()
    command = invoked_command("train-baseline")
    training = config_dict(cfg)
    other = "gcbc" if cfg.model_type == "pixel" else "pixel"
    for key in (other, f"{other}_objective"):  # only the trained model's settings
        training.pop(key)
    config = {
        "description": DESCRIPTIONS[cfg.model_type],
        "image": {"size": meta.image_size, "preprocessing": meta.preprocessing},
        "action": dict(meta.action_spec),
        "proprio": dict(meta.proprio_spec),
        "history_len": cfg.model.history_len,
        "training_data": {
            "store": str(Path(store.path).resolve()),
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
        "training": training,
        "training_run": {"steps_done": steps_done, "train_seconds": train_seconds, "time_budget_s": budget,
                         "budget_clock": cfg.budget_clock, "budget_seconds_used": budget_seconds_used},
        "parameters": parameter_counts(model),
        "metrics": metrics,
        "commands": [command] if command else [],
    }
    if threshold is not None:
        config["goal_energy_threshold"] = threshold["threshold"]
        config["goal_energy_calibration"] = threshold
    checkpoint.save(cfg.out, model, config)
