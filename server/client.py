"""Python client of the planning service: numpy images in, numpy native actions out (sync and async).

    with PlannerClient("http://127.0.0.1:8000", api_key=KEY, deadline_s=0.5) as client:
        goal = client.upload_goal(goal_image)                 # uint8 [S,S,3]; reused by id afterwards
        result = client.plan(image, goal)                     # -> PlanResult, actions float32 [H,A]
        next_ = client.plan(image2, goal, warm_start=result.warm_start, executed_steps=1)

Retries with exponential backoff on 503 (honouring Retry-After) and connection errors, within the call's
deadline; past the deadline (or on the server's 504) it raises PlanDeadlineExceeded: stop the arm.
An unknown goal_id (server restarted, cache evicted) is re-uploaded from the Goal's image once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from server.images import encode_base64_png

RETRY_STATUSES = (503,)
NETWORK_ERRORS = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


class PlannerError(Exception):
    """The server refused a request (4xx/5xx); `detail` says what to fix."""

    def __init__(self, status: int, detail: str, request_id: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}" + (f" (request id {request_id})" if request_id else ""))
        self.status, self.detail, self.request_id = status, detail, request_id


class GoalNotFound(PlannerError):
    """404: the server does not know this goal_id (restarted or evicted); upload the goal again."""


class PlanDeadlineExceeded(TimeoutError):
    """No answer within the deadline: stop the arm (or hold position) rather than act on a stale plan."""


@dataclass
class Goal:
    """An uploaded goal: the id, plus the image (and proprio) to re-upload it when the server forgets."""

    goal_id: str
    image: np.ndarray
    proprio: np.ndarray | None = None


@dataclass
class PlanResult:
    """actions float32 [H,A] native units; warm_start: pass back unchanged with the next plan call."""

    actions: np.ndarray
    energy: float
    current_energy: float
    goal_reached: bool
    subgoal_index: int
    ood_score: float | None
    plan_ms: float
    queue_ms: float
    batch_size: int
    model: str
    goal_id: str
    warm_start: dict
    round_trip_ms: float


# ------------------------------------------------------------------------------------ request building


def _image(image: np.ndarray) -> str:
    return encode_base64_png(np.asarray(image))


def _vec(x) -> list[float] | None:
    return None if x is None else np.asarray(x, dtype=np.float64).reshape(-1).tolist()


def _observation(image, proprio=None, history=None) -> dict:
    """history: sequence of (image, action) or (image, action, proprio), oldest first."""
    obs: dict[str, Any] = {"image": _image(image)}
    if proprio is not None:
        obs["proprio"] = _vec(proprio)
    if history:
        items = []
        for entry in history:
            img, action, *rest = entry
            item = {"image": _image(img), "action": _vec(action)}
            if rest and rest[0] is not None:
                item["proprio"] = _vec(rest[0])
            items.append(item)
        obs["history"] = items
    return obs


def _goal_body(goal: Goal | np.ndarray) -> dict:
    if isinstance(goal, Goal):
        return {"goal_id": goal.goal_id}
    return {"image": _image(goal)}


def _plan_body(image, goal, proprio, history, warm_start, executed_steps, planner, resize,
               subgoals=(), subgoal_index: int = 0, stage_fixed_dims=()) -> dict:
    body: dict[str, Any] = {"observation": _observation(image, proprio, history), "goal": _goal_body(goal)}
    if len(subgoals):
        body["subgoals"] = [_goal_body(g) for g in subgoals]
        body["subgoal_index"] = int(subgoal_index)
    if len(stage_fixed_dims):
        body["stage_fixed_dims"] = [{str(int(d)): float(v) for d, v in held.items()}
                                    for held in stage_fixed_dims]
    if planner:
        body["planner"] = dict(planner)
    if warm_start is not None:
        body["warm_start"] = warm_start
        body["executed_steps"] = int(executed_steps)
    if resize:
        body["resize"] = True
    return body


def _parse_plan(data: dict, round_trip_ms: float) -> PlanResult:
    return PlanResult(
        actions=np.asarray(data["actions"], dtype=np.float32),
        energy=float(data["energy"]),
        current_energy=float(data["current_energy"]),
        goal_reached=bool(data["goal_reached"]),
        subgoal_index=int(data.get("subgoal_index", 0)),
        ood_score=data.get("ood_score"),
        plan_ms=float(data["plan_ms"]),
        queue_ms=float(data["queue_ms"]),
        batch_size=int(data["batch_size"]),
        model=data["model"],
        goal_id=data["goal_id"],
        warm_start=data["warm_start"],
        round_trip_ms=round_trip_ms,
    )


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        payload = resp.json()
        detail, rid = str(payload.get("detail", resp.text)), payload.get("request_id")
    except ValueError:
        detail, rid = resp.text[:500], resp.headers.get("x-request-id")
    if resp.status_code == 504:
        raise PlanDeadlineExceeded(f"the server gave up at the deadline ({detail}): stop the arm")
    cls = GoalNotFound if resp.status_code == 404 else PlannerError
    raise cls(resp.status_code, detail, rid)


def _retry_delay(resp: httpx.Response | None, attempt: int, backoff_s: float) -> float:
    delay = backoff_s * (2**attempt)
    if resp is not None:
        with contextlib.suppress(ValueError):
            delay = max(delay, float(resp.headers.get("retry-after", 0)))
    return delay


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class _Base:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        deadline_s: float,
    ) -> None:
        if retries < 0 or timeout_s <= 0 or deadline_s <= 0 or backoff_s < 0:
            raise ValueError("need retries >= 0, timeout_s > 0, deadline_s > 0 and backoff_s >= 0")
        self.base_url = base_url.rstrip("/")
        self.api_key, self.timeout_s, self.retries = api_key, timeout_s, retries
        self.backoff_s, self.deadline_s = backoff_s, deadline_s

    def _deadline(self, deadline_s: float | None) -> float:
        return time.monotonic() + (self.deadline_s if deadline_s is None else deadline_s)

    @staticmethod
    def _expired(path: str, why: str) -> PlanDeadlineExceeded:
        return PlanDeadlineExceeded(f"{path}: no answer within the deadline ({why}): stop the arm")


# -------------------------------------------------------------------------------------------------- sync


class PlannerClient(_Base):
    """Blocking client (one per robot process; thread-safe like httpx.Client)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        deadline_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(base_url, api_key, timeout_s, retries, backoff_s, deadline_s)
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(api_key), transport=transport)

    def __enter__(self) -> PlannerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self, method: str, path: str, body: dict | None = None, deadline_s: float | None = None
    ) -> dict:
        deadline = self._deadline(deadline_s)
        last = "no attempt"
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._expired(path, last)
            if body is not None and path == "/v1/plan":
                body["deadline_ms"] = remaining * 1000.0
            resp = None
            try:
                resp = self._http.request(method, path, json=body, timeout=min(self.timeout_s, remaining))
            except httpx.TimeoutException as e:
                if deadline - time.monotonic() <= 0:
                    raise self._expired(path, f"{type(e).__name__}") from e
                last = type(e).__name__
            except NETWORK_ERRORS as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code not in RETRY_STATUSES:
                    _raise_for(resp)
                    return resp.json()
                last = f"HTTP {resp.status_code}"
            if attempt == self.retries:
                break
            time.sleep(
                min(_retry_delay(resp, attempt, self.backoff_s), max(0.0, deadline - time.monotonic()))
            )
        if resp is not None:
            _raise_for(resp)
        raise ConnectionError(f"{path}: gave up after {self.retries + 1} attempts ({last})")

    def models(self) -> dict:
        """The served model: name, image_size, action_space, history_len, planner_limits."""
        return self._request("GET", "/v1/models")["models"][0]

    def upload_goal(self, image: np.ndarray, proprio: np.ndarray | None = None) -> Goal:
        """Encode a goal image once on the server; plan with the returned Goal afterwards."""
        body = {"image": _image(image), **({"proprio": _vec(proprio)} if proprio is not None else {})}
        return Goal(self._request("POST", "/v1/goals", body)["goal_id"], np.asarray(image), proprio)

    def plan(
        self,
        image: np.ndarray,
        goal: Goal | np.ndarray,
        *,
        proprio=None,
        history=None,
        warm_start: dict | None = None,
        executed_steps: int = 1,
        planner: dict | None = None,
        deadline_s: float | None = None,
        resize: bool = False,
        subgoals: Sequence[Goal | np.ndarray] = (),
        subgoal_index: int = 0,
        stage_fixed_dims: Sequence[dict[int, float]] = (),
    ) -> PlanResult:
        """One MPC step: image uint8 [S,S,3] -> PlanResult (actions float32 [H,A], native units).

        subgoals: goals planned to in order before `goal`; pass back `result.subgoal_index`.
        stage_fixed_dims: per stage (each sub-goal, then the goal) {action dimension: normalized value} to
        hold, e.g. our envs' reset info entry of that name."""
        t0 = time.perf_counter()
        body = _plan_body(image, goal, proprio, history, warm_start, executed_steps, planner, resize,
                          subgoals, subgoal_index, stage_fixed_dims)
        try:
            data = self._request("POST", "/v1/plan", body, deadline_s)
        except GoalNotFound:
            uploaded = [g for g in (goal, *subgoals) if isinstance(g, Goal)]
            if not uploaded:
                raise
            for g in uploaded:
                g.goal_id = self.upload_goal(g.image, g.proprio).goal_id
            body = _plan_body(image, goal, proprio, history, warm_start, executed_steps, planner, resize,
                              subgoals, subgoal_index, stage_fixed_dims)
            data = self._request("POST", "/v1/plan", body, deadline_s)
        return _parse_plan(data, (time.perf_counter() - t0) * 1000.0)

    def embed(self, image: np.ndarray) -> np.ndarray:
        """image uint8 [S,S,3] -> latent float32 [D]."""
        return np.asarray(
            self._request("POST", "/v1/embed", {"image": _image(image)})["embedding"], np.float32
        )

    def rollout(
        self,
        image: np.ndarray,
        actions: np.ndarray,
        goal: Goal | np.ndarray | None = None,
        *,
        proprio=None,
        history=None,
    ) -> dict:
        """Imagine native actions [T,A] from the observation: energies (with a goal) and latent summary."""
        body = {
            "observation": _observation(image, proprio, history),
            "actions": np.asarray(actions, np.float64).tolist(),
        }
        if goal is not None:
            body["goal"] = _goal_body(goal)
        return self._request("POST", "/v1/rollout", body)


