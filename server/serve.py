"""`planner serve`: run the HTTP planning service (server.app) on a checkpoint with uvicorn.

It lives in server/ (planner/ never imports server/); planner/cli.py names it by module path only.

Flags override the matching PLANNER_* environment variables; every other setting (API keys, batching,
limits) comes from the environment, documented in docs/SERVICE.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServeConfig:
    """Serve a checkpoint over HTTP (API v1)."""

    checkpoint: Path | None = None
    """Checkpoint directory (config.json + model.safetensors); default: $PLANNER_CHECKPOINT."""
    host: str | None = None
    """Bind address; default: $PLANNER_HOST or 127.0.0.1. Beyond loopback, API keys are required."""
    port: int | None = None
    """TCP port; default: $PLANNER_PORT or 8000."""
    device: str | None = None
    """Torch device (auto, cpu, cuda, cuda:N); default: $PLANNER_DEVICE or auto."""
    graceful_timeout_s: float = 30.0
    """On SIGTERM/SIGINT, how long in-flight requests may take to finish."""


def run(cfg: ServeConfig) -> None:
    import uvicorn

    from server import logs
    from server.app import create_app
    from server.settings import Settings

    overrides = {
        k: v
        for k, v in (
            ("checkpoint", cfg.checkpoint),
            ("host", cfg.host),
            ("port", cfg.port),
            ("device", cfg.device),
        )
        if v is not None
    }
    settings = Settings(**overrides)
    if settings.checkpoint is None:
        raise SystemExit("planner serve: give --checkpoint CKPT (or set PLANNER_CHECKPOINT)")
    from planner.checkpoint import CheckpointError, read_config

    try:
        model_type = read_config(settings.checkpoint)["model_type"]  # fail fast, before binding a port
    except CheckpointError as e:
        raise SystemExit(f"planner serve: {e}") from None
    if model_type == "gcbc":
        raise SystemExit(f"planner serve: {settings.checkpoint} is a goal-conditioned policy (model_type "
                         "gcbc), not a world model the planner can search with; serve a jepa or pixel "
                         "checkpoint")
    try:
        settings.check_bind()
    except ValueError as e:
        raise SystemExit(f"planner serve: {e}") from None
    logs.configure(settings.log_level)
    os.environ.setdefault("MUJOCO_GL", "egl")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=cfg.graceful_timeout_s,
        access_log=False,
    )
