"""Service settings: every knob is a `PLANNER_*` environment variable, documented here and in docs/SERVICE.md.

Lists (`PLANNER_WORKSPACE_LOW`, ...) are JSON: `PLANNER_WORKSPACE_LOW='[-0.3,-0.3,0.0]'`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


class Settings(BaseSettings):
    """Planning-service settings, read from `PLANNER_<FIELD>` environment variables."""

    model_config = SettingsConfigDict(env_prefix="PLANNER_", extra="ignore")

    checkpoint: Path | None = Field(None, description="Checkpoint directory to serve (config.json + model).")
    host: str = Field("127.0.0.1", description="Bind address; a non-loopback address requires API keys.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    device: str = Field(
        "auto", description="Torch device for the model worker: auto (cuda if present), cpu, cuda[:N]."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op CPU threads (default: torch's choice); 1 suits busy CPU hosts.",
    )
    api_keys: str = Field("", description="Comma-separated Bearer keys; empty = no auth (loopback only).")
    api_keys_file: Path | None = Field(
        None, description="File with one Bearer key per line (# comments allowed)."
    )
    allow_no_auth: bool = Field(
        False, description="Allow a non-loopback bind without API keys (trusted networks)."
    )
    max_batch: int = Field(8, ge=1, le=256, description="Most plan requests merged into one solver call.")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="How long the worker waits to fill a batch.")
    queue_size: int = Field(
        64, ge=1, le=10000, description="Bounded request queue; full -> 503 + Retry-After."
    )
    request_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Default per-request deadline; past it -> 504."
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body; larger -> 413.")
    goal_cache_size: int = Field(1024, ge=1, description="Goal latents kept in the LRU cache (by goal_id).")
    max_history: int = Field(
        32, ge=0, le=1024, description="Most history entries accepted in one observation."
    )
    max_horizon: int = Field(64, ge=1, description="Largest planner horizon a request may ask for.")
    max_samples: int = Field(4096, ge=1, description="Largest planner sample count a request may ask for.")
    max_iterations: int = Field(
        32, ge=1, description="Largest planner iteration count a request may ask for."
    )
    max_step_norm: float | None = Field(
        None,
        gt=0,
        description="Cap on the norm of each step's displacement (first 3 action dims), native units.",
    )
    workspace_low: list[float] | None = Field(
        None, description="Workspace box lower corner (x,y,z); needs observation.proprio[:3] = end effector."
    )
    workspace_high: list[float] | None = Field(None, description="Workspace box upper corner (x,y,z).")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    @model_validator(mode="after")
    def _check_workspace(self) -> Settings:
        if (self.workspace_low is None) != (self.workspace_high is None):
            raise ValueError("set both PLANNER_WORKSPACE_LOW and PLANNER_WORKSPACE_HIGH, or neither")
        if self.workspace_low is not None:
            if len(self.workspace_low) != 3 or len(self.workspace_high) != 3:
                raise ValueError("PLANNER_WORKSPACE_LOW/HIGH must be JSON lists of 3 numbers (x, y, z)")
            if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high, strict=True)):
                raise ValueError("PLANNER_WORKSPACE_LOW must be below PLANNER_WORKSPACE_HIGH on every axis")
        return self

    def api_key_list(self) -> list[str]:
        """All configured API keys (from PLANNER_API_KEYS and PLANNER_API_KEYS_FILE); empty = auth off."""
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text()
            except OSError as e:
                raise ValueError(f"cannot read PLANNER_API_KEYS_FILE {self.api_keys_file}: {e}") from e
            keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            if not keys:
                raise ValueError(f"PLANNER_API_KEYS_FILE {self.api_keys_file} holds no key")
        return keys

    def check_bind(self) -> None:
        """Refuse to listen beyond loopback without keys unless PLANNER_ALLOW_NO_AUTH=1."""
        if is_loopback(self.host) or self.api_key_list() or self.allow_no_auth:
            return
        raise ValueError(
            f"refusing to bind {self.host} without API keys: set PLANNER_API_KEYS or PLANNER_API_KEYS_FILE, "
            "bind 127.0.0.1, or set PLANNER_ALLOW_NO_AUTH=1 on a trusted network"
        )

    def resolved_device(self) -> str:
        """`auto` -> cuda when torch sees a GPU, else cpu."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
