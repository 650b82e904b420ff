"""`make demo`'s job, at one episode: serve the shipped checkpoint, drive the arm over HTTP, write a video."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_drives_the_arm_through_the_server_and_writes_a_video(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "server.demo", "--episodes", "1", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "episode 0 (seed" in out.stdout and "1 episodes reached the goal image" in out.stdout
    assert (tmp_path / "episode_0.mp4").stat().st_size > 1000
