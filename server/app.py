"""The FastAPI app factory: HTTP API v1 over one model worker (DESIGN.md section 3, docs/SERVICE.md)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from planner.solvers import validate_action_dims
from server import images
from server.auth import require_key
from server.backend import Backend, ModelSpec, PlannerParams, PlanProblem
from server.logs import request_id_var
from server.metrics import Metrics
from server.safety import limit_actions
from server.schemas import (
    ActionSpace,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    GoalImage,
    GoalRef,
    GoalRequest,
    GoalResponse,
    ModelInfo,
    ModelsResponse,
    Observation,
    PlannerLimits,
    PlanRequest,
    PlanResponse,
    RolloutRequest,
    RolloutResponse,
    SurpriseRequest,
    SurpriseResponse,
    WarmStart,
)
from server.settings import Settings
from server.worker import DeadlineExceeded, DeviceOutOfMemory, Job, ModelWorker, NotReady, QueueFull

log = logging.getLogger("server.app")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ERRORS = {
    401: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
    504: {"model": ErrorResponse},
}


def default_backend(settings: Settings) -> Backend:
    """Load the checkpoint named by PLANNER_CHECKPOINT on the configured device."""
    from server.agent_backend import AgentBackend

    if settings.checkpoint is None:
        raise ValueError("PLANNER_CHECKPOINT is not set: point it at a checkpoint directory")
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return AgentBackend.from_checkpoint(settings.checkpoint, settings.resolved_device())


class GoalCache:
    """Bounded LRU of goal latents by goal_id (the only state the server keeps)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, goal_id: str) -> np.ndarray | None:
        with self._lock:
            z = self._d.get(goal_id)
            if z is not None:
                self._d.move_to_end(goal_id)
            return z

    def put(self, goal_id: str, z: np.ndarray) -> None:
        with self._lock:
            self._d[goal_id] = z
            self._d.move_to_end(goal_id)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


def goal_id_of(model: str, image: np.ndarray, proprio: np.ndarray | None) -> str:
    """Content hash of model name + decoded image bytes (+ goal proprio when given)."""
    h = hashlib.sha256(model.encode())
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    if proprio is not None:
        h.update(b"proprio")
        h.update(proprio.astype(np.float32).tobytes())
    return h.hexdigest()[:32]


