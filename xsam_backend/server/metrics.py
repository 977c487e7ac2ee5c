"""Prometheus metrics of one app instance (its own registry: no global state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """Counters and histograms exposed at ``/metrics``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "xsam_http_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "xsam_http_request_seconds",
            "HTTP request time by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 100),
            registry=self.registry,
        )
        self.tasks = Counter(
            "xsam_predict_tasks", "Tasks predicted by kind and outcome", ["kind", "outcome"], registry=self.registry
        )
        self.regions = Counter("xsam_predict_regions", "Regions returned to Label Studio", registry=self.registry)
        self.info = Gauge(
            "xsam_backend_info", "Serving engine, model version and dispatcher", ["engine", "model_version", "dispatcher"],
            registry=self.registry,
        )
