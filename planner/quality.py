"""`planner quality`: measure a checkpoint's world model on held-out episodes of a store, without planning.

Loads CKPT and a trajectory store, encodes the validation episodes (those the trainer recorded in
config.json `training_data.val_episodes`; otherwise the last 10% of the store), and reports collapse
statistics, linear-probe R^2 (fit on training episodes), k-step prediction error vs copy-last with
action sensitivity, the rank correlation and shape of the latent distance against the true task
distance, and the calibrated goal-energy threshold. Prints a table; optionally writes JSON and a PNG.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from planner import metrics as M


@dataclass
class QualityConfig:
    """Measure a checkpoint's representation and predictor on held-out episodes (no planning)."""

    checkpoint: Path
    """Checkpoint directory (config.json + model.safetensors)."""
    data: Path
    """Trajectory store directory (from `planner collect`)."""
    episodes: int | None = None
    """Use at most this many validation episodes (the first ones of the held-out set); None: all."""
    probe_episodes: int = 50
    """Training episodes (not held out) the linear probes are fit on."""
    json: Path | None = None
    """Write the full report as JSON here."""
    plot: Path | None = None
    """Write the energy-vs-true-distance plot (PNG) here."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device for encoding and rollouts."""
    batch_size: int = 256
    """Frames per encoder batch and windows per rollout batch."""
    k_max: int = 5
    """Longest open-loop horizon of the k-step prediction error."""
    pairs: int = 5000
    """(state, goal) pairs drawn within episodes, and again across episodes, for the rank correlation."""
    success_threshold: float | None = None
    """Task success distance in metres for the goal-energy threshold; None: the env's TaskSpec."""
    seed: int = 0
    """Seed of pair sampling, window subsampling and action shuffling."""
    mlp_probe: bool = False
    """Also fit an MLP probe (planner.metrics.mlp_probe_r2, about a minute on one CPU core): is the task
    state in the latent at all, linearly or not; and read the k-step imagination through it in the task's
    units (`imagination`: metres of block and end-effector error, planner.metrics.imagination_error)."""


