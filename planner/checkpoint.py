"""Self-describing checkpoints: CKPT/config.json + CKPT/model.safetensors + CKPT/card.md (DESIGN 3).

`save` writes the whole directory atomically (temp dir, then rename); `load(path, device)` rebuilds the
model through the `model_type` registry and names it `f"{dirname}@{sha256(model.safetensors)[:12]}"`.
Any corrupt, truncated or mismatched file raises CheckpointError naming that file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from planner.planner_defaults import PlannerDefaults

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.md"

# model_type -> "module:callable" building an nn.Module from config["architecture"] (a dict).
# A model class used with `save` must have a `model_type` attribute and `cfg.to_dict()`.
MODEL_TYPES: dict[str, str] = {
    "jepa": "planner.checkpoint:build_jepa",
    "pixel": "planner.pixel_model:build_pixel",  # generative comparison model (docs/COMPARISON.md)
    "gcbc": "planner.gcbc:build_gcbc",  # goal-conditioned behaviour cloning policy (docs/COMPARISON.md)
}

REQUIRED_KEYS = ("format_version", "model_type", "architecture", "image", "action", "history_len")


class CheckpointError(ValueError):
    """A checkpoint directory or one of its files is missing, corrupt or inconsistent."""


@dataclass
class Loaded:
    """A loaded checkpoint: the model (eval mode, on `device`), its config.json dict, and its name."""

    model: nn.Module
    config: dict
    name: str


def register_model_type(model_type: str, builder: str) -> None:
    """Register `builder` ("module:callable", callable(architecture: dict) -> nn.Module) for `model_type`."""
    if ":" not in builder:
        raise ValueError(f"builder must look like 'package.module:function', got {builder!r}")
    MODEL_TYPES[model_type] = builder


def build_jepa(architecture: dict) -> nn.Module:
    from planner.world_model import WorldModel, WorldModelConfig

    return WorldModel(WorldModelConfig.from_dict(architecture))


def build_model(model_type: str, architecture: dict) -> nn.Module:
    """Instantiate an untrained model of a registered type."""
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"unknown model_type {model_type!r}; registered: {sorted(MODEL_TYPES)}")
    module_name, fn_name = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(module_name), fn_name)(architecture)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_name(path: str | os.PathLike, sha256: str | None = None) -> str:
    """`dirname@<first 12 hex of sha256(model.safetensors)>`."""
    path = Path(path)
    sha256 = sha256 or file_sha256(path / WEIGHTS_FILE)
    return f"{path.resolve().name}@{sha256[:12]}"


def _state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


FILLED_BY_SAVE = ("format_version", "model_type", "architecture", "weights_sha256")
"""config.json keys `save` derives from the model; callers pass everything else."""

COMMANDS_HEADING = "## Commands"
"""render_card's last section: a fenced block of the commands. What follows it in a card.md was appended
(a stage's note such as "## Energy head", hand-written results) and survives a re-render."""


def card_appended_sections(card: str) -> str:
    """Everything after the rendered part of a card.md text: the lines after the closing fence of its
    COMMANDS_HEADING block, leading blank lines dropped ("" if none, or if the card has no such block)."""
    lines = card.splitlines(keepends=True)
    fences = 0
    for i, line in enumerate(lines):
        if fences == 0 and line.rstrip("\n") == COMMANDS_HEADING:
            fences = 1
        elif fences and line.startswith("```"):
            if fences == 2:
                return "".join(lines[i + 1:]).lstrip("\n")
            fences = 2
    return ""


def save(path: str | os.PathLike, model: nn.Module, config: dict, card: str | None = None,
         card_tail: str = "") -> str:
    """Write CKPT atomically; returns the checkpoint name.

    config: everything describing the model except `format_version`, `model_type`, `architecture` and
    `weights_sha256`, which are filled in here from the model. card: card.md text (default: render_card);
    card_tail: text appended to it (a stage's note, or the appended sections of a card being rewritten).
    """
    from safetensors.torch import save_file

    path = Path(path)
    full = {
        "format_version": FORMAT_VERSION,
        "model_type": model.model_type,
        "architecture": model.cfg.to_dict(),
        **config,
    }
    missing = [k for k in REQUIRED_KEYS if k not in full]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing}; required: {list(REQUIRED_KEYS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(_state_dict_for_save(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        sha = file_sha256(tmp / WEIGHTS_FILE)
        full["weights_sha256"] = sha
        (tmp / CONFIG_FILE).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        name = f"{path.name}@{sha[:12]}"
        text = card if card is not None else render_card(full, name)
        if card_tail:
            text = text.rstrip("\n") + "\n\n" + card_tail
        (tmp / CARD_FILE).write_text(text)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return name


def update_config(path: str | os.PathLike, loaded: Loaded, updates: dict,
                  remove: tuple[str, ...] = ()) -> str:
    """Rewrite CKPT with `updates` merged into its config.json and the keys `remove` dropped: same weights,
    so the same name; card.md is re-rendered and keeps the sections appended after its commands (stage
    notes, hand-written results). Returns the name."""
    dropped = set(FILLED_BY_SAVE) | set(remove)
    config = {k: v for k, v in loaded.config.items() if k not in dropped} | updates
    card = Path(path) / CARD_FILE
    tail = card_appended_sections(card.read_text()) if card.exists() else ""
    return save(path, loaded.model, config, card_tail=tail)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory src to dst; an existing dst is swapped out first, then deleted."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def read_config(path: str | os.PathLike) -> dict:
    """Parse and validate CKPT/config.json (no weights loaded)."""
    cfg_path = Path(path) / CONFIG_FILE
    if not Path(path).is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} is missing: not a checkpoint directory")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is corrupt (not valid JSON): {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"{cfg_path} lacks required keys {missing}")
    if cfg["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path} has format_version {cfg['format_version']}, this code reads {FORMAT_VERSION}"
        )
    arch, action = cfg["architecture"], cfg["action"]
    if "action_dim" in arch and int(action.get("dim", -1)) != int(arch["action_dim"]):
        raise CheckpointError(
            f"{cfg_path}: action.dim {action.get('dim')} does not match "
            f"architecture.action_dim {arch['action_dim']}"
        )
    if "image_size" in arch and int(cfg["image"].get("size", -1)) != int(arch["image_size"]):
        raise CheckpointError(
            f"{cfg_path}: image.size {cfg['image'].get('size')} does not match architecture.image_size "
            f"{arch['image_size']}"
        )
    views = int((cfg["image"].get("preprocessing") or {}).get("views", 1))
    if views != int(arch.get("image_views", 1)):
        raise CheckpointError(
            f"{cfg_path}: image.preprocessing.views {views} does not match architecture.image_views "
            f"{arch.get('image_views', 1)}"
        )
    try:
        PlannerDefaults.from_config(cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: invalid `planner` entry: {e}") from e
    return cfg


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Loaded:
    """Load CKPT (config.json + model.safetensors) onto `device`; the model is returned in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    sha = file_sha256(weights)
    if cfg.get("weights_sha256") not in (None, sha):
        raise CheckpointError(
            f"{weights} does not match the sha256 recorded in {path / CONFIG_FILE} "
            f"(truncated, corrupt or replaced): expected {cfg['weights_sha256'][:12]}, got {sha[:12]}"
        )
    try:
        model = build_model(cfg["model_type"], cfg["architecture"])
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid architecture: {e}") from e
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or truncated: {e}") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match architecture in {CONFIG_FILE}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{weights} does not match architecture in {CONFIG_FILE}: {k} has shape "
            f"{tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state)
    model.to(device).eval()
    return Loaded(model=model, config=cfg, name=checkpoint_name(path, sha))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _training_lines(config: dict) -> list[str]:
    t = config.get("training", {})
    if not t:
        return ["(not recorded)"]
    obj = t.get("objective", {})
    return [
        f"- steps {t.get('steps')}, batch {t.get('batch_size')}, lr {t.get('lr')} (AdamW, warmup "
        f"{t.get('warmup_steps')}, cosine), seed {t.get('seed')}"
        + (f", starting from the weights of `{init}` (--init-from)" if (init := t.get("init_from")) else ""),
        f"- objective: teacher forcing + {obj.get('rollout_steps')}-step rollout loss, regularizer "
        f"`{obj.get('regularizer')}`, EMA target {obj.get('ema_target')}, temporal-ordering weight "
        f"{obj.get('temporal_weight')} (span {obj.get('temporal_span')})"
        + (f", keypoint-spread hinge weight {w} (above {obj.get('keypoint_spread_cells')} cells)"
           if (w := obj.get("keypoint_spread_weight")) else ""),
        *([f"- time: {timing['step_seconds'] / 60:.1f} min of optimizer steps on {timing['device']} "
           "(the last segment's device when resumed; energy-head fit and calibration not included)"]
          if (timing := config.get("training_time")) else []),
    ]


def _planner_lines(config: dict) -> list[str]:
    """The card's "Planner defaults" section when config.json has a `planner` entry (else no lines)."""
    entry = PlannerDefaults.from_config(config).to_dict()
    evidence = entry.pop("evidence", None)
    if not entry:
        return []
    settings = ", ".join(f"{k} {v}" for k, v in entry.items())
    return ["## Planner defaults", "",
            f"Planned with {settings} unless a flag or request says otherwise (config.json `planner`; "
            "`planner set-planner`).", *([f"Evidence: {evidence}"] if evidence else []), ""]


def energy_head_config(config: dict) -> dict:
    """The config of the energy head a checkpoint carries: the last `planner fit-energy-head`'s, else the
    one `planner train` fitted ({} when neither is recorded)."""
    return ((config.get("energy_head_fit") or {}).get("config")
            or (config.get("training") or {}).get("energy_head") or {})


def render_card(config: dict, name: str, commands: list[str] | None = None) -> str:
    """card.md text: what the model is, the data and config it was trained with, metrics, exact commands."""
    data = config.get("training_data", {})
    metrics = config.get("metrics", {})
    arch = config.get("architecture", {})
    head_kind = energy_head_config(config).get("kind", "reachability")
    energy = (
        "the distance between the energy-head readings of the imagined latents and of the goal image's "
        "latent (a supervised readout of the recorded proprio and task state in their units, "
        "planner.energy_head)"
        if arch.get("energy_head_dim") and head_kind == "state"
        else "the distance between the energy-head embeddings of the imagined latents and the goal image's "
        "latent (a steps-to-goal distance fitted on the frozen latents, planner.energy_head)"
        if arch.get("energy_head_dim")
        else "the L2 distance between the imagined latents and the goal image's latent"
    )
    lines = [
        f"# {name}",
        "",
        config.get("description")
        or f"A `{config.get('model_type')}` latent world model for goal-image planning "
        f"(encode a {config['image']['size']}x{config['image']['size']} RGB image to a latent, predict the "
        f"next latent from {config['history_len']} latents and actions"
        + (f"; {m} predictors, member 0 the model's own, all {m} imagining each plan when the objective "
           "weighs their disagreement" if (m := arch.get("pred_ensemble", 1)) > 1 else "")
        + f"). Plan by minimising {energy}.",
        "",
        "## Training data",
        "",
        f"- store: `{data.get('store')}`, env `{data.get('env_id')}`, meta hash `{data.get('meta_hash')}`",
        f"- episodes: {data.get('episodes')} (train {data.get('train_episodes')}, "
        f"validation {data.get('val_episodes')})",
        "",
        "## Training",
        "",
        *_training_lines(config),
        "",
        "## Architecture",
        "",
        "| key | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in arch.items()],
        "",
        "## Validation metrics",
        "",
        f"goal_energy_threshold: {_fmt(config.get('goal_energy_threshold'))} "
        f"(calibration: {config.get('goal_energy_calibration', 'not recorded')})",
        "",
        "Metric definitions: docs/MODEL.md (Quality report). Re-measure with `planner quality`.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in metrics.items()],
        "",
        *_planner_lines(config),
        COMMANDS_HEADING,
        "",
        "```",
        *(commands or config.get("commands", [])),
        "```",
        "",
    ]
    return "\n".join(lines)



INDEX_FILE = "index.json"


def build_index(root: str | os.PathLike) -> dict:
    """The index of the checkpoints shipped under `root`: one entry per subdirectory with a config.json
    (name, path relative to root, model_type, env, sha256 and size of the weights, its card)."""
    root = Path(root)
    entries = []
    for cfg_path in sorted(root.glob(f"*/{CONFIG_FILE}")):
        path = cfg_path.parent
        cfg = read_config(path)
        weights = path / WEIGHTS_FILE
        sha = file_sha256(weights)
        entries.append({
            "name": checkpoint_name(path, sha),
            "path": path.name,
            "model_type": cfg["model_type"],
            "env_id": cfg.get("training_data", {}).get("env_id"),
            "image_size": cfg["image"]["size"],
            "action_dim": cfg["action"]["dim"],
            "weights_sha256": sha,
            "weights_bytes": weights.stat().st_size,
            "goal_energy_threshold": cfg.get("goal_energy_threshold"),
            "card": f"{path.name}/{CARD_FILE}",
        })
    return {"format_version": FORMAT_VERSION, "checkpoints": entries}


def write_index(root: str | os.PathLike) -> Path:
    """Write root/index.json atomically from `build_index(root)`."""
    root = Path(root)
    tmp = root / f".{INDEX_FILE}.tmp"
    tmp.write_text(json.dumps(build_index(root), indent=2) + "\n")
    os.replace(tmp, root / INDEX_FILE)
    return root / INDEX_FILE


if __name__ == "__main__":  # python -m planner.checkpoint [ROOT]: rewrite ROOT/index.json
    import sys

    print(write_index(sys.argv[1] if len(sys.argv) > 1 else "checkpoints"))
