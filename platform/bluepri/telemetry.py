"""Every custom Ray metric of bluepri, by name (dashboards/ and alerts use these names).

Metrics are `ray.util.metrics` objects, exported on each node's metrics endpoint (Ray puts
`ray_` in front of every name, and Prometheus `_total`, `_bucket`, ... behind). They are made
once per process, on first use, inside the Ray worker that records them.

Label values are bounded: adapters appear as resolved `name@version` labels (or `none` for
the base model, `unresolved` before resolution), never as raw client input.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

SERVE_REQUESTS = "bluepri_serve_requests"
SERVE_STAGE_SECONDS = "bluepri_serve_stage_seconds"
SERVE_BATCH_SIZE = "bluepri_serve_batch_size"
SERVE_ADAPTER_LOADS = "bluepri_serve_adapter_loads"
SERVE_ADAPTER_EVICTIONS = "bluepri_serve_adapter_evictions"
SERVE_ADAPTER_HITS = "bluepri_serve_adapter_hits"
SERVE_ADAPTERS_LOADED = "bluepri_serve_adapters_loaded"
SERVE_QUEUE_DEPTH = "bluepri_serve_queue_depth"

SERVE_METRICS = (
    SERVE_REQUESTS,
    SERVE_STAGE_SECONDS,
    SERVE_BATCH_SIZE,
    SERVE_ADAPTER_LOADS,
    SERVE_ADAPTER_EVICTIONS,
    SERVE_ADAPTER_HITS,
    SERVE_ADAPTERS_LOADED,
    SERVE_QUEUE_DEPTH,
)

SECONDS_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]
UNRESOLVED = "unresolved"


@dataclass(frozen=True)
class ServeMetrics:
    """The Serve application's metrics; stage is `base`, `refiner` or `total`."""

    requests: object  # Counter{adapter, status}
    stage_seconds: object  # Histogram{stage}
    batch_size: object  # Histogram{stage}
    adapter_loads: object  # Counter{replica}
    adapter_evictions: object  # Counter{replica}
    adapter_hits: object  # Counter{replica}
    adapters_loaded: object  # Gauge{replica}: adapters held by the replica's pipeline
    queue_depth: object  # Gauge{stage, replica}: requests in the replica, not yet answered

    def request(self, adapter: str, status: int) -> None:
        self.requests.inc(1, tags={"adapter": adapter, "status": str(status)})

    def seconds(self, stage: str, seconds: float) -> None:
        self.stage_seconds.observe(seconds, tags={"stage": stage})

    def batch(self, stage: str, size: int) -> None:
        self.batch_size.observe(size, tags={"stage": stage})

    def adapter_cache(
        self, replica: str, loads: int, evictions: int, hits: int, loaded: int
    ) -> None:
        """Counter increments since the last call, and the current number held."""
        tags = {"replica": replica}
        for counter, value in (
            (self.adapter_loads, loads),
            (self.adapter_evictions, evictions),
            (self.adapter_hits, hits),
        ):
            if value:
                counter.inc(value, tags=tags)
        self.adapters_loaded.set(loaded, tags=tags)

    def queue(self, stage: str, replica: str, depth: int) -> None:
        self.queue_depth.set(depth, tags={"stage": stage, "replica": replica})


@cache
def serve_metrics() -> ServeMetrics:
    """This process's Serve metrics (made on first use, inside a Ray worker)."""
    from ray.util.metrics import Counter, Gauge, Histogram

    return ServeMetrics(
        requests=Counter(
            SERVE_REQUESTS,
            description="Generate requests answered, by adapter (name@version) and status.",
            tag_keys=("adapter", "status"),
        ),
        stage_seconds=Histogram(
            SERVE_STAGE_SECONDS,
            description="Seconds per stage of a generate request, as the ingress saw them.",
            boundaries=SECONDS_BOUNDARIES,
            tag_keys=("stage",),
        ),
        batch_size=Histogram(
            SERVE_BATCH_SIZE,
            description="Requests per model batch (one adapter, size, schedule).",
            boundaries=BATCH_BOUNDARIES,
            tag_keys=("stage",),
        ),
        adapter_loads=Counter(
            SERVE_ADAPTER_LOADS,
            description="LoRA adapters loaded into a Base replica's pipeline.",
            tag_keys=("replica",),
        ),
        adapter_evictions=Counter(
            SERVE_ADAPTER_EVICTIONS,
            description="LoRA adapters unloaded to stay within max_adapters_per_replica.",
            tag_keys=("replica",),
        ),
        adapter_hits=Counter(
            SERVE_ADAPTER_HITS,
            description="Batches whose adapter was already loaded.",
            tag_keys=("replica",),
        ),
        adapters_loaded=Gauge(
            SERVE_ADAPTERS_LOADED,
            description="LoRA adapters held by a Base replica's pipeline now.",
            tag_keys=("replica",),
        ),
        queue_depth=Gauge(
            SERVE_QUEUE_DEPTH,
            description="Requests inside a replica (queued for a batch or running).",
            tag_keys=("stage", "replica"),
        ),
    )
