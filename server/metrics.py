"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ENERGY_BUCKETS = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


class Metrics:
    """Request counts and latency by route and status, batch sizes, queue depth, queue/plan time, energy."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, ...
        r = self.registry
        self.requests = Counter(
            "planner_requests_total", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "planner_request_seconds",
            "HTTP request latency by route and status",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "planner_batch_size",
            "Requests merged into one model call",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("planner_queue_depth", "Requests waiting for the model worker", registry=r)
        self.queue_seconds = Histogram(
            "planner_queue_seconds", "Time a request waited in the queue", buckets=LATENCY_BUCKETS, registry=r
        )
        self.model_seconds = Histogram(
            "planner_model_seconds",
            "Time of one batched model call",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.energy = Histogram(
            "planner_plan_energy", "Energy of returned plans", buckets=ENERGY_BUCKETS, registry=r
        )
        self.ready = Gauge("planner_ready", "1 when the model is loaded and warmed up", registry=r)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route, str(status)).observe(seconds)

    def observe_worker(self, event: str, data: dict) -> None:
        """ModelWorker event callback (runs on the worker thread; prometheus_client is thread-safe)."""
        if event == "depth":
            self.queue_depth.set(data["depth"])
        elif event == "batch":
            self.batch_size.labels(data["kind"]).observe(data["size"])
            self.model_seconds.labels(data["kind"]).observe(data["ms"] / 1000.0)
            for q in data["queue_ms"]:
                self.queue_seconds.observe(q / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
