"""Checkpoint: round trip, naming, atomic replace, clear errors naming the broken file."""

import json

import pytest
import torch

from planner.checkpoint import (
    CONFIG_FILE,
    MODEL_TYPES,
    WEIGHTS_FILE,
    CheckpointError,
    file_sha256,
    load,
    read_config,
    register_model_type,
    save,
    update_config,
)
from planner.world_model import WorldModel, WorldModelConfig

ARCH = dict(image_size=32, latent_dim=16, history_len=2, enc_channels=(8, 16, 16), pred_hidden=32)


def make_config() -> dict:
    return {
        "image": {"size": 32, "preprocessing": {"size": 32, "crop": "center"}},
        "action": {"dim": 4, "low": [-0.05] * 3 + [-1.0], "high": [0.05] * 3 + [1.0], "units": "m, gripper"},
        "proprio": {"dim": 3},
        "history_len": 2,
        "goal_energy_threshold": 1.5,
        "metrics": {"probe_r2": 0.9},
    }


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(**ARCH)).eval()
    name = save(tmp_path / "ckpt", model, make_config())
    return tmp_path / "ckpt", model, name


def test_round_trip_identical_outputs(saved):
    path, model, name = saved
    loaded = load(path)
    assert loaded.name == name == f"ckpt@{file_sha256(path / WEIGHTS_FILE)[:12]}"
    assert loaded.config["model_type"] == "jepa" and loaded.config["goal_energy_threshold"] == 1.5
    assert not loaded.model.training
    imgs = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode(imgs), model.encode(imgs), rtol=0, atol=0)
        z, ap, acts = torch.randn(2, 2, 16), torch.randn(2, 1, 4), torch.randn(2, 5, 4, 4)
        same = loaded.model.rollout(z, ap, acts)
        torch.testing.assert_close(same, model.rollout(z, ap, acts), rtol=0, atol=0)
    card = (path / "card.md").read_text()
    assert name in card and "probe_r2" in card


def test_update_config_keeps_every_section_appended_after_the_commands(saved):
    """A stage's note (fit-energy-head's "## Energy head") and hand-written results under any heading
    survive a config update; the rendered part is rendered again."""
    path, _, name = saved
    save(path, load(path).model, make_config(), card_tail="## Energy head\n\nfitted again\n")
    card = path / "card.md"
    card.write_text(card.read_text() + "\n## Planning results (measured)\n\n| success | 90% |\n")
    assert update_config(path, load(path), {"goal_energy_threshold": 2.5}) == name
    text = card.read_text()
    assert "| goal_energy_threshold |" not in text and "goal_energy_threshold: 2.5" in text
    assert text.count("## Energy head") == 1 and text.count("## Planning results (measured)") == 1
    assert text.index("## Commands") < text.index("## Energy head") < text.index("## Planning results")
    assert text.rstrip().endswith("| success | 90% |")


def test_resave_replaces_atomically(saved, tmp_path):
    path, model, name = saved
    torch.nn.init.zeros_(model.encoder.head.bias)
    new_name = save(path, model, make_config())
    assert new_name != name and load(path).name == new_name
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dirs left behind


def test_truncated_weights_error_names_file(saved):
    path, _, _ = saved
    w = path / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load(path)


def test_corrupt_weights_without_recorded_hash_error_names_file(saved):
    path, _, _ = saved
    cfg = json.loads((path / CONFIG_FILE).read_text())
    del cfg["weights_sha256"]
    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    w = path / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        load(path)


def test_corrupt_config_error_names_file(saved):
    path, _, _ = saved
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        load(path)


def test_mismatched_architecture_error_names_file(saved):
    path, _, _ = saved
    cfg = json.loads((path / CONFIG_FILE).read_text())
    cfg["architecture"]["latent_dim"] = 8
    del cfg["weights_sha256"]
    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model.safetensors does not match architecture"):
        load(path)


def test_inconsistent_spec_and_unknown_type(saved):
    path, _, _ = saved
    cfg = json.loads((path / CONFIG_FILE).read_text())
    cfg["action"]["dim"] = 7
    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="action.dim 7"):
        read_config(path)
    cfg["action"]["dim"] = 4
    cfg["model_type"] = "pixel-diffusion"
    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown model_type 'pixel-diffusion'"):
        load(path)


def test_missing_dir_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load(tmp_path / "empty")


class TinyPolicy(torch.nn.Module):
    model_type = "tiny-policy"

    def __init__(self, arch):
        super().__init__()
        self.arch = arch
        self.fc = torch.nn.Linear(arch["obs"], 4)


def build_tiny_policy(arch):
    return TinyPolicy(arch)


def test_registry_loads_other_model_types(tmp_path, monkeypatch):
    monkeypatch.setattr("planner.checkpoint.MODEL_TYPES", dict(MODEL_TYPES))
    register_model_type("tiny-policy", "tests.test_checkpoint:build_tiny_policy")
    model = TinyPolicy({"obs": 5})
    model.cfg = type("Cfg", (), {"to_dict": lambda self: {"obs": 5}})()
    cfg = make_config()
    save(tmp_path / "pol", model, cfg)
    loaded = load(tmp_path / "pol")
    assert isinstance(loaded.model, TinyPolicy)
    torch.testing.assert_close(loaded.model.fc.weight, model.fc.weight)
