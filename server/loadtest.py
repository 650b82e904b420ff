"""Load test of the planning service: throughput, latency, errors, memory, overhead, batched vs unbatched.

    python -m server.loadtest --checkpoint CKPT --seconds 10 --json runs/loadtest.json

For each mode (batched: PLANNER_MAX_BATCH=max_batch; unbatched: 1) it starts `planner serve` on a free
port, then for each concurrency level runs that many robot clients (threads, one PlannerClient each, each
with its own observation images) in a closed loop for `seconds`. Reported per level: plans/s, p50/p99
round-trip ms, errors, median plan_ms (model time of the batch) and queue_ms, mean batch size, and the
HTTP + encode/decode overhead (round trip - queue - plan) as a fraction of plan time; per mode: server
RSS before and after.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from server.client import PlannerClient
from server.process import serving


@dataclass
class LoadTestConfig:
    """Load-test `planner serve` on a checkpoint."""

    checkpoint: Path
    """Checkpoint directory to serve."""
    concurrency: tuple[int, ...] = (1, 4, 16)
    """Concurrent clients per level."""
    seconds: float = 10.0
    """Duration of each level."""
    max_batch: int = 16
    """PLANNER_MAX_BATCH of the batched mode (the unbatched mode uses 1)."""
    max_wait_ms: float = 5.0
    """PLANNER_MAX_WAIT_MS of the batched mode."""
    modes: tuple[str, ...] = ("batched", "unbatched")
    """Which server modes to run."""
    torch_threads: int | None = None
    """PLANNER_TORCH_THREADS for the server (None: torch's default)."""
    device: str = "auto"
    """PLANNER_DEVICE for the server."""
    json: Path | None = None
    """Write the results here (atomically)."""


@dataclass
class LevelResult:
    mode: str
    clients: int
    seconds: float
    plans: int
    errors: int
    plans_per_s: float
    p50_ms: float
    p99_ms: float
    plan_ms_median: float
    queue_ms_median: float
    mean_batch: float
    overhead_ms_median: float
    overhead_fraction_of_plan: float
    error_examples: list[str] = field(default_factory=list)


def _rss_bytes(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def _server_env(cfg: LoadTestConfig, max_batch: int) -> dict[str, str]:
    env = {
        "MUJOCO_GL": "egl",
        "PLANNER_MAX_BATCH": str(max_batch),
        "PLANNER_MAX_WAIT_MS": str(cfg.max_wait_ms),
        "PLANNER_QUEUE_SIZE": "256",
        "PLANNER_DEVICE": cfg.device,
        "PLANNER_LOG_LEVEL": "warning",
    }
    if cfg.torch_threads is not None:
        env["PLANNER_TORCH_THREADS"] = str(cfg.torch_threads)
    return env


def _run_level(url: str, mode: str, clients: int, seconds: float, size: int) -> LevelResult:
    with PlannerClient(url, timeout_s=60, deadline_s=60) as c:
        goal = c.upload_goal(np.random.default_rng(12345).integers(0, 256, (size, size, 3), dtype=np.uint8))
    rows: list[tuple[float, float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def robot(i: int) -> None:
        rng = np.random.default_rng(i)
        frames = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        with PlannerClient(url, timeout_s=60, deadline_s=60, retries=0) as c:
            k = 0
            while time.monotonic() < stop_at:
                try:
                    r = c.plan(frames[k % len(frames)], goal)
                    with lock:
                        rows.append((r.round_trip_ms, r.plan_ms, r.queue_ms, r.batch_size))
                except Exception as e:  # counted and reported, the load goes on
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}"[:200])
                k += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=robot, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    a = np.array(rows, dtype=np.float64).reshape(-1, 4)
    rtt, plan, queue, batch = a.T if len(a) else (np.array([np.nan]),) * 4
    overhead = rtt - plan - queue
    return LevelResult(
        mode=mode,
        clients=clients,
        seconds=round(elapsed, 2),
        plans=len(rows),
        errors=len(errors),
        plans_per_s=round(len(rows) / elapsed, 2),
        p50_ms=round(float(np.percentile(rtt, 50)), 2),
        p99_ms=round(float(np.percentile(rtt, 99)), 2),
        plan_ms_median=round(float(np.median(plan)), 2),
        queue_ms_median=round(float(np.median(queue)), 2),
        mean_batch=round(float(np.mean(batch)), 2),
        overhead_ms_median=round(float(np.median(overhead)), 2),
        overhead_fraction_of_plan=round(float(np.median(overhead / plan)), 3),
        error_examples=sorted(set(errors))[:3],
    )


def run(cfg: LoadTestConfig) -> dict:
    from planner.checkpoint import read_config

    size = int(read_config(cfg.checkpoint)["image"]["size"])
    out: dict = {
        "checkpoint": str(cfg.checkpoint),
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "cpu_count": os.cpu_count(),
        "modes": {},
    }
    levels = [(m, c) for m in cfg.modes for c in cfg.concurrency]
    bar = tqdm(total=len(levels), desc="load test", unit="level")
    for mode in cfg.modes:
        with tempfile.NamedTemporaryFile("wb", prefix=f"serve-{mode}-", suffix=".log", delete=False) as log:
            env = _server_env(cfg, cfg.max_batch if mode == "batched" else 1)
            with serving(cfg.checkpoint, env, stderr=log) as url:
                info = {"rss_before_mb": round(_rss_bytes(url) / 2**20, 1), "levels": []}
                for clients in cfg.concurrency:
                    res = _run_level(url, mode, clients, cfg.seconds, size)
                    info["levels"].append(asdict(res))
                    bar.set_postfix(mode=mode, clients=clients, plans_per_s=res.plans_per_s)
                    bar.update()
                info["rss_after_mb"] = round(_rss_bytes(url) / 2**20, 1)
                out["model"] = httpx.get(url + "/readyz", timeout=5).json()["model"]
        out["modes"][mode] = info
    bar.close()
    _print_table(out)
    if cfg.json is not None:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = cfg.json.with_suffix(cfg.json.suffix + ".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.replace(tmp, cfg.json)
    return out


def _print_table(out: dict) -> None:
    print(f"model {out.get('model')}, {out['cpu_count']} CPUs")
    print(
        "| mode | clients | plans/s | p50 ms | p99 ms | errors | plan ms | queue ms | mean batch "
        "| overhead ms | overhead / plan |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, info in out["modes"].items():
        for r in info["levels"]:
            print(
                f"| {mode} | {r['clients']} | {r['plans_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
                f"| {r['errors']} "
                f"| {r['plan_ms_median']} | {r['queue_ms_median']} | {r['mean_batch']} "
                f"| {r['overhead_ms_median']} | {r['overhead_fraction_of_plan']} |"
            )
        print(f"{mode}: server RSS {info['rss_before_mb']} MB before, {info['rss_after_mb']} MB after")


if __name__ == "__main__":
    import tyro

    run(tyro.cli(LoadTestConfig))
