"""`planner ensemble`: one checkpoint whose planner imagines with several predictors on one frozen encoder.

A search over many candidate plans picks the ones whose imagination is most wrong in their favour
(docs/BENCHMARKS.md, "Predictor or energy?"). Predictors trained differently (`planner refit-predictor`
with other seeds, losses or sizes of the same width) err differently, so where they disagree the
imagination is least trustworthy; the objective's `disagreement` weight (planner.objectives) makes such
plans cost more, as PETS and MBPO use ensembles against model exploitation.

The base checkpoint gives everything but the extra predictors: encoder, energy head, goal and surprise
calibration (its own predictor stays member 0, so those stay valid). Each member checkpoint must have the
base's encoder bit for bit (a refit of the base, or of the checkpoint the base's head was fitted on) and
the same predictor shape; only its predictor is taken.

    planner ensemble --checkpoint checkpoints/arm-push \\
        --members runs/arm-push-refit runs/arm-push-refit-motion --out runs/arm-push-ensemble
    planner set-planner --checkpoint runs/arm-push-ensemble --disagreement 3 --evidence "..."
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

ENSEMBLE_HEADING = "Predictor ensemble"
PREDICTOR_SHAPE_KEYS = ("latent_dim", "action_dim", "history_len", "pred_hidden", "pred_blocks")


@dataclass
class EnsembleConfig:
    """Assemble an ensemble checkpoint from a base checkpoint and predictors refitted on its encoder."""

    checkpoint: Path
    """Base checkpoint (a `jepa` model): encoder, energy head, calibrations and member 0."""
    members: tuple[Path, ...]
    """Checkpoints whose predictors join as members 1..M-1 (same encoder weights, same predictor shape)."""
    out: Path
    """Checkpoint directory to write (atomically; may be the base's own directory)."""


def check_member(base, member, path: Path) -> None:
    """ValueError naming `path` unless member's encoder equals base's bit for bit and its predictor fits."""
    from planner.world_model import WorldModel

    if not isinstance(member.model, WorldModel):
        raise ValueError(f"{path}: model_type {member.config['model_type']!r} has no predictor to join")
    if member.model.cfg.pred_ensemble > 1:
        raise ValueError(f"{path} is itself an ensemble; pass the checkpoints its members came from")
    differ = [k for k in PREDICTOR_SHAPE_KEYS if getattr(member.model.cfg, k) != getattr(base.model.cfg, k)]
    if differ:
        raise ValueError(f"{path}: predictor shape differs from {base.name} in {differ}")
    ours, theirs = base.model.encoder.state_dict(), member.model.encoder.state_dict()
    if ours.keys() != theirs.keys() or not all(torch.equal(ours[k], theirs[k]) for k in ours):
        raise ValueError(f"{path}: its encoder is not {base.name}'s (members must be predictors refitted on "
                         "the same frozen encoder, `planner refit-predictor`)")


def assemble(base, members: list) -> torch.nn.Module:
    """A WorldModel with base's weights and, as extra predictors, each member's predictor (copied)."""
    from planner.world_model import WorldModel

    m = base.model
    model = WorldModel(replace(m.cfg, pred_ensemble=m.cfg.pred_ensemble + len(members)))
    model.load_state_dict(m.state_dict(), strict=False)  # all but the new members' weights
    for i, member in enumerate(members, start=m.cfg.pred_ensemble - 1):
        model.extra_predictors[i].load_state_dict(member.model.predictor.state_dict())
    return model.eval()


def member_model(model: torch.nn.Module, member: int) -> torch.nn.Module:
    """The single-predictor WorldModel of an ensemble's `member` (0: `predictor`, k: `extra_predictors[k-1]`):
    the same encoder and energy head, that member's predictor copied; the inverse of `assemble`."""
    from planner.world_model import WorldModel

    m = model.cfg.pred_ensemble
    if not 0 <= member < m:
        raise ValueError(f"member must be in 0..{m - 1} (the ensemble has {m} predictors), got {member}")
    single = WorldModel(replace(model.cfg, pred_ensemble=1))
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith("extra_predictors.")}
    single.load_state_dict(shared)
    single.predictor.load_state_dict(model.members[member].state_dict())
    return single.eval()


def stage_notes(card: Path) -> str:
    """The base card's appended sections that say how its weights were made (e.g. "## Energy head"); its
    measured results (sections whose heading names results) describe the base, not the ensemble, and a
    base ensemble's own "Predictor ensemble" note is written anew."""
    from planner.checkpoint import card_appended_sections

    text = card_appended_sections(card.read_text()) if card.exists() else ""
    sections = [s for s in ("\n" + text).split("\n## ") if s.strip()]
    return "".join(f"\n## {s.rstrip()}\n" for s in sections
                   if "results" not in s.splitlines()[0].lower() and not s.startswith(ENSEMBLE_HEADING))


def run(cfg: EnsembleConfig) -> str:
    """Check, assemble and write; returns the new checkpoint's name."""
    from planner import checkpoint
    from planner.cli import invoked_command
    from planner.world_model import WorldModel

    if not cfg.members:
        raise ValueError("--members needs at least one checkpoint")
    base = checkpoint.load(cfg.checkpoint)
    if not isinstance(base.model, WorldModel):
        raise ValueError(f"{cfg.checkpoint}: model_type {base.config['model_type']!r} is not a latent world "
                         "model")
    members = [checkpoint.load(p) for p in cfg.members]
    for member, path in zip(members, cfg.members, strict=True):
        check_member(base, member, path)
    model = assemble(base, members)
    config = {k: v for k, v in base.config.items() if k not in checkpoint.FILLED_BY_SAVE}
    before = config.get("commands", [])
    member_commands = [c for member in members for c in member.config.get("commands", []) if c not in before]
    command = invoked_command("ensemble")
    names = [*(config.get("ensemble") or {}).get("members", [base.name]), *(m.name for m in members)]
    refitted_from = {**(config.get("ensemble") or {}).get("refitted_from", {}),
                     **{m.name: (m.config.get("predictor_refit") or {}).get("source") for m in members}}
    config.update(
        ensemble={"members": names, "source": base.name, "refitted_from": refitted_from},
        commands=[*before, *member_commands, *([command] if command else [])],
    )
    listed = ", ".join(f"`{n}`" for n in names)
    tail = (stage_notes(Path(cfg.checkpoint) / checkpoint.CARD_FILE)
            + f"\n## {ENSEMBLE_HEADING}\n\n{len(names)} predictors on `{base.name}`'s frozen encoder, in "
            f"order: {listed}. Member 0 is the model's prediction everywhere (quality, surprise); planning "
            "uses all of them when the objective's `disagreement` weight is above 0 (config.json `planner`, "
            "docs/PLANNING.md). Encoder, energy head and calibrations are the first member's checkpoint's.\n")
    name = checkpoint.save(cfg.out, model, config, card_tail=tail)
    print(f"wrote {cfg.out} ({name}): {len(names)} predictors")
    return name
