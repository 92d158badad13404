"""Prometheus metrics: `facevoice_` prefix, base units (seconds, bytes), `_total` counters.

One registry per server instance, so several servers in one process (tests) do not collide."""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("facevoice_requests", "RPCs answered, by method and gRPC status code",
                                ["method", "code"], registry=r)
        self.latency = Histogram("facevoice_request_duration_seconds", "Whole-RPC latency", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("facevoice_stage_duration_seconds", "Latency of one stage of an RPC",
                               ["method", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("facevoice_embed_batch_size", "Items per network call", ["network"],
                               buckets=BATCH_BUCKETS, registry=r)
        self.runner_batch = Histogram("facevoice_runner_batch_rows",
                                      "Rows per onnxruntime call of the embedded runner's dynamic batcher",
                                      ["network"], buckets=BATCH_BUCKETS, registry=r)
        self.index_items = Gauge("facevoice_index_items", "Items in the served index", ["index"], registry=r)
        self.index_info = Gauge("facevoice_index_info", "The served index version (value 1)",
                                ["index", "version", "model_version", "kind"], registry=r)
        self.index_built = Gauge("facevoice_index_built_timestamp_seconds", "When the served index was built",
                                 ["index"], registry=r)
        self.index_swaps = Counter("facevoice_index_swaps", "Index version changes, by result",
                                   ["index", "result"], registry=r)
        self.cache_hits = Counter("facevoice_cache_hits", "Cache hits", ["cache"], registry=r)
        self.cache_misses = Counter("facevoice_cache_misses", "Cache misses", ["cache"], registry=r)
        self.cache_bypassed = Counter("facevoice_cache_bypassed", "Cache look-ups skipped: Redis unreachable",
                                      ["cache"], registry=r)
        self.dependency_errors = Counter("facevoice_dependency_errors", "Failed calls to a dependency",
                                         ["dependency"], registry=r)
        self.overlay_items = Gauge("facevoice_index_overlay_items",
                                   "Item ids edited live since the served version was built", ["index"], registry=r)
        self.log_appends = Counter("facevoice_gallery_log_appends", "Gallery writes appended to the write log",
                                   ["op"], registry=r)
        self.log_damaged = Gauge("facevoice_gallery_log_damaged",
                                 "1 while this replica finds the gallery log damaged (writes stopped)", registry=r)
        self.log_lag_entries = Gauge("facevoice_gallery_log_lag_entries",
                                     "Log entries this replica has not applied (counted up to 10,000)", registry=r)
        self.log_lag_seconds = Gauge("facevoice_gallery_log_lag_seconds",
                                     "How long this replica has been without some entry of the log", registry=r)
        self.rejected = Counter("facevoice_rejected", "RPCs refused before running, by reason",
                                ["method", "reason"], registry=r)
        self.in_flight = Gauge("facevoice_rpcs_in_flight", "FaceVoice RPCs accepted and not yet answered",
                               registry=r)
        self.up = Gauge("facevoice_dependency_up", "1 when the dependency answered its last call",
                        ["dependency"], registry=r)

    @contextmanager
    def timed(self, method: str, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(method, stage).observe(time.perf_counter() - start)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """The /metrics HTTP endpoint; returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)
