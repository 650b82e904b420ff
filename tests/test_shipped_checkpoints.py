"""The checkpoints shipped in checkpoints/ load, match index.json, and stay small."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.checkpoint import INDEX_FILE, build_index, load

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
MAX_BYTES = 25 * 1024 * 1024


def shipped() -> list[dict]:
    path = ROOT / INDEX_FILE
    return json.loads(path.read_text())["checkpoints"] if path.exists() else []


def test_index_matches_the_shipped_files():
    assert (ROOT / INDEX_FILE).exists(), "checkpoints/index.json is missing: python -m planner.checkpoint"
    assert json.loads((ROOT / INDEX_FILE).read_text()) == build_index(ROOT), (
        "checkpoints/index.json is stale: rewrite it with `python -m planner.checkpoint checkpoints`"
    )


@pytest.mark.parametrize("entry", shipped(), ids=lambda e: e["path"])
def test_shipped_checkpoint_loads_and_is_small(entry):
    path = ROOT / entry["path"]
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= MAX_BYTES, f"{path} is {size / 2**20:.1f} MiB (limit 25 MiB)"
    assert (path / "card.md").read_text().startswith(f"# {entry['name']}")
    loaded = load(path)
    assert loaded.name == entry["name"]
    if loaded.config["model_type"] != "gcbc":  # a policy has no goal-reached threshold
        assert loaded.config["goal_energy_threshold"] > 0
