"""Run `planner serve` in a child process on a free loopback port (the demo and the load test use it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(checkpoint: str | Path, env: dict[str, str] | None = None, timeout_s: float = 300.0,
            stderr=None) -> Iterator[str]:
    """Start the server on `checkpoint` with extra environment `env`; yield its base URL once /readyz
    answers 200; on exit SIGTERM it (in-flight requests finish) and wait, killing it after 60 s."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "planner.cli", "serve", "--checkpoint", str(checkpoint), "--port", str(port)],
        env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
            try:
                if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready within {timeout_s:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
