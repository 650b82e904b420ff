"""`planner refit-predictor`: train a JEPA checkpoint's action-conditioned predictor again, on its frozen
encoder's latents (a second stage, as V-JEPA 2-AC trains its predictor on a frozen encoder).

Why (docs/MODEL.md, "Predictor refit"): joint training spends its steps on the encoder and keeps the
predictor small; with the encoder frozen, the latents of a whole store are computed once and the
predictor trains on them at hundreds of windows per step, with an open-loop loss over the planning
horizon, without any collapse risk. The encoder, the energy head and the goal-energy calibration are the
source checkpoint's, unchanged (they depend on the encoder only; --standardize-keypoints rescales the
encoder's keypoint dimensions and the head's first layer together, which leaves every image's energy reading
as it was); the surprise calibration, which depends on the predictor, is dropped (rerun `planner surprise
--save-calibration`).

Data flow: store episodes (--data's training split + every --extra-data episode) -> frozen encoder ->
latents [sum_i (T_i+1), D] in memory (4 D bytes per frame) -> windows of K + R latents and K + R - 1
actions -> teacher-forced + R-step open-loop MSE (WorldModel.predict_windows + jepa_loss without a
regularizer; + --energy-weight x the same errors read through the energy head) -> AdamW, warmup + cosine.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from planner import metrics as M
from planner.cli import invoked_command

STATE_FILE = "refit_state.pt"


class RefitError(ValueError):
    """A refit that cannot run as asked (message says what to change)."""


@dataclass
class RefitConfig:
    """Train a JEPA checkpoint's predictor again on its frozen encoder's latents; write a new checkpoint."""

    checkpoint: Path
    """Source checkpoint (a `jepa` model): its encoder, energy head and goal calibration are kept."""
    data: Path
    """Trajectory store to train on: the one the checkpoint was trained on (its held-out episodes, recorded
    in config.json, stay held out)."""
    out: Path
    """Checkpoint directory to write (atomically)."""
    extra_data: tuple[Path, ...] = ()
    """More stores of the same env whose episodes all join the training windows, e.g. the planner's own
    episodes (`planner collect --policy planner`); the held-out episodes stay --data's."""
    steps: int = 6000
    """Optimizer steps."""
    rollout_steps: int = 15
    """R: open-loop steps of the rollout loss (15 = the default planning horizon)."""
    batch_size: int = 256
    """Windows per step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.05
    """The cosine decays to lr * this at the last step."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    task_motion_fraction: float = 0.0
    """Share of each batch drawn among the windows in which the recorded task state moves by more than
    --task-motion-threshold in a step (the contact windows of the block tasks; `planner train`'s flag of
    the same name). With the encoder frozen, weighting contact cannot cost the latent its block."""
    task_motion_threshold: float = 0.002
    """Task-state motion per step (store units: metres) that makes a window count as moving."""
    energy_weight: float = 0.0
    """Weight of a second loss in the planning energy's space: the squared error of the frozen energy head's
    reading (e = model.energy_embed; metres of hand and block for a state head) of the teacher-forced and
    open-loop predictions, divided by the mean per-dimension variance of e over the training frames (so
    that, like the latent MSE on standardized latents, it is a fraction of variance). The latent loss treats
    every latent direction alike; this one weights the directions the planner's cost reads. 0: off."""
    init: str = "checkpoint"
    """`checkpoint`: start from the source predictor; `fresh`: a new, seeded predictor (needed to change
    its size)."""
    pred_hidden: int | None = None
    """Predictor width (fresh only; None: the source's)."""
    pred_blocks: int | None = None
    """Predictor residual blocks (fresh only; None: the source's)."""
    val_every: int = 1000
    """Held-out k-step error every this many steps (0: only at the end)."""
    save_every: int = 500
    """Save the refit state (for --resume) every this many steps."""
    log_dir: Path | None = None
    """Where refit_state.pt and refit_log.csv go (default: runs/<out name>-refit)."""
    resume: bool = False
    """Continue from log_dir's refit_state.pt (same flags)."""
    stop_at: int | None = None
    """Stop (saving the refit state, no checkpoint) at this step; finish later with --resume."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""
    threads: int = 1
    """torch CPU threads."""
    seed: int = 0
    """Seed of the fresh predictor and of window sampling."""
    standardize_keypoints: bool = False
    """With keypoints in the latent (`--model.enc-keypoint-latent`; needs --init fresh): first rescale the
    latent's keypoint dimensions to unit std over --data's training frames, the energy head compensated (every
    image's energy reading, and so the goal calibration, stay the same). Trained jointly, those dimensions
    shrink to a std of about 0.002: the latent loss ignores them, and errors the predictor makes there read
    through the energy head as centimetres (docs/BENCHMARKS.md, session 15). Members refitted from one source
    on one --data with the same --device and --threads get the same rescaled encoder, so `planner ensemble`
    accepts them (1 and 2 CPU threads encode 1e-5 apart)."""
    member: int | None = None
    """With an ensemble checkpoint (`planner ensemble`): the member whose predictor is refitted (0: the
    base's own); the output holds that one predictor (assemble again with `planner ensemble`). Required
    for an ensemble, refused otherwise."""
    progress: bool = True
    """Show tqdm progress."""


@dataclass
class LatentWindows:
    """Latents of whole episodes, concatenated: z [F,D] and actions [F,A] (row f = the action taken at frame
    f; an episode's last row is zero and never used), the first frame f of every window of `length` frames
    (K + R) that lies inside one episode, and those of the windows in which the task state moves."""

    z: torch.Tensor
    actions: torch.Tensor
    starts: torch.Tensor
    moving_starts: torch.Tensor
    length: int

    @classmethod
    def from_encoded(cls, enc: M.EncodedEpisodes, length: int, motion_threshold: float = 0.002
                     ) -> LatentWindows:
        from planner.data import moving_window_starts

        z, acts, starts, moving, offset = [], [], [], [], 0
        for lat, act, task in zip(enc.latents, enc.actions, enc.task_states, strict=True):
            n = lat.shape[0]
            z.append(lat)
            acts.append(torch.cat([act, act.new_zeros(1, act.shape[1])]))
            first = torch.arange(offset, offset + max(0, n - length + 1))
            starts.append(first)
            if len(first):
                moving.append(first[torch.from_numpy(moving_window_starts(task, length, motion_threshold))])
            offset += n
        starts = torch.cat(starts)
        if len(starts) == 0:
            raise RefitError(f"no episode has {length} frames (history + --rollout-steps): lower "
                             "--rollout-steps")
        return cls(z=torch.cat(z), actions=torch.cat(acts), starts=starts, moving_starts=torch.cat(moving),
                   length=length)

    def batch(self, rng: torch.Generator, size: int, motion_fraction: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (z [B,L,D], actions [B,L-1,A]) of `size` windows drawn with replacement: round(motion_fraction
        * size) among the moving windows (when there are any), the rest uniformly."""
        n_moving = round(motion_fraction * size) if len(self.moving_starts) else 0
        first = torch.cat([
            self.moving_starts[torch.randint(len(self.moving_starts), (n_moving,), generator=rng)],
            self.starts[torch.randint(len(self.starts), (size - n_moving,), generator=rng)],
        ])
        idx = first[:, None] + torch.arange(self.length)
        return self.z[idx], self.actions[idx[:, :-1]]


def _check(cfg: RefitConfig) -> None:
    if cfg.steps < 1 or cfg.rollout_steps < 1 or cfg.batch_size < 1:
        raise RefitError(f"--steps, --rollout-steps and --batch-size must be >= 1, got {cfg.steps}, "
                         f"{cfg.rollout_steps}, {cfg.batch_size}")
    if not 0.0 <= cfg.task_motion_fraction <= 1.0:
        raise RefitError(f"--task-motion-fraction must be in [0, 1], got {cfg.task_motion_fraction}")
    if cfg.init not in ("checkpoint", "fresh"):
        raise RefitError(f"--init must be checkpoint or fresh, got {cfg.init!r}")
    if cfg.init == "checkpoint" and (cfg.pred_hidden is not None or cfg.pred_blocks is not None):
        raise RefitError("--pred-hidden / --pred-blocks change the predictor's shape: use --init fresh")
    if cfg.init == "checkpoint" and cfg.standardize_keypoints:
        raise RefitError("--standardize-keypoints changes the predictor's inputs: use --init fresh")
    if not (cfg.lr > 0 and cfg.grad_clip > 0 and 0 <= cfg.min_lr_ratio <= 1):
        raise RefitError(f"need --lr > 0, --grad-clip > 0 and --min-lr-ratio in [0, 1], got {cfg.lr}, "
                         f"{cfg.grad_clip}, {cfg.min_lr_ratio}")
    if cfg.stop_at is not None and not 1 <= cfg.stop_at <= cfg.steps:
        raise RefitError(f"--stop-at must be in 1..--steps ({cfg.steps}), got {cfg.stop_at}")
    if not (np.isfinite(cfg.energy_weight) and cfg.energy_weight >= 0):
        raise RefitError(f"--energy-weight must be >= 0, got {cfg.energy_weight}")
    if cfg.val_every < 0 or cfg.save_every < 1:
        raise RefitError(f"--val-every must be >= 0 and --save-every >= 1, got {cfg.val_every}, "
                         f"{cfg.save_every}")


def _kstep(model, enc: M.EncodedEpisodes, k_max: int, device) -> dict:
    """Held-out k-step ratio to copy-last and action sensitivity at k = 1, 5 and k_max (all windows), named
    as `planner train` names them in `metrics`; with an energy head also the median open-loop error at
    k_max in its space (`energy_error_k{k_max}`, read from the same rollouts)."""
    r = M.kstep_prediction_error(model, enc, model.history_len, k_max=k_max, device=device, max_windows=None,
                                 energy=model.energy_head is not None)
    ks = sorted({1, min(5, k_max), k_max})
    energy = {f"energy_error_k{k_max}": r.energy_error_median} if r.energy_error_median is not None else {}
    return ({f"kstep_ratio_k{k}": r.ratio[k - 1] for k in ks}
            | {f"action_sensitivity_k{k}": r.action_sensitivity[k - 1] for k in ks}
            | energy | {"n_windows": r.n_windows})


def standardize_keypoints(model, enc_train: M.EncodedEpisodes, n_fit: int,
                          enc_val: M.EncodedEpisodes) -> torch.Tensor:
    """Rescale the model's keypoint dimensions to unit std over the first n_fit episodes of enc_train
    (WorldModel.rescale_keypoint_dims) and the already encoded latents (and goal latents) with them, in place;
    returns the std before [2P]."""
    dims = model.keypoint_dims
    std = torch.cat(enc_train.latents[:n_fit])[:, dims].double().std(dim=0).float()
    if not bool((std > 1e-8).all()):
        raise RefitError(f"{int((std <= 1e-8).sum())} keypoint dimensions are constant over the training "
                         "frames: nothing to standardize")
    factor = 1.0 / std
    model.rescale_keypoint_dims(factor)
    for enc in (enc_train, enc_val):
        for z in [*enc.latents, *([enc.goal_latents] if enc.goal_latents is not None else [])]:
            z[:, dims] *= factor
    return std


def energy_variance(model, z: torch.Tensor, device, chunk: int = 8192) -> float:
    """Mean per-dimension variance of the energy head's reading of latents z [F,D] (the energy loss's
    scale)."""
    with torch.no_grad():
        e = torch.cat([model.energy_embed(z[s:s + chunk].to(device)).double().cpu()
                       for s in range(0, len(z), chunk)])
    return float(e.var(dim=0).mean())


def energy_loss(model, out: dict[str, torch.Tensor], k: int, scale: float) -> torch.Tensor:
    """Teacher-forced + open-loop squared error in the energy head's space, per dimension, / scale; out as
    from predict_windows with "z" [B,L,D] added (the target latents)."""
    z, tf, roll = out["z"], out["tf"], out["roll"]
    e = model.energy_embed
    target = e(z[:, k:])  # frames K..L-1: the teacher-forced targets; the open-loop ones are the first R
    tf_err = (e(tf) - target).square().mean()
    roll_err = (e(roll) - target[:, :roll.shape[1]]).square().mean()
    return (tf_err + roll_err) / scale


def run(cfg: RefitConfig) -> Path | None:
    """Encode, refit, validate, write the checkpoint; returns its path (None when stopped by --stop-at)."""
    from tqdm import tqdm

    from planner import checkpoint
    from planner.frozen import open_extra_stores, open_frozen
    from planner.train import CsvLog, load_state, lr_at, save_state, training_time
    from planner.world_model import ObjectiveConfig, Predictor, jepa_loss

    _check(cfg)
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    members = checkpoint.read_config(cfg.checkpoint)["architecture"].get("pred_ensemble", 1)
    if members > 1 and cfg.member is None:
        raise RefitError(f"{cfg.checkpoint} holds an ensemble of {members} predictors; refit-predictor "
                         f"trains one: pick it with --member 0..{members - 1} (or refit the single-predictor "
                         "checkpoint the ensemble was assembled from), then `planner ensemble` again")
    if cfg.member is not None and not 0 <= cfg.member < members:
        raise RefitError(f"--member must be in 0..{members - 1} ({cfg.checkpoint} holds {members} "
                         f"predictor{'s' if members > 1 else ''}), got {cfg.member}")
    loaded, store, train_idx, val_idx, val_source = open_frozen(cfg.checkpoint, cfg.data, device,
                                                                "refit-predictor")
    extra = open_extra_stores(cfg.extra_data, store, RefitError)
    if members > 1:
        from planner.ensemble import member_model

        loaded.model = member_model(loaded.model, cfg.member).to(device)
    model = loaded.model
    if cfg.energy_weight > 0 and model.energy_head is None:
        raise RefitError(f"--energy-weight needs an energy head; {cfg.checkpoint} has none (planner "
                         "fit-energy-head)")
    if cfg.standardize_keypoints and not model.cfg.latent_keypoint_dims:
        raise RefitError(f"--standardize-keypoints needs keypoints in the latent; {cfg.checkpoint} has none "
                         "(`planner train --model.enc-keypoint-latent`)")
    k, r = model.history_len, cfg.rollout_steps
    model.eval().requires_grad_(False)

    def encode(sources: list[tuple], what: str) -> M.EncodedEpisodes:
        """sources: (store, indices) pairs, encoded in order into one EncodedEpisodes."""
        eps = tqdm(chain.from_iterable(st.iter_episodes(ix) for st, ix in sources),
                   total=sum(len(ix) for _, ix in sources), desc=f"encode {what}", unit="ep",
                   disable=not cfg.progress)
        return M.encode_episodes(model, eps, device=device)

    enc_train = encode([(store, train_idx), *((st, st.indices()) for st in extra)], "train")
    enc_val = encode([(store, val_idx)], "validation")
    k_val = min(r, min(len(z) for z in enc_val.latents) - k)
    if k_val < 1:
        raise RefitError(f"validation episodes are shorter than the history ({k} frames) + 1")
    before = _kstep(model, enc_val, k_val, device)
    keypoint_std = (standardize_keypoints(model, enc_train, len(train_idx), enc_val)
                    if cfg.standardize_keypoints else None)
    windows = LatentWindows.from_encoded(enc_train, k + r, cfg.task_motion_threshold)
    e_scale = energy_variance(model, windows.z, device) if cfg.energy_weight > 0 else 1.0

    arch = replace(model.cfg, pred_hidden=cfg.pred_hidden or model.cfg.pred_hidden,
                   pred_blocks=cfg.pred_blocks or model.cfg.pred_blocks)
    torch.manual_seed(cfg.seed)
    predictor = copy.deepcopy(model.predictor) if cfg.init == "checkpoint" else Predictor(arch)
    predictor = predictor.to(device).requires_grad_(True).train()
    model.predictor, model.cfg = predictor, arch
    opt = torch.optim.AdamW(predictor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    log_dir = Path(cfg.log_dir) if cfg.log_dir is not None else Path("runs") / f"{Path(cfg.out).name}-refit"
    log_dir.mkdir(parents=True, exist_ok=True)
    state_path = log_dir / STATE_FILE
    start = load_state(state_path, predictor, None, opt, cfg) if cfg.resume else 0
    log = CsvLog(log_dir / "refit_log.csv", start if cfg.resume else None)
    objective = ObjectiveConfig(rollout_steps=r, regularizer="none", temporal_weight=0.0)
    rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start)
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    bar = tqdm(total=end, initial=start, desc="refit predictor", unit="step", disable=not cfg.progress)
    t_last = time.perf_counter()
    for step in range(start, end):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        z, a = (x.to(device) for x in windows.batch(rng, cfg.batch_size, cfg.task_motion_fraction))
        out = {"z": z, **model.predict_windows(z, a, r)}
        loss, parts = jepa_loss(out, objective, k, rng)
        if cfg.energy_weight > 0:
            e_loss = energy_loss(model, out, k, e_scale)
            loss = loss + cfg.energy_weight * e_loss
            parts |= {"energy": e_loss.item(), "loss": loss.item()}
        if not np.isfinite(parts["loss"]):
            raise RefitError(f"loss became {parts['loss']} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(predictor.parameters(), cfg.grad_clip))
        opt.step()
        now = time.perf_counter()
        log.write({"step": step, "lr": lr, **parts, "grad_norm": grad_norm, "sec_per_step": now - t_last})
        t_last = now
        bar.update(1)
        bar.set_postfix(loss=f"{parts['loss']:.4f}")
        done = step + 1
        if cfg.val_every and done % cfg.val_every == 0 and done < cfg.steps:
            predictor.eval()
            bar.write(f"step {done}: held-out {_kstep(model, enc_val, k_val, device)}")
            predictor.train()
        if done % cfg.save_every == 0 or done == end:
            save_state(state_path, done, predictor, None, opt, cfg)
            rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + done)  # resume draws the same windows
    bar.close()
    if end < cfg.steps:
        print(f"stopped at step {end} (--stop-at); state in {state_path}; finish with --resume")
        return None
    predictor.eval().requires_grad_(False)
    after = _kstep(model, enc_val, k_val, device)
    timing = training_time(log_dir / "refit_log.csv", device, cfg.threads)
    extra_episodes = {str(p): len(st) for p, st in zip(cfg.extra_data, extra, strict=True)}
    path = _write(cfg, model, loaded, before, after, timing, val_source, len(windows.starts), extra_episodes,
                  keypoint_std)
    print(f"wrote {path} ({checkpoint.checkpoint_name(path)}); held-out k-step error / copy-last: "
          f"{_before_after(before, after)}")
    return path


def _before_after(before: dict, after: dict) -> str:
    """'k=1 0.0400 -> 0.0370, ...': the k-step ratios of two _kstep results (and the energy-space error)."""
    ratios = ", ".join(f"k={key.rsplit('k', 1)[1]} {before[key]:.4f} -> {after[key]:.4f}"
                       for key in after if key.startswith("kstep_ratio_"))
    energy = [f"; open-loop error in the energy head's space at k={key.rsplit('k', 1)[1]} (median) "
              f"{before[key]:.4f} -> {after[key]:.4f}" for key in after if key.startswith("energy_error_")]
    return ratios + "".join(energy)


def _write(cfg: RefitConfig, model, loaded, before: dict, after: dict, timing: dict, val_source: str,
           n_windows: int, extra_episodes: dict[str, int], keypoint_std: torch.Tensor | None) -> Path:
    """The source config with the new predictor's record (extra_episodes: --extra-data store -> episodes
    used; keypoint_std: the keypoint dimensions' std before --standardize-keypoints); the surprise
    calibration (predictor-dependent) is dropped, the k-step metrics are replaced by the refit predictor's."""
    from planner import checkpoint
    from planner.train import config_dict

    command = invoked_command("refit-predictor")
    one_member = "ensemble" in loaded.config  # one member refitted: no longer an ensemble, nor planned as one
    # the surprise calibration measured the old predictor; an ensemble record, if any, the old members
    drop = {*checkpoint.FILLED_BY_SAVE, "surprise", "ensemble"}
    config = {key: v for key, v in loaded.config.items() if key not in drop}
    if one_member and "planner" in config:
        config["planner"] = {k: v for k, v in config["planner"].items() if k != "disagreement"}
    metrics = {key: v for key, v in config.get("metrics", {}).items()
               if not key.startswith(("kstep_ratio_", "action_sensitivity_", "energy_error_"))}
    config["metrics"] = metrics | {key: v for key, v in after.items() if key != "n_windows"}
    config["predictor_refit"] = {
        "source": loaded.name,
        **({"member": cfg.member} if cfg.member is not None else {}),
        "data": str(cfg.data),
        "train_windows": n_windows,
        "extra_episodes": extra_episodes,
        "validation": val_source,
        "config": config_dict(cfg),
        "time": timing,
        "heldout_before": before,
        "heldout_after": after,
        **({"keypoint_std_before": [round(float(s), 6) for s in keypoint_std]} if keypoint_std is not None
           else {}),
    }
    config["commands"] = [*config.get("commands", []), *([command] if command else [])]
    extra_note = "".join(f" + `{p}`" for p in cfg.extra_data)
    rescale_note = ("; the latent's keypoint dimensions were first rescaled to unit std over the training "
                    f"frames (they had {float(keypoint_std.median()):.4f} median), the energy head's first "
                    "layer compensated, so every image's energy reading is unchanged (the latent k-step "
                    "ratios below are before and after that rescaling; the energy-space errors compare "
                    "directly)"
                    if keypoint_std is not None else "")
    energy_note = (f" plus the energy head's-space loss at weight {cfg.energy_weight}"
                   if cfg.energy_weight > 0 else "")
    tail = (f"\n## Predictor refit\n\nThe predictor was trained again for {cfg.steps} steps on the frozen "
            f"encoder's latents of `{cfg.data}`{extra_note} (`planner refit-predictor`, "
            f"{cfg.rollout_steps}-step "
            f"open-loop loss{energy_note}, init {cfg.init}; {timing['step_seconds'] / 60:.1f} min on "
            f"{timing['device']}); "
            f"encoder, energy head and goal calibration are `{loaded.name}`'s{rescale_note}. Held-out k-step "
            "error / copy-last: "
            f"{_before_after(before, after)}.\n")
    checkpoint.save(cfg.out, model, config, card_tail=tail)
    return Path(cfg.out)