def split_indices(store_indices: list[int], config: dict) -> tuple[list[int], list[int], str]:
    """(train indices, validation indices, where the split came from) for a store and checkpoint config.

    From config.json `training_data`, in this order: `val_episodes` as a list of indices; `val_indices`
    [first, last] (what planner.train records: the held-out indices are the store's in that range);
    `val_episodes` as a count (the last that many). Otherwise the last 10% (at least one) are held out.
    """
    if len(store_indices) < 2:
        raise ValueError(f"the store holds {len(store_indices)} episode(s); quality needs at least 2")
    data = config.get("training_data", {})
    recorded, bounds = data.get("val_episodes"), data.get("val_indices")
    if isinstance(recorded, list) and recorded:
        have = set(store_indices)
        missing = [i for i in recorded if i not in have]
        if missing:
            raise ValueError(f"config.json lists validation episodes {missing[:5]} that the store lacks: "
                             "pass the --data store this checkpoint was trained on")
        val, source = sorted(int(i) for i in recorded), "config.json training_data.val_episodes"
    elif isinstance(bounds, list) and len(bounds) == 2:
        lo, hi = int(bounds[0]), int(bounds[1])
        val = [i for i in store_indices if lo <= i <= hi]
        if not val:
            raise ValueError(f"the store has no episodes in the recorded validation range {lo}..{hi}: "
                             "pass the --data store this checkpoint was trained on")
        source = f"config.json training_data.val_indices {lo}..{hi}"
    elif isinstance(recorded, int) and 0 < recorded < len(store_indices):
        val, source = store_indices[-recorded:], f"last {recorded} episodes (count in config.json)"
    else:
        n_val = max(1, len(store_indices) // 10)
        val, source = store_indices[-n_val:], "last 10% of the store (no val_episodes in config.json)"
    val_set = set(val)
    return [i for i in store_indices if i not in val_set], val, source


def task_success_threshold(env_id: str, env_kwargs: dict) -> float:
    """The env's TaskSpec success threshold in metres (builds the env once)."""
    from envs import make_env

    env = make_env(env_id, **env_kwargs)
    try:
        return float(env.unwrapped.task.success_threshold)
    finally:
        env.close()


def quality_report(model, encoded_val: M.EncodedEpisodes, encoded_train: M.EncodedEpisodes | None,
                   history_len: int, success_threshold: float,
                   cfg: QualityConfig) -> tuple[dict, M.EnergyCorrelation]:
    """All metrics on encoded validation episodes (probes fit on `encoded_train`, or on the first half
    of the validation episodes when None). Returns (JSON-able report, energy result for plotting)."""
    if encoded_train is None:
        half = len(encoded_val.latents) // 2
        probe_train = _episode_range(encoded_val, 0, half)
        probe_test = _episode_range(encoded_val, half, None)
    else:
        probe_train, probe_test = encoded_train, encoded_val
    z_train, z_test = probe_train.all_latents(), probe_test.all_latents()
    targets = {"task_state": (probe_train.all_task_states(), probe_test.all_task_states())}
    if probe_train.proprio is not None and probe_test.proprio is not None:
        targets["proprio"] = (np.concatenate(probe_train.proprio), np.concatenate(probe_test.proprio))
    probes = {name: M.linear_probe_r2(z_train, tr, z_test, te).to_dict()
              for name, (tr, te) in targets.items()}
    imagination = None
    if cfg.mlp_probe:
        fitted = {name: M.fit_mlp_probe(z_train, tr, seed=cfg.seed) for name, (tr, _) in targets.items()}
        probes.update({f"{name} (MLP)": M.mlp_probe_r2(z_train, tr, z_test, te, probe=fitted[name]).to_dict()
                       for name, (tr, te) in targets.items()})
        imagination = _imagination(model, probe_test, fitted, history_len, cfg)
    kstep = M.kstep_prediction_error(model, encoded_val, history_len, k_max=cfg.k_max, device=cfg.device,
                                     batch_size=cfg.batch_size, seed=cfg.seed)
    in_energy = M.in_energy_space(model, encoded_val)  # the distance the planner uses
    energy = M.energy_rank_correlation(in_energy, n_pairs=cfg.pairs, seed=cfg.seed)
    report = {
        "collapse": M.collapse_stats(encoded_val.all_latents()),
        "probe": probes,
        "probe_fit_on": "training episodes" if encoded_train is not None else "first half of validation",
        "kstep": kstep.to_dict(),
        "energy": energy.to_dict(),
    }
    if imagination is not None:
        report["imagination"] = imagination.to_dict()
    try:
        report["goal_threshold"] = M.calibrate_goal_energy_threshold(
            in_energy, success_threshold, seed=cfg.seed).to_dict()
    except ValueError as e:  # too few close pairs in this data: report why instead of a number
        report["goal_threshold"] = {"error": str(e)}
    return report, energy


def _imagination(model, encoded: M.EncodedEpisodes, fitted: dict[str, M.MLPProbe], history_len: int,
                 cfg: QualityConfig) -> M.ImaginationError:
    """The k-step imagination read through the MLP probes: the task state (all its columns) and, where the
    episodes carry proprio, the end effector (proprio[:, :3]: position in metres in our arm envs)."""
    probes = {"task_state": (fitted["task_state"], slice(None))}
    states = {"task_state": encoded.task_states}
    if "proprio" in fitted and encoded.proprio[0].shape[1] >= 3:
        probes["proprio[:3]"] = (fitted["proprio"], slice(0, 3))
        states["proprio[:3]"] = [p[:, :3] for p in encoded.proprio]
    return M.imagination_error(model, encoded, probes, states, history_len, k_max=cfg.k_max,
                               device=cfg.device, batch_size=cfg.batch_size)


def _episode_range(enc: M.EncodedEpisodes, start: int, stop: int | None) -> M.EncodedEpisodes:
    sl = slice(start, stop)
    return M.EncodedEpisodes(
        latents=enc.latents[sl], actions=enc.actions[sl], task_states=enc.task_states[sl],
        goal_latents=None if enc.goal_latents is None else enc.goal_latents[sl],
        goal_task_states=None if enc.goal_task_states is None else enc.goal_task_states[sl],
        proprio=None if enc.proprio is None else enc.proprio[sl],
    )


def format_table(report: dict) -> str:
    """Compact human-readable summary of a quality report."""
    c, k, e = report["collapse"], report["kstep"], report["energy"]
    rows = [
        ("effective rank", f"{c['effective_rank']:.1f} / {c['dim']} (dead dims {c['frac_dims_dead']:.0%}, "
                           f"std min {c['std_min']:.3g} mean {c['std_mean']:.3g})"),
    ]
    for name, p in report["probe"].items():
        per_dim = " ".join(f"{v:.2f}" for v in p["r2"])
        rows.append((f"probe R^2 {name}", f"{p['mean_r2']:.3f}  per dim {per_dim}"))
    rows.append(("k", "  ".join(f"{i:>6d}" for i in k["k"])))
    rows.append(("pred / copy-last", "  ".join(f"{v:6.3f}" for v in k["ratio"])))
    rows.append(("action sensitivity", "  ".join(f"{v:6.2f}" for v in k["action_sensitivity"])))
    rho = e["spearman"]
    rows.append(("spearman", "  ".join(f"{key} {rho[key]:.3f}" for key in ("within", "across", "all", "goal")
                                       if key in rho)))
    rows.append(("goal span [m]", f"{e['goal_span']:.3f}"))
    flat = e["goal_flat_ranges"] if e.get("goal_flat_ranges") is not None else e["flat_ranges"]
    which = "goal pairs" if e.get("goal_flat_ranges") is not None else "state pairs"
    rows.append((f"flat ranges [m] ({which})", ", ".join(f"{lo:.3f}-{hi:.3f}" for lo, hi in flat) or "none"))
    for name, med in report.get("imagination", {}).get("median", {}).items():
        im = report["imagination"]
        rows.append((f"imagined {name}, median", "  ".join(f"{v:6.4f}" for v in med)
                     + f"  (probe floor {im['probe_floor'][name]:.4f})"))
        rows.append((f"imagined {name} motion", f"slope {im['displacement_slope'][name]:.2f}, cosine "
                     f"{im['displacement_cosine'][name]:.2f} over k = {im['k'][-1]} in "
                     f"{im['n_displaced'][name]} windows moving > {im['displacement_threshold']}"))
    g = report["goal_threshold"]
    rows.append(("goal threshold", g["error"] if "error" in g else
                 f"{g['threshold']:.4g} (accepts {g['boundary_accept']:.0%} of {g['n_band']} near-miss "
                 f"{g['source']} pairs, {g['recall']:.0%} of {g['n_close']} within "
                 f"{g['success_threshold']} m; "
                 f"false accept {g['false_accept_rate']:.1%})"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _write_json(path: Path, obj: dict) -> None:
    """Atomic JSON write; NaN / inf become null (strict JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_strict(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _strict(x):
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "item"):  # numpy / torch scalars
        return _strict(x.item())
    return x


def run(cfg: QualityConfig) -> dict:
    """Load, encode, measure, print the table; write JSON / PNG when asked. Returns the report."""
    from planner import checkpoint
    from planner.store import TrajectoryStore

    loaded = checkpoint.load(cfg.checkpoint, device=cfg.device)
    store = TrajectoryStore.open(cfg.data)
    image_size = int(loaded.config["image"]["size"])
    if store.meta.image_size != image_size:
        raise ValueError(f"store {cfg.data} holds {store.meta.image_size}px images but checkpoint "
                         f"{cfg.checkpoint} expects {image_size}px: use the store it was trained on")
    train_idx, val_idx, source = split_indices(store.indices(), loaded.config)
    if cfg.episodes is not None:
        if cfg.episodes < 2:
            raise ValueError(f"--episodes must be >= 2, got {cfg.episodes}")
        val_idx = val_idx[:cfg.episodes]
    if len(val_idx) < 2:
        raise ValueError(f"need at least 2 validation episodes, got {len(val_idx)} ({source})")
    train_idx = train_idx[:cfg.probe_episodes]
    success = cfg.success_threshold
    if success is None:
        success = task_success_threshold(store.meta.env_id, store.meta.env_kwargs)

    def encode(indices: list[int], what: str) -> M.EncodedEpisodes:
        episodes = tqdm(store.iter_episodes(indices), total=len(indices), desc=f"encode {what}", unit="ep")
        return M.encode_episodes(loaded.model, episodes, device=cfg.device, batch_size=cfg.batch_size)

    enc_val = encode(val_idx, "validation")
    enc_train = encode(train_idx, "probe train") if len(train_idx) >= 2 else None
    report, energy = quality_report(loaded.model, enc_val, enc_train, int(loaded.config["history_len"]),
                                    success, cfg)
    report = {
        "checkpoint": str(cfg.checkpoint),
        "model": loaded.name,
        "data": str(cfg.data),
        "env": store.meta.env_id,
        "val_episodes": val_idx,
        "val_source": source,
        "probe_train_episodes": len(train_idx) if enc_train is not None else 0,
        "success_threshold": success,
        "recorded_goal_energy_threshold": loaded.config.get("goal_energy_threshold"),
        **report,
    }
    print(f"{loaded.name} on {store.meta.env_id}: {len(val_idx)} validation episodes ({source})")
    print(format_table(report))
    if cfg.json is not None:
        _write_json(cfg.json, report)
        print(f"wrote {cfg.json}")
    if cfg.plot is not None:
        M.plot_energy_curve(energy, cfg.plot, title=f"{loaded.name} on {store.meta.env_id}")
        print(f"wrote {cfg.plot}")
    return report