# ------------------------------------------------------------------------------------------------- async


class AsyncPlannerClient(_Base):
    """asyncio client with the same behaviour as PlannerClient."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        deadline_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(base_url, api_key, timeout_s, retries, backoff_s, deadline_s)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(api_key), transport=transport)

    async def __aenter__(self) -> AsyncPlannerClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, body: dict | None = None, deadline_s: float | None = None
    ) -> dict:
        deadline = self._deadline(deadline_s)
        last = "no attempt"
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._expired(path, last)
            if body is not None and path == "/v1/plan":
                body["deadline_ms"] = remaining * 1000.0
            resp = None
            try:
                resp = await self._http.request(
                    method, path, json=body, timeout=min(self.timeout_s, remaining)
                )
            except httpx.TimeoutException as e:
                if deadline - time.monotonic() <= 0:
                    raise self._expired(path, f"{type(e).__name__}") from e
                last = type(e).__name__
            except NETWORK_ERRORS as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code not in RETRY_STATUSES:
                    _raise_for(resp)
                    return resp.json()
                last = f"HTTP {resp.status_code}"
            if attempt == self.retries:
                break
            await asyncio.sleep(
                min(_retry_delay(resp, attempt, self.backoff_s), max(0.0, deadline - time.monotonic()))
            )
        if resp is not None:
            _raise_for(resp)
        raise ConnectionError(f"{path}: gave up after {self.retries + 1} attempts ({last})")

    async def models(self) -> dict:
        return (await self._request("GET", "/v1/models"))["models"][0]

    async def upload_goal(self, image: np.ndarray, proprio: np.ndarray | None = None) -> Goal:
        body = {"image": _image(image), **({"proprio": _vec(proprio)} if proprio is not None else {})}
        return Goal((await self._request("POST", "/v1/goals", body))["goal_id"], np.asarray(image), proprio)

    async def plan(
        self,
        image: np.ndarray,
        goal: Goal | np.ndarray,
        *,
        proprio=None,
        history=None,
        warm_start: dict | None = None,
        executed_steps: int = 1,
        planner: dict | None = None,
        deadline_s: float | None = None,
        resize: bool = False,
        subgoals: Sequence[Goal | np.ndarray] = (),
        subgoal_index: int = 0,
        stage_fixed_dims: Sequence[dict[int, float]] = (),
    ) -> PlanResult:
        t0 = time.perf_counter()
        body = _plan_body(image, goal, proprio, history, warm_start, executed_steps, planner, resize,
                          subgoals, subgoal_index, stage_fixed_dims)
        try:
            data = await self._request("POST", "/v1/plan", body, deadline_s)
        except GoalNotFound:
            uploaded = [g for g in (goal, *subgoals) if isinstance(g, Goal)]
            if not uploaded:
                raise
            for g in uploaded:
                g.goal_id = (await self.upload_goal(g.image, g.proprio)).goal_id
            body = _plan_body(image, goal, proprio, history, warm_start, executed_steps, planner, resize,
                              subgoals, subgoal_index, stage_fixed_dims)
            data = await self._request("POST", "/v1/plan", body, deadline_s)
        return _parse_plan(data, (time.perf_counter() - t0) * 1000.0)

    async def embed(self, image: np.ndarray) -> np.ndarray:
        data = await self._request("POST", "/v1/embed", {"image": _image(image)})
        return np.asarray(data["embedding"], np.float32)

    async def rollout(
        self,
        image: np.ndarray,
        actions: np.ndarray,
        goal: Goal | np.ndarray | None = None,
        *,
        proprio=None,
        history=None,
    ) -> dict:
        body = {
            "observation": _observation(image, proprio, history),
            "actions": np.asarray(actions, np.float64).tolist(),
        }
        if goal is not None:
            body["goal"] = _goal_body(goal)
        return await self._request("POST", "/v1/rollout", body)
