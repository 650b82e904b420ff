"""The planning service end to end: a real `planner serve` (uvicorn) process on a free port serving a tiny,
randomly initialised model saved with the real checkpoint code, driven over HTTP and by the Python client.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from planner.checkpoint import save
from planner.world_model import WorldModel, WorldModelConfig
from server.client import Goal, PlannerClient, PlannerError
from server.images import encode_base64_png

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16
KEY = "e2e-secret-key"
LOW = [-0.05, -0.05, -0.05, -1.0]
HIGH = [0.05, 0.05, 0.05, 1.0]


def tiny_checkpoint(path: Path) -> str:
    """A randomly initialised JEPA model saved with planner.checkpoint.save; returns its name."""
    torch.manual_seed(0)
    model = WorldModel(
        WorldModelConfig(image_size=SIZE, latent_dim=8, history_len=2, enc_channels=(8, 16), pred_hidden=32)
    )
    config = {
        "image": {"size": SIZE, "preprocessing": {"size": SIZE, "crop": "center"}},
        "action": {"dim": 4, "low": LOW, "high": HIGH, "units": "m, gripper", "frame": "world"},
        "proprio": {"dim": 3},
        "history_len": 2,
        "goal_energy_threshold": 0.05,
        "planner": {"solver": "cem", "horizon": 5, "samples": 32, "iterations": 2},
    }
    return save(path, model.eval(), config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m planner.cli serve` in a subprocess; stderr (JSON logs) goes to a file."""

    def __init__(self, ckpt: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {
            **os.environ,
            "MUJOCO_GL": "egl",
            "PLANNER_DEVICE": "cpu",
            "PLANNER_TORCH_THREADS": "1",
            **env,
        }
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "planner.cli",
                "serve",
                "--checkpoint",
                str(ckpt),
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    return path, tiny_checkpoint(path)


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    srv = Server(
        ckpt[0],
        tmp_path_factory.mktemp("logs") / "server.log",
        PLANNER_API_KEYS=KEY,
        PLANNER_MAX_WAIT_MS="30",
        PLANNER_MAX_BODY_BYTES="200000",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture
def client(server):
    with PlannerClient(server.url, api_key=KEY, deadline_s=30) as c:
        yield c


def test_plan_returns_h_by_a_native_actions_within_bounds(client, ckpt):
    info = client.models()
    assert info["name"] == ckpt[1] and info["image_size"] == SIZE and info["history_len"] == 2
    goal = client.upload_goal(frame(100))
    result = client.plan(frame(1), goal, history=[(frame(0), [0.01, 0.0, 0.0, 0.5])])
    assert result.actions.shape == (5, 4) and result.model == ckpt[1]
    assert (result.actions >= np.array(LOW) - 1e-6).all() and (result.actions <= np.array(HIGH) + 1e-6).all()
    assert np.isfinite(result.energy) and result.plan_ms > 0
    assert result.ood_score is None  # one history entry: too short to predict the current frame (K=2)
    hist = [(frame(7), [0.0, 0.01, 0.0, 0.5]), (frame(0), [0.01, 0.0, 0.0, 0.5])]
    scored = client.plan(frame(1), goal, history=hist)
    assert scored.ood_score is not None and scored.ood_score > 0
    np.testing.assert_allclose(scored.actions, result.actions, atol=1e-6)  # the older frame only scores OOD
    again = client.plan(frame(2), goal, warm_start=result.warm_start, executed_steps=1)
    assert again.actions.shape == (5, 4)
    longer = client.plan(
        frame(2), goal, planner={"solver": "mppi", "horizon": 8, "samples": 16, "iterations": 1}
    )
    assert longer.actions.shape == (8, 4)


def test_surprise_scores_a_clip(server):
    frames = [b64(i) for i in range(6)]
    r = post(server, "/v1/surprise", {"frames": frames, "actions": [[0.01, 0.0, 0.0, 0.0]] * 5})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["errors"]) == 5 and all(e >= 0 for e in out["errors"]) and out["peak_step"] >= 1
    assert out["space"] in ("latent", "energy") and out["threshold"] > 0 and out["typical_error"] > 0


def test_embed_and_rollout(client):
    z = client.embed(frame(3))
    assert z.shape == (8,) and np.isfinite(z).all()
    out = client.rollout(frame(3), np.zeros((4, 4)), goal=frame(4))
    assert len(out["energies"]) == 4 and len(out["latent_norms"]) == 4


def post(server, path, payload, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=payload, headers=headers, timeout=30, **kw)


def b64(seed: int, size: int = SIZE) -> str:
    return encode_base64_png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_bad_inputs_over_http(server):
    ok = {"observation": {"image": b64(1)}, "goal": {"image": b64(2)}}
    cases = [
        ({**ok, "observation": {"image": b64(1, 32)}}, 422, f"expects {SIZE}x{SIZE}"),
        ({**ok, "observation": {"image": "@@@"}}, 422, "invalid base64"),
        ({**ok, "planner": {"samples": 10**7}}, 422, "PLANNER_MAX_SAMPLES"),
        ({**ok, "planner": {"iterations": 10**4}}, 422, "PLANNER_MAX_ITERATIONS"),
        (
            {**ok, "observation": {"image": b64(1), "history": [{"image": b64(3), "action": [1.0]}]}},
            422,
            "expects 4",
        ),
        ({**ok, "goal": {"goal_id": "0" * 32}}, 404, "POST /v1/goals"),
        (
            {
                **ok,
                "observation": {"image": b64(1), "proprio": [0.0] * 3},
                "warm_start": {
                    "model": "x@1",
                    "solver": "cem",
                    "horizon": 5,
                    "samples": 32,
                    "action_dim": 4,
                    "state": {"actions": []},
                },
            },
            422,
            "warm_start",
        ),
    ]
    for payload, status, message in cases:
        r = post(server, "/v1/plan", payload)
        assert r.status_code == status, (payload.keys(), r.text)
        assert message in r.json()["detail"] and "Traceback" not in r.text
    r = post(server, "/v1/plan", {**ok, "observation": {"image": b64(1, 300)}})
    assert r.status_code == 413
    r = httpx.post(
        server.url + "/v1/plan",
        content=b'{"observation": {"image": "a", "proprio": [NaN]}}',
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 422


def test_auth_over_http(server):
    ok = {"observation": {"image": b64(1)}, "goal": {"image": b64(2)}}
    assert post(server, "/v1/plan", ok, key=None).status_code == 401
    assert post(server, "/v1/plan", ok, key="wrong").status_code == 401
    assert httpx.get(server.url + "/healthz").status_code == 200
    with pytest.raises(PlannerError) as e, PlannerClient(server.url, api_key="wrong") as c:
        c.models()
    assert e.value.status == 401


def test_concurrent_clients_each_get_their_own_plan_and_batching_changes_nothing(client, server):
    goal = client.upload_goal(frame(50))
    alone = [client.plan(frame(10 + i), goal).actions for i in range(6)]
    results: dict[int, object] = {}

    def robot(i: int) -> None:
        with PlannerClient(server.url, api_key=KEY, deadline_s=30) as c:
            results[i] = c.plan(frame(10 + i), Goal(goal.goal_id, frame(50)))

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(r.batch_size for r in results.values()) > 1, "concurrent requests were never batched"
    for i in range(6):
        np.testing.assert_allclose(results[i].actions, alone[i], atol=1e-5)
    assert not np.allclose(alone[0], alone[1]), "different observations should give different plans"


def test_metrics_and_request_id(server):
    r = httpx.get(server.url + "/readyz", headers={"X-Request-ID": "e2e-42"})
    assert r.headers["x-request-id"] == "e2e-42"
    text = httpx.get(server.url + "/metrics").text
    assert 'planner_requests_total{route="/v1/plan",status="200"}' in text
    assert "planner_batch_size_bucket" in text and "process_resident_memory_bytes" in text
    assert '"request_id": "e2e-42"' in server.log.read_text()


def test_goal_id_reupload_after_server_forgets(client, server):
    goal = Goal("f" * 32, frame(60))  # e.g. uploaded to a server that restarted since
    result = client.plan(frame(1), goal)
    assert goal.goal_id != "f" * 32 and result.goal_id == goal.goal_id


def test_graceful_shutdown_finishes_in_flight_requests(ckpt, tmp_path):
    srv = Server(ckpt[0], tmp_path / "log", PLANNER_REQUEST_TIMEOUT_S="120")
    try:
        srv.wait_ready()
        body = {
            "observation": {"image": b64(1)},
            "goal": {"image": b64(2)},
            "planner": {"samples": 4000, "iterations": 30, "horizon": 30},
        }
        out = {}
        t = threading.Thread(target=lambda: out.update(r=post(srv, "/v1/plan", body, key=None)))
        t.start()
        time.sleep(0.5)  # the request is in flight (a plan of this size takes seconds on a CPU)
        assert t.is_alive()
        srv.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        t.join(60)
        print(f"in-flight plan answered {time.monotonic() - t0:.2f} s after SIGTERM")
        assert out["r"].status_code == 200 and len(out["r"].json()["actions"]) == 30
        # uvicorn exits by re-raising the signal once shutdown is complete
        assert srv.proc.wait(30) in (0, -signal.SIGTERM)
        assert "shutting down: finishing queued requests" in srv.log.read_text()
    finally:
        srv.stop()


def test_bad_checkpoint_fails_fast_with_the_file_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "planner.cli", "serve", "--checkpoint", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "nope" in proc.stderr + proc.stdout


SCHEMATHESIS_CASES = 25


def test_schemathesis_no_server_errors_on_generated_requests(server):
    """Property-based requests generated from /openapi.json (bounded): never a 5xx."""
    import schemathesis

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    seen = []
    for result in schema.get_all_operations():
        op = result.ok()
        _fuzz(op, server.url)
        seen.append(op.path)
    assert {"/v1/plan", "/v1/goals", "/v1/plan/upload", "/v1/rollout"} <= set(seen)


def _fuzz(op, url: str) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    @given(case=op.as_strategy())
    @settings(
        max_examples=SCHEMATHESIS_CASES,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case):
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert response.status_code < 500, (
            f"{op.method.upper()} {op.path} -> {response.status_code}: {response.text[:300]}"
        )
        assert "Traceback" not in response.text

    check()
