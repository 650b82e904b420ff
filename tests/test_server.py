"""Planning service in-process (FastAPI TestClient + a fake backend): inputs, errors, auth, batching, limits.

The end-to-end tests against a real uvicorn process and a real model are in test_server_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.backend import PlannerParams, PlanProblem
from server.images import encode_base64_png
from server.safety import limit_actions
from server.settings import Settings
from server.worker import Job, ModelWorker, QueueFull
from tests.test_server_fakes import HIGH, LOW, SIZE, FakeBackend, expected_actions


def img(value: int, size: int = SIZE) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def b64(value: int, size: int = SIZE) -> str:
    return encode_base64_png(img(value, size))


def body(obs: int = 100, goal: int = 160, **extra) -> dict:
    return {"observation": {"image": b64(obs)}, "goal": {"image": b64(goal)}, **extra}


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < end, "server never became ready"
        time.sleep(0.02)


def serve(backend: FakeBackend | None = None, raise_server_exceptions: bool = True, **settings) -> TestClient:
    backend = backend or FakeBackend()
    app = create_app(Settings(**settings), lambda s: backend)
    return TestClient(app, raise_server_exceptions=raise_server_exceptions)


@pytest.fixture(scope="module")
def client():
    with serve(max_wait_ms=1) as c:
        wait_ready(c)
        yield c


def test_plan_returns_clipped_h_by_a_native_actions(client):
    r = client.post("/v1/plan", json=body(planner={"horizon": 7, "seed": 2}))
    assert r.status_code == 200, r.text
    out = r.json()
    actions = np.array(out["actions"])
    assert actions.shape == (7, 4)
    want = np.clip(expected_actions(img(100), img(160), 2, 7), LOW, HIGH)
    np.testing.assert_allclose(actions, want, rtol=1e-6)
    assert out["model"] == "fake@000000000000" and out["warm_start"]["horizon"] == 7
    assert out["goal_reached"] is False and out["energy"] > 0


def test_models_lists_size_action_space_history_and_limits(client):
    m = client.get("/v1/models").json()["models"][0]
    assert m["image_size"] == SIZE and m["history_len"] == 2
    assert m["action_space"]["low"] == pytest.approx(LOW.tolist())
    assert m["planner_limits"]["max_samples"] == Settings().max_samples
    assert "cem" in m["planner_limits"]["solvers"]


def test_goal_upload_then_reuse_by_id_json_and_multipart(client):
    gid = client.post("/v1/goals", json={"image": b64(160)}).json()["goal_id"]
    png = base64.b64decode(b64(160))
    up = client.post("/v1/goals/upload", files={"image": ("g.png", png, "image/png")})
    assert up.status_code == 200 and up.json()["goal_id"] == gid  # same content, same id
    by_id = client.post("/v1/plan", json={"observation": {"image": b64(100)}, "goal": {"goal_id": gid}})
    inline = client.post("/v1/plan", json=body())
    assert by_id.json()["actions"] == inline.json()["actions"]
    multi = client.post(
        "/v1/plan/upload",
        files={"image": ("o.png", base64.b64decode(b64(100)), "image/png")},
        data={"goal_id": gid, "fields": "{}"},
    )
    assert multi.status_code == 200, multi.text
    assert multi.json()["actions"] == inline.json()["actions"]


def test_resize_only_when_asked(client):
    big = {"observation": {"image": b64(100, 40)}, "goal": {"image": b64(160)}}
    r = client.post("/v1/plan", json=big)
    assert r.status_code == 422 and "expects 16x16" in r.json()["detail"] and "resize" in r.json()["detail"]
    r = client.post("/v1/plan", json={**big, "resize": True})
    assert r.status_code == 200


def test_a_model_of_two_whole_views_takes_an_image_twice_as_wide():
    from planner.preprocess import Preprocessing
    from server.images import ImageError, conform

    rule = Preprocessing(size=16, views=2)
    wide = np.concatenate([img(10), img(200)], axis=1)
    assert conform(wide, rule, resize=False) is wide
    with pytest.raises(ImageError, match=r"got 16x16, the model expects 32x16 RGB \(2 16x16 views side"):
        conform(img(10), rule, resize=False)
    big = np.concatenate([img(10, 40), img(200, 40)], axis=1)
    out = conform(big, rule, resize=True)
    assert out.shape == (16, 32, 3) and (out[:, :16] == 10).all() and (out[:, 16:] == 200).all()


def jpeg_b64(value: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(img(value)).save(buf, format="JPEG", quality=95)
    return base64.b64encode(buf.getvalue()).decode()


def gif_b64() -> str:
    buf = io.BytesIO()
    Image.fromarray(img(9)).save(buf, format="GIF")
    return base64.b64encode(buf.getvalue()).decode()


BAD = [
    ("corrupt base64", body() | {"observation": {"image": "%%%not base64"}}, 422, "invalid base64"),
    (
        "not an image",
        body() | {"observation": {"image": base64.b64encode(b"hello").decode()}},
        422,
        "PNG or JPEG",
    ),
    ("gif", body() | {"observation": {"image": gif_b64()}}, 422, "send PNG or JPEG"),
    ("missing goal", {"observation": {"image": b64(1)}}, 422, "goal"),
    ("unknown field", body(bogus=1), 422, "bogus"),
    ("wrong proprio dim", body() | {"observation": {"image": b64(1), "proprio": [1, 2]}}, 422, "expects 3"),
    (
        "wrong action dim",
        body() | {"observation": {"image": b64(1), "history": [{"image": b64(2), "action": [0, 0]}]}},
        422,
        "observation.history[0].action has 2 values, the model expects 4",
    ),
    ("absurd samples", body(planner={"samples": 10**9}), 422, "PLANNER_MAX_SAMPLES"),
    ("zero horizon", body(planner={"horizon": 0}), 422, "planner.horizon=0"),
    ("unknown solver", body(planner={"solver": "magic"}), 422, "choose one of"),
    ("negative executed", body(executed_steps=-1), 422, "executed_steps"),
    ("executed without warm start", body(executed_steps=1), 422, "warm_start"),
    (
        "warm start of another model",
        body(
            warm_start={
                "model": "other@1",
                "solver": "cem",
                "horizon": 5,
                "samples": 16,
                "action_dim": 4,
                "state": {},
            }
        ),
        422,
        "model='other@1'",
    ),
    (
        "unknown goal id",
        {"observation": {"image": b64(1)}, "goal": {"goal_id": "deadbeef"}},
        404,
        "POST /v1/goals",
    ),
]


@pytest.mark.parametrize("name,payload,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_4xx_that_says_what_to_fix(client, name, payload, status, message):
    r = client.post("/v1/plan", json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert "Traceback" not in r.text and r.json()["request_id"]


def test_jpeg_accepted(client):
    r = client.post(
        "/v1/plan", json={"observation": {"image": jpeg_b64(100)}, "goal": {"image": jpeg_b64(160)}}
    )
    assert r.status_code == 200


def test_nan_and_non_json_are_422(client):
    raw = b'{"observation": {"image": "aa", "proprio": [NaN, 0, 0]}, "goal": {"goal_id": "x"}}'
    r = client.post("/v1/plan", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["detail"]
    r = client.post("/v1/plan", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_oversized_body_is_413_with_and_without_content_length():
    with serve(max_body_bytes=4096) as c:
        wait_ready(c)
        r = c.post("/v1/plan", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "PLANNER_MAX_BODY_BYTES" in r.json()["detail"]
        r = c.post(
            "/v1/plan", content=iter([b"x" * 3000, b"x" * 3000]), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413


def test_warm_start_round_trip_and_mismatch(client):
    first = client.post("/v1/plan", json=body()).json()
    again = client.post("/v1/plan", json=body(warm_start=first["warm_start"], executed_steps=1))
    assert again.status_code == 200, again.text
    r = client.post("/v1/plan", json=body(warm_start=first["warm_start"], planner={"horizon": 9}))
    assert r.status_code == 422 and "horizon=5" in r.json()["detail"]


def test_rollout_embed_and_surprise(client):
    obs = {"image": b64(100)}
    r = client.post(
        "/v1/rollout", json={"observation": obs, "actions": [[0.01, 0, 0, 0]] * 3, "goal": {"image": b64(1)}}
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["energies"]) == 3 and len(r.json()["latent_change"]) == 3
    r = client.post("/v1/rollout", json={"observation": obs, "actions": [[0.01, 0]]})
    assert r.status_code == 422 and "actions[0]" in r.json()["detail"]
    e = client.post("/v1/embed", json={"image": b64(51)}).json()["embedding"]
    assert e == pytest.approx([0.2, 0.2, 0.2])
    r = client.post(
        "/v1/surprise", json={"frames": [b64(10), b64(20), b64(80)], "actions": [[0, 0, 0, 0]] * 2}
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["errors"]) == 2 and r.json()["peak_step"] == 1
    r = client.post("/v1/surprise", json={"frames": [b64(10), b64(20)], "actions": [[0, 0, 0, 0]] * 2})
    assert r.status_code == 422 and "T+1 frames and T actions" in r.json()["detail"]
    r = client.post("/v1/surprise", json={"frames": [b64(10), b64(20)], "actions": [[0, 0, 0, 0]]})
    assert r.status_code == 422 and "history length is 2" in r.json()["detail"]


def test_request_id_echoed_and_logged(client, caplog):
    with caplog.at_level(logging.INFO, logger="server.app"):
        r = client.get("/healthz", headers={"X-Request-ID": "robot-7.step-42"})
    assert r.headers["x-request-id"] == "robot-7.step-42"
    from server.logs import JsonFormatter

    lines = [JsonFormatter().format(rec) for rec in caplog.records if rec.getMessage() == "request"]
    assert any('"request_id": "robot-7.step-42"' in ln and '"status": 200' in ln for ln in lines)
    bad = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert bad.headers["x-request-id"] != "x" * 500


def test_metrics_by_route_and_status_and_batches(client):
    client.post("/v1/plan", json=body())
    text = client.get("/metrics").text
    assert 'planner_requests_total{route="/v1/plan",status="200"}' in text
    assert 'planner_batch_size_count{kind="plan"}' in text
    for name in (
        "planner_queue_depth",
        "planner_queue_seconds",
        "planner_plan_energy",
        "process_resident_memory_bytes",
    ):
        assert name in text


def test_auth_required_when_keys_set(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# robots\nk-one\nk-two\n")
    with serve(api_keys_file=keys, host="0.0.0.0") as c:
        wait_ready(c)
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        r = c.post("/v1/plan", json=body())
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]
        r = c.post("/v1/plan", json=body(), headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid API key"
        assert c.get("/v1/models", headers={"Authorization": "Bearer k-two"}).status_code == 200
        assert c.post("/v1/plan", json=body(), headers={"Authorization": "Bearer k-one"}).status_code == 200


def test_public_bind_requires_keys_or_explicit_opt_out(tmp_path):
    with pytest.raises(ValueError, match="PLANNER_API_KEYS"):
        create_app(Settings(host="0.0.0.0"), lambda s: FakeBackend())
    create_app(Settings(host="0.0.0.0", allow_no_auth=True), lambda s: FakeBackend())
    create_app(Settings(host="0.0.0.0", api_keys="a,b"), lambda s: FakeBackend())
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        Settings(api_keys_file=empty).api_key_list()


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("PLANNER_MAX_BATCH", "3")
    monkeypatch.setenv("PLANNER_WORKSPACE_LOW", "[-1, -1, 0]")
    monkeypatch.setenv("PLANNER_WORKSPACE_HIGH", "[1, 1, 1]")
    s = Settings()
    assert s.max_batch == 3 and s.workspace_high == [1, 1, 1]
    monkeypatch.setenv("PLANNER_WORKSPACE_HIGH", "[1, 1, -1]")
    with pytest.raises(ValueError, match="below"):
        Settings()


def test_readyz_false_until_loaded_and_warm():
    gate = threading.Event()

    def slow_load(s):
        gate.wait(10)
        return FakeBackend()

    with TestClient(create_app(Settings(), slow_load)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert c.post("/v1/plan", json=body()).status_code == 503
        gate.set()
        wait_ready(c)


def test_load_failure_is_reported_not_hidden():
    def broken(s):
        raise FileNotFoundError("ckpt/config.json is missing")

    with TestClient(create_app(Settings(), broken)) as c:
        time.sleep(0.2)
        r = c.get("/readyz")
        assert r.status_code == 503 and "config.json is missing" in r.json()["reason"]
        assert c.get("/healthz").status_code == 503


def test_queue_full_is_503_with_retry_after():
    backend = FakeBackend()
    backend.release.clear()  # the worker blocks inside the first plan
    with serve(backend, queue_size=1, max_batch=1, max_wait_ms=0) as c:
        wait_ready(c)
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(c.post, "/v1/plan", json=body(obs=0))]
            assert backend.entered.wait(10), "the worker never started the first plan"
            futures += [pool.submit(c.post, "/v1/plan", json=body(obs=i)) for i in range(1, 4)]
            time.sleep(0.5)  # the second waits in the queue (size 1), the others are turned away
            backend.release.set()
            codes = sorted(f.result().status_code for f in futures)
        full = [f.result() for f in futures if f.result().status_code == 503]
        assert codes.count(200) >= 2 and full, codes
        assert full[0].headers["retry-after"] == "1" and "queue is full" in full[0].json()["detail"]


def test_deadline_passes_gives_504():
    with serve(FakeBackend(delay_s=0.5), max_wait_ms=0) as c:
        wait_ready(c)
        r = c.post("/v1/plan", json=body(deadline_ms=50))
        assert r.status_code == 504 and "stop or hold the arm" in r.json()["detail"]


def test_device_oom_is_503_and_worker_recovers():
    with serve(FakeBackend(oom_once=True), max_wait_ms=0) as c:
        wait_ready(c)
        r = c.post("/v1/plan", json=body())
        assert r.status_code == 503 and "device memory" in r.json()["detail"] and r.headers["retry-after"]
        assert c.post("/v1/plan", json=body()).status_code == 200


def test_backend_bug_is_500_without_traceback():
    backend = FakeBackend()
    backend.plan = lambda problems, params: 1 / 0
    with serve(backend, raise_server_exceptions=False) as c:
        wait_ready(c)
        r = c.post("/v1/plan", json=body())
        assert r.status_code == 500 and "Traceback" not in r.text and "ZeroDivision" not in r.text
        assert r.json()["request_id"] == r.headers["x-request-id"]


# ---------------------------------------------------------------------------------------------- worker


def problem(value: int, seed: int = 0) -> PlanProblem:
    frame = img(value)
    return PlanProblem(
        frames=np.stack([frame, frame]),
        prev_actions=np.zeros((1, 4), np.float32),
        goal_latent=None,
        goal_image=img(200),
        goal_proprio=None,
        seed=seed,
    )


PARAMS = PlannerParams("cem", 5, 16, 2)


def run_jobs(worker: ModelWorker, jobs: list[Job]):
    async def go():
        return await asyncio.gather(*(worker.submit(j) for j in jobs), return_exceptions=True)

    return asyncio.run(go())


def test_worker_batches_concurrent_plans_and_each_gets_its_own():
    backend = FakeBackend()
    worker = ModelWorker(lambda: backend, max_batch=4, max_wait_ms=200, queue_size=16)
    worker.start()
    assert worker.wait_ready(5)
    jobs = [Job("plan", problem(10 * i, seed=1), time.monotonic() + 5, PARAMS) for i in range(8)]
    results = run_jobs(worker, jobs)
    worker.stop()
    assert backend.batches == [4, 4]
    for i, (outcome, _queue_ms, _ms, batch_size) in enumerate(results):
        assert batch_size == 4
        np.testing.assert_allclose(outcome.actions, expected_actions(img(10 * i), img(200), 1, 5), rtol=1e-6)


def test_worker_batches_only_same_seed():
    """The solver shares noise across a batch, so only problems with the same seed may share a call."""
    backend = FakeBackend()
    worker = ModelWorker(lambda: backend, max_batch=8, max_wait_ms=200, queue_size=16)
    worker.start()
    worker.wait_ready(5)
    jobs = [Job("plan", problem(i, seed=i % 2), time.monotonic() + 5, PARAMS) for i in range(6)]
    run_jobs(worker, jobs)
    worker.stop()
    assert sorted(backend.batches) == [3, 3]
    assert all(len({p.seed for p in backend.problems[j : j + 3]}) == 1 for j in (0, 3))


def test_worker_keeps_different_solver_settings_apart():
    backend = FakeBackend()
    worker = ModelWorker(lambda: backend, max_batch=8, max_wait_ms=200, queue_size=16)
    worker.start()
    worker.wait_ready(5)
    other = PlannerParams("cem", 3, 16, 2)
    jobs = [Job("plan", problem(i), time.monotonic() + 5, PARAMS if i % 2 else other) for i in range(4)]
    results = run_jobs(worker, jobs)
    worker.stop()
    assert sorted(backend.batches) == [2, 2]
    assert [r[0].actions.shape[0] for r in results] == [3, 5, 3, 5]


def test_worker_queue_bound_and_graceful_stop_finishes_queued_jobs():
    backend = FakeBackend()
    backend.release.clear()
    worker = ModelWorker(lambda: backend, max_batch=1, max_wait_ms=0, queue_size=2)
    worker.start()
    worker.wait_ready(5)

    async def go():
        tasks = []
        for i in range(3):
            tasks.append(
                asyncio.create_task(worker.submit(Job("plan", problem(i), time.monotonic() + 10, PARAMS)))
            )
            await asyncio.sleep(0.1)  # the first is taken into plan(), the next two wait in the queue
        with pytest.raises(QueueFull):
            await worker.submit(Job("plan", problem(9), time.monotonic() + 10, PARAMS))
        stopper = asyncio.get_running_loop().run_in_executor(None, worker.stop)
        await asyncio.sleep(0.1)
        backend.release.set()
        await stopper
        return await asyncio.gather(*tasks)

    results = asyncio.run(go())
    assert len(results) == 3 and backend.batches == [1, 1, 1]
    assert not worker.ready


# ---------------------------------------------------------------------------------------------- safety


def test_limit_actions_bounds_norm_cap_and_workspace():
    acts = np.array([[0.5, 0.0, 0.0, 3.0], [0.03, 0.04, 0.0, -3.0]], np.float32)
    out = limit_actions(acts, LOW, HIGH)
    np.testing.assert_allclose(out, [[0.05, 0, 0, 1], [0.03, 0.04, 0, -1]], rtol=1e-6)
    out = limit_actions(acts, LOW, HIGH, max_step_norm=0.025)
    np.testing.assert_allclose(np.linalg.norm(out[:, :3], axis=1), [0.025, 0.025], rtol=1e-5)
    box = (np.array([-0.1, -0.1, 0.0]), np.array([0.06, 0.1, 0.2]))
    out = limit_actions(
        np.tile([0.05, 0.0, -0.05, 0.0], (3, 1)),
        LOW,
        HIGH,
        workspace=box,
        ee_position=np.array([0.0, 0.0, 0.02]),
    )
    path = np.array([0.0, 0.0, 0.02]) + np.cumsum(out[:, :3], axis=0)
    assert (path >= box[0] - 1e-6).all() and (path <= box[1] + 1e-6).all()
    np.testing.assert_allclose(path[-1], [0.06, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="proprio"):
        limit_actions(acts, LOW, HIGH, workspace=box)


def test_workspace_setting_needs_proprio():
    with serve(workspace_low=[-0.1, -0.1, 0.0], workspace_high=[0.1, 0.1, 0.2]) as c:
        wait_ready(c)
        r = c.post("/v1/plan", json=body())
        assert r.status_code == 422 and "workspace" in r.json()["detail"]
        ok = body()
        ok["observation"]["proprio"] = [0.09, 0.0, 0.1]
        r = c.post("/v1/plan", json=ok)
        assert r.status_code == 200
        path = 0.09 + np.cumsum(np.array(r.json()["actions"])[:, 0])
        assert path.max() <= 0.1 + 1e-6


def test_service_doc_lists_every_setting():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "SERVICE.md").read_text()
    names = [f"PLANNER_{n.upper()}" for n in Settings.model_fields]
    missing = [n for n in names if f"| `{n}` |" not in doc]
    assert not missing, f"docs/SERVICE.md settings table lacks {missing}"


def test_subgoals_are_planned_in_order_and_skipped_once_reached(client):
    # the observation (100) already matches sub-goal 0: the server moves on to sub-goal 1 (130) in the request
    r = client.post("/v1/plan", json=body(subgoals=[{"image": b64(100)}, {"image": b64(130)}]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["subgoal_index"] == 1 and out["goal_reached"] is False
    # the energy against sub-goal 1, not against the goal
    assert out["current_energy"] == pytest.approx(30 / 255 * 3**0.5, rel=1e-5)
    # from the returned index the next request plans to sub-goal 1 again
    subgoals = [{"image": b64(100)}, {"image": b64(130)}]
    again = client.post("/v1/plan", json=body(subgoals=subgoals, subgoal_index=1))
    assert again.json()["subgoal_index"] == 1
    # all reached: the final goal, and goal_reached only for the final goal
    done = client.post("/v1/plan", json=body(goal=100, subgoals=[{"image": b64(100)}]))
    assert done.json()["subgoal_index"] == 1 and done.json()["goal_reached"] is True
    # sub-goals already passed are not read again: an unknown id there is no 404
    passed = client.post("/v1/plan", json=body(subgoals=[{"goal_id": "evicted"}, {"image": b64(130)}],
                                               subgoal_index=1))
    assert passed.status_code == 200 and passed.json()["subgoal_index"] == 1
    bad = client.post("/v1/plan", json=body(subgoals=[{"image": b64(100)}], subgoal_index=2))
    assert bad.status_code == 422 and "subgoal_index" in bad.json()["detail"]
    bad = client.post("/v1/plan", json=body(subgoals=[{"image": "not base64"}]))
    assert bad.status_code == 422 and "subgoals[0]" in bad.text


def test_stage_fixed_dims_reach_the_planner_stage_by_stage():
    """Each stage's held dimensions go to the backend with that stage's plan (the observation passes
    sub-goal 0, so one request plans twice); bad shapes and values are 422."""
    backend = FakeBackend()
    with serve(backend, max_wait_ms=1) as c:
        wait_ready(c)
        subgoals = [{"image": b64(100)}, {"image": b64(130)}]
        held = [{}, {"3": 1.0}, {"3": 1.0, "0": -0.5}]
        r = c.post("/v1/plan", json=body(obs=101, subgoals=subgoals, stage_fixed_dims=held))
        assert r.status_code == 200 and r.json()["subgoal_index"] == 1
        assert [p.fixed_dims for p in backend.params] == [(), ((3, 1.0),)]
        for extra, words in (({"stage_fixed_dims": [{}, {}]}, "one per stage"),
                             ({"stage_fixed_dims": [{}, {"7": 1.0}, {}]}, "stage_fixed_dims[1]"),
                             ({"stage_fixed_dims": [{"3": 2.0}, {}, {}]}, "stage_fixed_dims[0]")):
            bad = c.post("/v1/plan", json=body(subgoals=subgoals, **extra))
            assert bad.status_code == 422 and words in bad.text, (extra, bad.text)