def create_app(
    settings: Settings | None = None, backend_factory: Callable[[Settings], Backend] | None = None
) -> FastAPI:
    """Build the app; the model loads on the worker thread when the lifespan starts."""
    settings = settings or Settings()
    settings.check_bind()
    factory = backend_factory or default_backend
    metrics = Metrics()
    worker = ModelWorker(
        lambda: factory(settings),
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        observe=metrics.observe_worker,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        ready_watch = asyncio.create_task(_watch_ready(worker, metrics))
        yield
        ready_watch.cancel()
        metrics.ready.set(0)
        log.info("shutting down: finishing queued requests")
        await asyncio.to_thread(worker.stop)

    app = FastAPI(
        title="Latent world-model planning service",
        version="1",
        lifespan=lifespan,
        description="Plan robot arm actions toward a goal image with a latent (JEPA) world model.",
    )
    app.state.settings = settings
    app.state.api_keys = [k.encode() for k in settings.api_key_list()]
    app.state.metrics = metrics
    app.state.worker = worker
    app.state.goals = GoalCache(settings.goal_cache_size)
    app.add_middleware(RequestContextMiddleware, max_body=settings.max_body_bytes, metrics=metrics)
    _install_error_handlers(app)
    _add_routes(app)
    return app


async def _watch_ready(worker: ModelWorker, metrics: Metrics) -> None:
    if await asyncio.to_thread(worker.wait_ready):
        metrics.ready.set(1)


class RequestContextMiddleware:
    """Request id (X-Request-ID), body size limit (413), per-route metrics and one structured log line."""

    def __init__(self, app, max_body: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")
        rid = rid if REQUEST_ID_RE.match(rid) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        t0 = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            body_receive = await self._bounded_body(headers, receive)
            if body_receive is None:
                resp = _error(
                    413,
                    f"request body larger than {self.max_body} bytes (PLANNER_MAX_BODY_BYTES); "
                    "send the model's image size, or fewer history frames",
                )
                await resp(scope, receive, send_with_id)
            else:
                await self.app(scope, body_receive, send_with_id)
        except Exception as exc:  # a bug, not bad input: log it, answer 500 without a traceback
            log.error("unhandled %s: %s", type(exc).__name__, exc, exc_info=exc)
            if status["started"]:
                raise
            resp = _error(500, "internal error; the server logged it under this request id")
            await resp(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            route = scope.get("route")
            route_name = getattr(route, "path", "unmatched")
            self.metrics.observe_request(route_name, status["code"], elapsed)
            log.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status["code"],
                    "ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)

    async def _bounded_body(self, headers: dict[str, str], receive):
        """Read the whole body (at most max_body bytes) and return a replaying receive, or None if too big."""
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return None
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"detail": detail, "request_id": request_id_var.get()}, status_code=status, headers=headers
    )


def _describe_validation(errors) -> str:
    """Pydantic errors -> one line per problem, naming the field, never echoing the (possibly huge) input."""
    parts = []
    for err in errors[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(parts) + more


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        return _error(422, "invalid request: " + _describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


# ---------------------------------------------------------------------------------------------------------
# request -> model problem
# ---------------------------------------------------------------------------------------------------------


def _spec(request: Request) -> ModelSpec:
    worker: ModelWorker = request.app.state.worker
    if not worker.ready:
        raise HTTPException(
            503, worker.load_error or "the model is still loading; retry shortly", {"Retry-After": "1"}
        )
    return worker.backend.spec


def _decode(text: str, spec: ModelSpec, resize: bool, what: str) -> np.ndarray:
    try:
        return images.conform(images.decode_base64(text, what), spec.preprocessing, resize, what)
    except images.ImageError as e:
        raise HTTPException(422, str(e)) from None


def _vector(values: list[float] | None, n: int | None, what: str) -> np.ndarray | None:
    if values is None:
        return None
    if n is not None and len(values) != n:
        raise HTTPException(422, f"{what} has {len(values)} values, the model expects {n}")
    return np.asarray(values, dtype=np.float32)


def _observation(obs: Observation, spec: ModelSpec, settings: Settings, resize: bool):
    """-> frames uint8 [K,H,W,3] (current last), prev_actions float32 [K-1,A] native, proprio or None,
    and the ood context (the K frames before the current one [K,H,W,3], their actions [K,A]) or None."""
    if len(obs.history) > settings.max_history:
        raise HTTPException(
            422,
            f"observation.history has {len(obs.history)} entries; send at most {settings.max_history}",
        )
    current = _decode(obs.image, spec, resize, "observation.image")
    proprio = _vector(obs.proprio, spec.proprio_dim, "observation.proprio")
    k = spec.history_len
    first = max(0, len(obs.history) - k)  # decode at most the K most recent entries
    for i, item in enumerate(obs.history[:first]):
        _vector(item.action, spec.action_dim, f"observation.history[{i}].action")
    frames, actions = [], []
    for i, item in enumerate(obs.history[first:], start=first):
        frames.append(_decode(item.image, spec, resize, f"observation.history[{i}].image"))
        actions.append(_vector(item.action, spec.action_dim, f"observation.history[{i}].action"))
    context = (np.stack(frames), np.stack(actions)) if len(frames) == k else None
    frames, actions = (
        frames[len(frames) - (k - 1) :] if k > 1 else [],
        actions[len(actions) - (k - 1) :] if k > 1 else [],
    )
    frames.append(current)
    # Fewer frames than the model's history: repeat the oldest frame with a zero (no-motion) action.
    while len(frames) < k:
        frames.insert(0, frames[0])
        actions.insert(0, np.zeros(spec.action_dim, np.float32))
    prev = np.stack(actions) if actions else np.zeros((0, spec.action_dim), np.float32)
    return np.stack(frames), prev, proprio, context


def _planner_params(req: PlanRequest, spec: ModelSpec, settings: Settings) -> tuple[PlannerParams, int]:
    p = req.planner
    d = spec.default_planner
    solver = p.solver if p and p.solver is not None else d.solver
    if solver not in spec.solvers:
        raise HTTPException(422, f"planner.solver {solver!r} is unknown; choose one of {list(spec.solvers)}")
    values = {}
    for name, default, limit, env in (
        ("horizon", d.horizon, settings.max_horizon, "PLANNER_MAX_HORIZON"),
        ("samples", d.samples, settings.max_samples, "PLANNER_MAX_SAMPLES"),
        ("iterations", d.iterations, settings.max_iterations, "PLANNER_MAX_ITERATIONS"),
    ):
        v = getattr(p, name) if p is not None and getattr(p, name) is not None else default
        if not 1 <= v <= limit:
            raise HTTPException(422, f"planner.{name}={v} is out of range; use 1..{limit} ({env})")
        values[name] = v
    seed = p.seed if p is not None and p.seed is not None else 0
    if not 0 <= seed < 2**63:
        raise HTTPException(422, f"planner.seed={seed} is out of range; use 0..2**63-1")
    return PlannerParams(solver=solver, **values), seed


def _check_stages(req: PlanRequest, spec: ModelSpec) -> None:
    """422 unless the request's per-stage held dimensions fit its sub-goals and the model's actions (held
    values in normalized units; a held dimension is held even where the checkpoint snaps it, as in
    `planner eval`)."""
    n = len(req.subgoals)
    if req.stage_fixed_dims and len(req.stage_fixed_dims) != n + 1:
        raise HTTPException(422, f"stage_fixed_dims has {len(req.stage_fixed_dims)} entries; send one per "
                                 f"stage ({n} sub-goal(s) + the goal = {n + 1}) or none")
    for k, held in enumerate(req.stage_fixed_dims):
        try:
            validate_action_dims((), tuple(held.items()), spec.action_dim)
        except ValueError as e:
            raise HTTPException(422, f"stage_fixed_dims[{k}]: {e}") from None


def _stage_fixed_dims(req: PlanRequest, index: int) -> tuple[tuple[int, float], ...]:
    """(dimension, value) pairs held while planning to target `index` (sub-goals, then the goal)."""
    return tuple(sorted(req.stage_fixed_dims[index].items())) if req.stage_fixed_dims else ()


def _check_warm_start(request: Request, req: PlanRequest, params: PlannerParams, spec: ModelSpec) -> None:
    ws, executed = req.warm_start, req.executed_steps
    if ws is None:
        if executed:
            raise HTTPException(422, "executed_steps needs the warm_start of the previous response")
        return
    want = {
        "model": spec.name,
        "solver": params.solver,
        "horizon": params.horizon,
        "samples": params.samples,
        "action_dim": spec.action_dim,
    }
    got = ws.model_dump(exclude={"state"})
    wrong = [f"{k}={got[k]!r} (this request: {want[k]!r})" for k in want if got[k] != want[k]]
    if wrong:
        raise HTTPException(
            422,
            "warm_start does not fit this model/solver: "
            + ", ".join(wrong)
            + "; omit warm_start to start fresh",
        )
    if executed > params.horizon:
        raise HTTPException(
            422, f"executed_steps={executed} exceeds the previous plan's horizon {params.horizon}"
        )
    try:
        request.app.state.worker.backend.validate_warm_start(ws.state, params)
    except ValueError as e:
        raise HTTPException(422, f"warm_start.state is not one this server returned: {e}") from None


def _goal(request: Request, goal: GoalImage | GoalRef, spec: ModelSpec, resize: bool, what: str = "goal"):
    """-> (goal_id, cached latent or None, image or None, proprio or None)."""
    cache: GoalCache = request.app.state.goals
    if isinstance(goal, GoalRef):
        z = cache.get(goal.goal_id)
        if z is None:
            raise HTTPException(
                404,
                f"unknown {what}.goal_id {goal.goal_id!r} (evicted or never uploaded); "
                "upload the goal image again with POST /v1/goals",
            )
        return goal.goal_id, z, None, None
    image = _decode(goal.image, spec, resize, f"{what}.image")
    proprio = _vector(goal.proprio, spec.proprio_dim, f"{what}.proprio")
    gid = goal_id_of(spec.name, image, proprio)
    z = cache.get(gid)
    return gid, z, (image if z is None else None), proprio


def _deadline(settings: Settings, deadline_ms: float | None) -> float:
    budget = (
        settings.request_timeout_s
        if deadline_ms is None
        else min(deadline_ms / 1000.0, settings.request_timeout_s)
    )
    return time.monotonic() + budget


async def _run(request: Request, job: Job):
    """Submit to the worker, mapping worker outcomes to HTTP errors."""
    try:
        return await request.app.state.worker.submit(job)
    except QueueFull:
        raise HTTPException(
            503, "the planning queue is full; retry after the indicated delay", {"Retry-After": "1"}
        ) from None
    except NotReady as e:
        raise HTTPException(503, str(e), {"Retry-After": "1"}) from None
    except DeadlineExceeded:
        raise HTTPException(
            504, "the request's deadline passed before a plan was ready; stop or hold the arm"
        ) from None
    except DeviceOutOfMemory:
        raise HTTPException(
            503,
            "the model ran out of device memory on this batch; retry, or ask for fewer samples",
            {"Retry-After": "1"},
        ) from None


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        log.error("model produced non-finite %s", what)
        raise HTTPException(500, f"the model produced a non-finite {what}")
    return x


# ---------------------------------------------------------------------------------------------------------
# routes
# ---------------------------------------------------------------------------------------------------------


def _add_routes(app: FastAPI) -> None:
    auth = [Depends(require_key)]

    @app.get("/healthz")
    async def healthz(request: Request):
        """Liveness: 200 while the process is fine; 503 if the model failed to load (restart me)."""
        worker: ModelWorker = request.app.state.worker
        if worker.load_error:
            return _error(503, worker.load_error)
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request):
        """Readiness: 200 once the model is loaded and warmed up, else 503."""
        worker: ModelWorker = request.app.state.worker
        if worker.ready:
            return {"ready": True, "model": worker.backend.spec.name}
        reason = worker.load_error or (
            "the model is loading" if not worker.wait_ready(0) else "shutting down"
        )
        return JSONResponse({"ready": False, "reason": reason}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/metrics")
    async def metrics_endpoint(request: Request):
        m: Metrics = request.app.state.metrics
        m.queue_depth.set(request.app.state.worker.depth())
        return Response(m.render(), media_type=m.content_type)

    @app.get("/v1/models", response_model=ModelsResponse, dependencies=auth, responses=ERRORS)
    async def models(request: Request):
        spec = _spec(request)
        s: Settings = request.app.state.settings
        d = spec.default_planner
        info = ModelInfo(
            name=spec.name,
            image_size=spec.image_size,
            preprocessing=spec.preprocessing.to_dict(),
            action_space=ActionSpace(
                low=spec.action_low.tolist(),
                high=spec.action_high.tolist(),
                units=spec.action_units,
                frame=spec.action_frame,
            ),
            history_len=spec.history_len,
            proprio_dim=spec.proprio_dim,
            latent_dim=spec.latent_dim,
            goal_energy_threshold=spec.goal_energy_threshold,
            subgoal_energy_threshold=spec.subgoal_energy_threshold,
            objective=spec.objective,
            camera=spec.camera,
            planner_limits=PlannerLimits(
                solvers=list(spec.solvers),
                default_solver=d.solver,
                default_horizon=d.horizon,
                default_samples=d.samples,
                default_iterations=d.iterations,
                **spec.action_dims,
                max_horizon=s.max_horizon,
                max_samples=s.max_samples,
                max_iterations=s.max_iterations,
                max_batch=s.max_batch,
                max_history=s.max_history,
            ),
        )
        return ModelsResponse(models=[info])

    @app.post("/v1/plan", response_model=PlanResponse, dependencies=auth, responses=ERRORS)
    async def plan(req: PlanRequest, request: Request):
        """Plan H actions from the observation toward the goal (one MPC step)."""
        return await _plan(request, req)

    @app.post("/v1/plan/upload", response_model=PlanResponse, dependencies=auth, responses=ERRORS)
    async def plan_upload(
        request: Request,
        image: Annotated[UploadFile, File(description="Current camera image, PNG or JPEG")],
        goal_image: Annotated[UploadFile | None, File(description="Goal image (or send goal_id)")] = None,
        goal_id: Annotated[str | None, Form()] = None,
        fields: Annotated[str, Form(description="JSON object with the other PlanRequest fields")] = "{}",
    ):
        """Multipart variant of /v1/plan: images as files; `fields` carries the rest as JSON."""
        try:
            extra = json.loads(fields)
        except json.JSONDecodeError as e:
            raise HTTPException(422, f"fields: not valid JSON ({e.msg})") from None
        if not isinstance(extra, dict):
            raise HTTPException(422, "fields must be a JSON object")
        if (goal_image is None) == (goal_id is None):
            raise HTTPException(422, "send exactly one of goal_image (file) and goal_id")
        obs = dict(extra.pop("observation", {}) or {}, image=_b64(await image.read()))
        goal = (
            {"goal_id": goal_id}
            if goal_id is not None
            else dict(extra.pop("goal", {}) or {}, image=_b64(await goal_image.read()))
        )
        extra.pop("goal", None)
        try:
            req = PlanRequest.model_validate({**extra, "observation": obs, "goal": goal})
        except ValidationError as e:
            raise HTTPException(422, "invalid request: " + _describe_validation(e.errors())) from None
        return await _plan(request, req)

    @app.post("/v1/goals", response_model=GoalResponse, dependencies=auth, responses=ERRORS)
    async def goals(req: GoalRequest, request: Request):
        """Encode a goal image once; plan with {"goal": {"goal_id": ...}} afterwards."""
        return await _upload_goal(request, req)

    @app.post("/v1/goals/upload", response_model=GoalResponse, dependencies=auth, responses=ERRORS)
    async def goals_upload(
        request: Request,
        image: Annotated[UploadFile, File(description="Goal image, PNG or JPEG")],
        proprio: Annotated[str | None, Form(description="JSON list of goal proprio values")] = None,
        resize: Annotated[bool, Form()] = False,
    ):
        """Multipart variant of /v1/goals."""
        try:
            req = GoalRequest.model_validate(
                {
                    "image": _b64(await image.read()),
                    "proprio": None if proprio is None else json.loads(proprio),
                    "resize": resize,
                }
            )
        except (ValidationError, json.JSONDecodeError) as e:
            msg = _describe_validation(e.errors()) if isinstance(e, ValidationError) else f"proprio: {e.msg}"
            raise HTTPException(422, "invalid request: " + msg) from None
        return await _upload_goal(request, req)

    @app.post("/v1/embed", response_model=EmbedResponse, dependencies=auth, responses=ERRORS)
    async def embed(req: EmbedRequest, request: Request):
        """The latent of one image."""
        spec = _spec(request)
        image = _decode(req.image, spec, req.resize, "image")
        s: Settings = request.app.state.settings
        z, *_ = await _run(request, Job("embed", image, _deadline(s, None)))
        return EmbedResponse(embedding=_finite(z, "embedding").tolist(), model=spec.name)

    @app.post("/v1/rollout", response_model=RolloutResponse, dependencies=auth, responses=ERRORS)
    async def rollout(req: RolloutRequest, request: Request):
        """Imagine a given action sequence: energy to the goal per step and a summary of the latents."""
        spec = _spec(request)
        s: Settings = request.app.state.settings
        frames, prev, _, _ = _observation(req.observation, spec, s, req.resize)
        if not 1 <= len(req.actions) <= s.max_horizon:
            raise HTTPException(422, f"actions has {len(req.actions)} steps; send 1..{s.max_horizon}")
        acts = np.stack([_vector(a, spec.action_dim, f"actions[{i}]") for i, a in enumerate(req.actions)])
        acts = np.clip(acts, spec.action_low, spec.action_high)
        goal_latent = None
        if req.goal is not None:
            gid, goal_latent, gimage, gproprio = _goal(request, req.goal, spec, req.resize)
            if goal_latent is None:
                goal_latent, *_ = await _run(request, Job("goals", (gimage, gproprio), _deadline(s, None)))
                request.app.state.goals.put(gid, goal_latent)
        out, *_ = await _run(request, Job("rollout", (frames, prev, acts, goal_latent), _deadline(s, None)))
        return RolloutResponse(model=spec.name, **out)

    @app.post("/v1/surprise", response_model=SurpriseResponse, dependencies=auth, responses=ERRORS)
    async def surprise(req: SurpriseRequest, request: Request):
        """Physical surprise of a clip: the world model's per-step prediction error (docs/SURPRISE.md)."""
        spec = _spec(request)
        s: Settings = request.app.state.settings
        k = spec.history_len
        if len(req.actions) != len(req.frames) - 1:
            raise HTTPException(
                422,
                f"send T+1 frames and T actions; got {len(req.frames)} frames and {len(req.actions)} actions",
            )
        if not k <= len(req.actions) <= s.max_history * 8:
            raise HTTPException(
                422, f"send {k + 1}..{s.max_history * 8 + 1} frames (the model's history length is {k})"
            )
        frames = np.stack([_decode(f, spec, req.resize, f"frames[{i}]") for i, f in enumerate(req.frames)])
        acts = np.stack([_vector(a, spec.action_dim, f"actions[{i}]") for i, a in enumerate(req.actions)])
        out, *_ = await _run(request, Job("surprise", (frames, acts), _deadline(s, None)))
        return SurpriseResponse(model=spec.name, **out)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _upload_goal(request: Request, req: GoalRequest) -> GoalResponse:
    spec = _spec(request)
    s: Settings = request.app.state.settings
    gid, z, image, proprio = _goal(
        request, GoalImage(image=req.image, proprio=req.proprio), spec, req.resize, "goal"
    )
    if z is None:
        z, *_ = await _run(request, Job("goals", (image, proprio), _deadline(s, None)))
        request.app.state.goals.put(gid, _finite(z, "goal latent"))
    return GoalResponse(goal_id=gid, model=spec.name)


async def _plan(request: Request, req: PlanRequest) -> PlanResponse:
    spec = _spec(request)
    s: Settings = request.app.state.settings
    params, seed = _planner_params(req, spec, s)
    _check_warm_start(request, req, params, spec)
    frames, prev, proprio, context = _observation(req.observation, spec, s, req.resize)
    workspace = None
    if s.workspace_low is not None:
        if proprio is None or proprio.shape[0] < 3:
            raise HTTPException(
                422,
                "this server enforces a workspace box: send observation.proprio (first 3 = end effector xyz)",
            )
        workspace = (np.asarray(s.workspace_low), np.asarray(s.workspace_high))
    if req.subgoal_index > len(req.subgoals):
        raise HTTPException(
            422, f"subgoal_index {req.subgoal_index} is past the {len(req.subgoals)} sub-goal(s) sent "
            f"(at most {len(req.subgoals)}: the final goal)"
        )
    _check_stages(req, spec)
    index = req.subgoal_index
    targets = [(g, f"subgoals[{i}]") for i, g in enumerate(req.subgoals)][index:] + [(req.goal, "goal")]
    resolved = [_goal(request, g, spec, req.resize, what) for g, what in targets]
    warm_start = req.warm_start.state if req.warm_start is not None else None
    model_ms_total, queue_ms_total = 0.0, 0.0
    while True:
        gid, goal_latent, goal_image, goal_proprio = resolved[index - req.subgoal_index]
        problem = PlanProblem(
            frames=frames,
            prev_actions=prev,
            goal_latent=goal_latent,
            goal_image=goal_image,
            goal_proprio=goal_proprio,
            seed=seed,
            warm_start=warm_start,
            executed_steps=req.executed_steps,
            context_frames=None if context is None else context[0],
            context_actions=None if context is None else context[1],
            subgoal=index < len(req.subgoals),
        )
        stage_params = replace(params, fixed_dims=_stage_fixed_dims(req, index))
        outcome, queue_ms, model_ms, batch_size = await _run(
            request, Job("plan", problem, _deadline(s, req.deadline_ms), stage_params)
        )
        model_ms_total, queue_ms_total = model_ms_total + model_ms, queue_ms_total + queue_ms
        if goal_latent is None:
            request.app.state.goals.put(gid, outcome.goal_latent)
        if not (outcome.goal_reached and index < len(req.subgoals)):
            break
        index, warm_start = index + 1, None  # sub-goal reached: plan to the next one from here
    actions = limit_actions(
        _finite(np.asarray(outcome.actions, dtype=np.float32), "plan"),
        spec.action_low,
        spec.action_high,
        max_step_norm=s.max_step_norm,
        workspace=workspace,
        ee_position=proprio,
    )
    energy = float(_finite(np.asarray(outcome.energy, dtype=np.float64), "energy"))
    request.app.state.metrics.energy.observe(energy)
    return PlanResponse(
        actions=actions.tolist(),
        energy=energy,
        current_energy=float(_finite(np.asarray(outcome.current_energy, dtype=np.float64), "current_energy")),
        goal_reached=bool(outcome.goal_reached) and index == len(req.subgoals),
        subgoal_index=index,
        ood_score=outcome.ood_score,
        plan_ms=round(model_ms_total, 3),
        queue_ms=round(queue_ms_total, 3),
        batch_size=batch_size,
        model=spec.name,
        goal_id=gid,
        warm_start=WarmStart(
            model=spec.name,
            solver=params.solver,
            horizon=params.horizon,
            samples=params.samples,
            action_dim=spec.action_dim,
            state=outcome.warm_start,
        ),
    )
