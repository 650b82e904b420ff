"""The model worker: one thread owns the model and its device; requests reach it through a bounded queue.

Plan requests that arrive within `max_wait_ms` of each other (up to `max_batch`, same solver settings and
seed) are merged into one solver call. The event loop only enqueues and awaits futures; it never runs
the model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from server.backend import Backend, PlannerParams, PlanProblem

log = logging.getLogger("server.worker")


class QueueFull(Exception):
    """The bounded queue is full (served as 503 + Retry-After)."""


class NotReady(Exception):
    """The model is not loaded yet, failed to load, or the worker is stopping (served as 503)."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before the worker got to it (served as 504)."""


class DeviceOutOfMemory(Exception):
    """The device ran out of memory for this batch; the worker freed it and goes on (served as 503)."""


@dataclass
class Job:
    kind: str
    """plan | goals | embed | rollout | surprise"""
    payload: Any
    deadline: float
    """time.monotonic() after which the result is useless."""
    params: PlannerParams | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    queue_ms: float = 0.0


_STOP = object()


class ModelWorker:
    """Owns the backend on one thread. `load` is the factory run on that thread (checkpoint -> Backend)."""

    def __init__(
        self,
        load: Callable[[], Backend],
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
        observe: Callable[[str, dict], None] | None = None,
    ) -> None:
        self._load = load
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._observe = observe or (lambda event, data: None)
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        self._ready = threading.Event()
        self._settled = threading.Event()  # set once loading ended, successfully or not
        self._accepting = False
        self.backend: Backend | None = None
        self.load_error: str | None = None

    # ---- lifecycle (event-loop side) ----
    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._accepting

    @property
    def loaded(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until loading ended (or `stop`); True if the model is ready."""
        self._settled.wait(timeout)
        return self._ready.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish every queued job, then end the thread."""
        self._accepting = False
        self._settled.set()
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, job: Job) -> Any:
        """Enqueue and await (result, queue_ms, model_ms, batch_size); raises QueueFull / NotReady /
        DeadlineExceeded / DeviceOutOfMemory, or what the backend raised."""
        if not self.ready:
            raise NotReady(self.load_error or "the model is still loading")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None
        self._observe("depth", {"depth": self._queue.qsize()})
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(job.future), max(0.0, job.deadline - time.monotonic())
            )
        except TimeoutError:
            job.future.cancel()  # the worker skips it if it has not started
            raise DeadlineExceeded() from None

    # ---- worker thread ----
    def _run(self) -> None:
        try:
            self.backend = self._load()
            self.backend.warmup()
        except Exception as e:  # a load failure must reach /readyz and the log, not kill silently
            self.load_error = f"model failed to load: {type(e).__name__}: {e}"
            log.exception("model load failed")
            self._accepting = False
            self._settled.set()
            self._drain_with(NotReady(self.load_error))
            return
        self._ready.set()
        self._settled.set()
        log.info("model ready: %s", self.backend.spec.name)
        pending: list[Job] = []
        stopping = False
        while True:
            if pending:
                first = pending.pop(0)
            elif stopping:
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    return
            else:
                first = self._queue.get()
            if first is _STOP:
                stopping = True  # finish everything already queued, then end
                continue
            if first.kind != "plan":
                self._execute([first])
                continue
            batch, pending = self._gather(first, pending)
            self._execute(batch)

    def _gather(self, first: Job, pending: list[Job]) -> tuple[list[Job], list[Job]]:
        """Collect plan jobs with the same solver settings for up to max_wait; others wait in `pending`."""
        batch, rest = [first], []
        end = time.monotonic() + self.max_wait_s
        for job in pending:
            fits = job is not _STOP and _batch_key(job) == _batch_key(first)
            (batch if fits and len(batch) < self.max_batch else rest).append(job)
        while len(batch) < self.max_batch:
            remaining = end - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and _batch_key(job) == _batch_key(first):
                batch.append(job)
            else:
                rest.append(job)
                if job is _STOP:
                    break
        return batch, rest

    def _execute(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue  # the client's deadline already passed and it stopped waiting
            if now > job.deadline:
                job.future.set_exception(DeadlineExceeded())
                continue
            job.queue_ms = (now - job.enqueued) * 1000.0
            live.append(job)
        self._observe("depth", {"depth": self._queue.qsize()})
        if not live:
            return
        kind = live[0].kind
        t0 = time.perf_counter()
        try:
            results = self._call(kind, live)
        except Exception as e:  # delivered to each request's handler, which answers without a traceback
            if _is_oom(e):
                _free_device_memory()
                log.warning("device out of memory on a %s batch of %d; freed and continuing", kind, len(live))
                e = DeviceOutOfMemory(str(e))
            else:
                log.exception("%s batch of %d failed", kind, len(live))
            for job in live:
                job.future.set_exception(e)
            return
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        self._observe(
            "batch",
            {"kind": kind, "size": len(live), "ms": elapsed_ms, "queue_ms": [j.queue_ms for j in live]},
        )
        for job, result in zip(live, results, strict=True):
            job.future.set_result((result, job.queue_ms, elapsed_ms, len(live)))

    def _call(self, kind: str, jobs: list[Job]) -> list[Any]:
        backend = self.backend
        if kind == "plan":
            problems: list[PlanProblem] = [j.payload for j in jobs]
            return backend.plan(problems, jobs[0].params)
        if kind == "goals":
            image, proprio = jobs[0].payload
            return [backend.encode_goals(image[None], [proprio])[0]]
        if kind == "embed":
            return [backend.encode(jobs[0].payload[None])[0]]
        if kind == "rollout":
            return [backend.rollout(*jobs[0].payload)]
        if kind == "surprise":
            return [backend.surprise(*jobs[0].payload)]
        raise ValueError(f"unknown job kind {kind!r}")

    def _drain_with(self, error: Exception) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)


def _batch_key(job: Job) -> tuple | None:
    """Plan jobs batch together when solver settings and problem seed agree (so batched == alone)."""
    if job.kind != "plan":
        return None
    return (job.params, job.payload.seed)


def _is_oom(e: Exception) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
