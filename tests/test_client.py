"""PlannerClient / AsyncPlannerClient against scripted transports: retries, deadlines, goal re-upload.

The same clients run against a real server in test_server_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from server.client import (
    AsyncPlannerClient,
    Goal,
    PlanDeadlineExceeded,
    PlannerClient,
    PlannerError,
)
from server.images import decode_base64

IMAGE = np.full((16, 16, 3), 7, np.uint8)


def plan_json(goal_id: str = "g1") -> dict:
    return {
        "actions": [[0.01, 0.0, -0.01, 1.0]] * 3,
        "energy": 0.5,
        "current_energy": 0.9,
        "goal_reached": False,
        "ood_score": None,
        "plan_ms": 2.0,
        "queue_ms": 1.0,
        "batch_size": 1,
        "model": "m@1",
        "goal_id": goal_id,
        "warm_start": {
            "model": "m@1",
            "solver": "cem",
            "horizon": 3,
            "samples": 8,
            "action_dim": 4,
            "state": {"actions": [[0, 0, 0, 0]] * 3},
        },
    }


class Script:
    """A transport answering with the queued responses (or raising queued exceptions), recording requests."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        status, payload, headers = answer if len(answer) == 3 else (*answer, {})
        return httpx.Response(status, json=payload, headers=headers)

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if r.content]


def client(script: Script, **kw) -> PlannerClient:
    kw = {"backoff_s": 0.001, **kw}
    return PlannerClient("http://planner", api_key="k", transport=httpx.MockTransport(script), **kw)


def test_plan_sends_png_and_returns_numpy_actions():
    s = Script((200, plan_json()))
    result = client(s).plan(IMAGE, IMAGE, proprio=[0.1, 0.2, 0.3], history=[(IMAGE, [0, 0, 0, 1])])
    assert result.actions.shape == (3, 4) and result.actions.dtype == np.float32
    req = s.requests[0]
    assert req.headers["authorization"] == "Bearer k" and req.url.path == "/v1/plan"
    body = s.bodies()[0]
    np.testing.assert_array_equal(decode_base64(body["observation"]["image"]), IMAGE)
    assert body["observation"]["history"][0]["action"] == [0, 0, 0, 1]
    assert 0 < body["deadline_ms"] <= 10_000


def test_retries_503_and_connection_errors_then_succeeds():
    s = Script(
        httpx.ConnectError("refused"),
        (503, {"detail": "queue full"}, {"Retry-After": "0"}),
        (200, plan_json()),
    )
    result = client(s).plan(IMAGE, IMAGE)
    assert result.energy == 0.5 and result.current_energy == 0.9
    assert len(s.requests) == 3


def test_gives_up_after_retries_with_the_servers_message():
    s = Script(*[(503, {"detail": "queue full", "request_id": "r"})] * 3)
    with pytest.raises(PlannerError, match="queue full") as e:
        client(s, retries=2).plan(IMAGE, IMAGE)
    assert e.value.status == 503 and len(s.requests) == 3


def test_bad_input_is_not_retried():
    s = Script((422, {"detail": "observation.image: got 20x20, the model expects 16x16"}))
    with pytest.raises(PlannerError, match="expects 16x16"):
        client(s).plan(IMAGE, IMAGE)
    assert len(s.requests) == 1


def test_deadline_raises_plan_deadline_exceeded():
    def slow(request):
        time.sleep(0.02)  # the read timeout
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(PlanDeadlineExceeded, match="stop the arm"):
        client(Script(slow, slow, slow, slow), deadline_s=0.05, timeout_s=0.01).plan(IMAGE, IMAGE)
    with pytest.raises(PlanDeadlineExceeded, match="stop the arm"):
        client(Script((504, {"detail": "deadline passed"}))).plan(IMAGE, IMAGE)
    with pytest.raises(PlanDeadlineExceeded):  # Retry-After longer than the deadline
        client(
            Script((503, {"detail": "busy"}, {"Retry-After": "5"}), (200, plan_json())), deadline_s=0.05
        ).plan(IMAGE, IMAGE)


def test_unknown_goal_id_is_reuploaded_once():
    s = Script(
        (404, {"detail": "unknown goal_id"}), (200, {"goal_id": "g2", "model": "m@1"}), (200, plan_json("g2"))
    )
    goal = Goal("g1", IMAGE)
    result = client(s).plan(IMAGE, goal)
    assert goal.goal_id == "g2" and result.goal_id == "g2"
    assert [r.url.path for r in s.requests] == ["/v1/plan", "/v1/goals", "/v1/plan"]
    assert s.bodies()[2]["goal"] == {"goal_id": "g2"}


def test_warm_start_sent_back_unchanged():
    s = Script((200, plan_json()), (200, plan_json()))
    c = client(s)
    first = c.plan(IMAGE, IMAGE)
    c.plan(IMAGE, IMAGE, warm_start=first.warm_start, executed_steps=1)
    body = s.bodies()[1]
    assert body["warm_start"] == first.warm_start and body["executed_steps"] == 1


def test_async_client_same_behaviour():
    s = Script(
        httpx.ConnectError("refused"), (200, {"goal_id": "g9", "model": "m@1"}), (200, plan_json("g9"))
    )

    async def go():
        async with AsyncPlannerClient(
            "http://planner", transport=httpx.MockTransport(s), backoff_s=0.001
        ) as c:
            goal = await c.upload_goal(IMAGE)
            return goal, await c.plan(IMAGE, goal)

    goal, result = asyncio.run(go())
    assert goal.goal_id == "g9" and result.actions.shape == (3, 4)
    assert "authorization" not in s.requests[0].headers


def test_invalid_client_settings():
    with pytest.raises(ValueError, match="deadline_s"):
        PlannerClient("http://x", deadline_s=0)
