"""Every custom Ray metric of bluepri, by name (dashboards/ and alerts use these names).

Metrics are `ray.util.metrics` objects, exported on each node's metrics endpoint. Ray 2.60
exports them through OpenTelemetry (`ray/_private/telemetry/open_telemetry_metric_recorder.py`
names the instrument `ray_<name>`, unit "1", which adds no unit suffix) and prometheus_client
adds the usual suffixes: a Counter `bluepri_x` is the series `ray_bluepri_x_total`, a Gauge is
`ray_bluepri_x`, a Histogram is `ray_bluepri_x_bucket` / `_sum` / `_count`
(`exported_series`). They are made once per process, on first use, inside the Ray worker
that records them; recorded outside Ray they go nowhere.

Label values are bounded: adapters appear as resolved `name@version` labels (or `none` for
the base model, `unresolved` before resolution), never as raw client input; a training run
is its run name and a worker its rank; a Tune experiment its name and a trial state one of
Tune's five; a render failure one of `RENDER_ERROR_CODES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from bluepri.artifacts import RENDER_ERROR_CODES

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
RAY_PREFIX = "ray_"

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

TRAIN_LOSS = "bluepri_train_loss"
TRAIN_VAL_LOSS = "bluepri_train_val_loss"
TRAIN_LEARNING_RATE = "bluepri_train_learning_rate"
TRAIN_SAMPLES_PER_SECOND = "bluepri_train_samples_per_second"
TRAIN_STEP_SECONDS = "bluepri_train_step_seconds"
TRAIN_STEPS = "bluepri_train_steps"

TRAIN_METRICS = (
    TRAIN_LOSS,
    TRAIN_VAL_LOSS,
    TRAIN_LEARNING_RATE,
    TRAIN_SAMPLES_PER_SECOND,
    TRAIN_STEP_SECONDS,
    TRAIN_STEPS,
)

TUNE_TRIALS = "bluepri_tune_trials"
TUNE_BEST_VAL_LOSS = "bluepri_tune_best_val_loss"

TUNE_METRICS = (TUNE_TRIALS, TUNE_BEST_VAL_LOSS)

RENDER_IMAGES = "bluepri_render_images"
RENDER_FAILURES = "bluepri_render_failures"
RENDER_IMAGE_SECONDS = "bluepri_render_image_seconds"

RENDER_METRICS = (RENDER_IMAGES, RENDER_FAILURES, RENDER_IMAGE_SECONDS)

SECONDS_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]
UNRESOLVED = "unresolved"
BASE_MODEL = "none"  # the adapter label of an image made by the base model alone
OTHER_REASON = "other"  # a failure code outside RENDER_ERROR_CODES (a bug, still counted)
# Tune's trial states (`ray.tune.experiment.trial.Trial`); every one is reported, zeros too.
TRIAL_STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")


@dataclass(frozen=True)
class MetricSpec:
    """One metric as Ray is told about it; `boundaries` only for histograms."""

    name: str
    kind: str
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


SPECS = (
    MetricSpec(
        SERVE_REQUESTS,
        COUNTER,
        "Generate requests answered, by adapter (name@version) and status.",
        ("adapter", "status"),
    ),
    MetricSpec(
        SERVE_STAGE_SECONDS,
        HISTOGRAM,
        "Seconds per stage of a generate request, as the ingress saw them.",
        ("stage",),
        tuple(SECONDS_BOUNDARIES),
    ),
    MetricSpec(
        SERVE_BATCH_SIZE,
        HISTOGRAM,
        "Requests per model batch (one adapter, size, schedule).",
        ("stage",),
        tuple(BATCH_BOUNDARIES),
    ),
    MetricSpec(
        SERVE_ADAPTER_LOADS,
        COUNTER,
        "LoRA adapters loaded into a Base replica's pipeline.",
        ("replica",),
    ),
    MetricSpec(
        SERVE_ADAPTER_EVICTIONS,
        COUNTER,
        "LoRA adapters unloaded to stay within max_adapters_per_replica.",
        ("replica",),
    ),
    MetricSpec(
        SERVE_ADAPTER_HITS,
        COUNTER,
        "Batches whose adapter was already loaded.",
        ("replica",),
    ),
    MetricSpec(
        SERVE_ADAPTERS_LOADED,
        GAUGE,
        "LoRA adapters held by a Base replica's pipeline now.",
        ("replica",),
    ),
    MetricSpec(
        SERVE_QUEUE_DEPTH,
        GAUGE,
        "Requests inside a replica (queued for a batch or running).",
        ("stage", "replica"),
    ),
    MetricSpec(
        TRAIN_LOSS,
        GAUGE,
        "Training loss of the last optimiser step (the mean over ranks).",
        ("run", "worker"),
    ),
    MetricSpec(
        TRAIN_VAL_LOSS,
        GAUGE,
        "Held-out validation loss at the last validation.",
        ("run",),
    ),
    MetricSpec(
        TRAIN_LEARNING_RATE,
        GAUGE,
        "Learning rate of the UNet's LoRA parameters after the last step.",
        ("run", "worker"),
    ),
    MetricSpec(
        TRAIN_SAMPLES_PER_SECOND,
        GAUGE,
        "This worker's training samples per second over its last step.",
        ("run", "worker"),
    ),
    MetricSpec(
        TRAIN_STEP_SECONDS,
        HISTOGRAM,
        "Seconds per optimiser step (data, forward, backward, all-reduce, update).",
        ("run", "worker"),
        tuple(SECONDS_BOUNDARIES),
    ),
    MetricSpec(
        TRAIN_STEPS,
        COUNTER,
        "Optimiser steps taken.",
        ("run", "worker"),
    ),
    MetricSpec(
        TUNE_TRIALS,
        GAUGE,
        "Trials of a search by Tune state.",
        ("experiment", "state"),
    ),
    MetricSpec(
        TUNE_BEST_VAL_LOSS,
        GAUGE,
        "Lowest validation loss any trial of the search has reported so far.",
        ("experiment",),
    ),
    MetricSpec(
        RENDER_IMAGES,
        COUNTER,
        "Catalogue images rendered and written, by adapter (name@version, or none).",
        ("adapter",),
    ),
    MetricSpec(
        RENDER_FAILURES,
        COUNTER,
        "Catalogue rows that failed, by reason (the manifest's error code).",
        ("reason",),
    ),
    MetricSpec(
        RENDER_IMAGE_SECONDS,
        HISTOGRAM,
        "Seconds of model and writer time per rendered image.",
        (),
        tuple(SECONDS_BOUNDARIES),
    ),
)

# name -> kind, for the dashboard checks: every one must be on a dashboard.
ALL_METRICS: dict[str, str] = {spec.name: spec.kind for spec in SPECS}


def exported_series(name: str) -> tuple[str, ...]:
    """The Prometheus series Ray's metrics endpoint exports for our metric `name`."""
    base = RAY_PREFIX + name
    suffixes = {COUNTER: ("_total",), GAUGE: ("",), HISTOGRAM: ("_bucket", "_sum", "_count")}
    return tuple(base + suffix for suffix in suffixes[ALL_METRICS[name]])


@cache
def ray_metric(name: str):
    """This process's Ray metric object for `name` (made on first use)."""
    from ray.util.metrics import Counter, Gauge, Histogram

    spec = next(spec for spec in SPECS if spec.name == name)
    if spec.kind == COUNTER:
        return Counter(spec.name, description=spec.description, tag_keys=spec.tags)
    if spec.kind == GAUGE:
        return Gauge(spec.name, description=spec.description, tag_keys=spec.tags)
    return Histogram(
        spec.name,
        description=spec.description,
        boundaries=list(spec.boundaries),
        tag_keys=spec.tags,
    )


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
    return ServeMetrics(
        requests=ray_metric(SERVE_REQUESTS),
        stage_seconds=ray_metric(SERVE_STAGE_SECONDS),
        batch_size=ray_metric(SERVE_BATCH_SIZE),
        adapter_loads=ray_metric(SERVE_ADAPTER_LOADS),
        adapter_evictions=ray_metric(SERVE_ADAPTER_EVICTIONS),
        adapter_hits=ray_metric(SERVE_ADAPTER_HITS),
        adapters_loaded=ray_metric(SERVE_ADAPTERS_LOADED),
        queue_depth=ray_metric(SERVE_QUEUE_DEPTH),
    )


@dataclass(frozen=True)
class TrainMetrics:
    """One Ray Train worker's metrics, tagged with its run and rank.

    The run is the train stage's run name. Every Tune trial names its run `train` (in its
    own folder), so a search's concurrent trials share that label.
    """

    run: str
    worker: str

    def step(self, loss: float, lr: float, samples: int, seconds: float) -> None:
        """One optimiser step: its (rank-averaged) loss, learning rate, and this worker's
        samples and seconds."""
        tags = {"run": self.run, "worker": self.worker}
        ray_metric(TRAIN_LOSS).set(loss, tags=tags)
        ray_metric(TRAIN_LEARNING_RATE).set(lr, tags=tags)
        if seconds > 0:
            ray_metric(TRAIN_SAMPLES_PER_SECOND).set(samples / seconds, tags=tags)
        ray_metric(TRAIN_STEP_SECONDS).observe(seconds, tags=tags)
        ray_metric(TRAIN_STEPS).inc(1, tags=tags)

    def validation(self, val_loss: float) -> None:
        ray_metric(TRAIN_VAL_LOSS).set(val_loss, tags={"run": self.run})


def train_metrics(run: str, rank: int) -> TrainMetrics:
    return TrainMetrics(run=run, worker=str(rank))


@dataclass(frozen=True)
class TuneMetrics:
    """A search's metrics, recorded by the Tune driver (see tune/metrics.py)."""

    experiment: str

    def trials(self, counts: dict[str, int]) -> None:
        for state, count in counts.items():
            ray_metric(TUNE_TRIALS).set(count, tags={"experiment": self.experiment, "state": state})

    def best(self, val_loss: float) -> None:
        ray_metric(TUNE_BEST_VAL_LOSS).set(val_loss, tags={"experiment": self.experiment})


def failure_reason(code: object) -> str:
    """A failed row's reason label: its error code, or `other` for one we never defined."""
    return code if isinstance(code, str) and code in RENDER_ERROR_CODES else OTHER_REASON


def count_rendered(adapter: str | None, seconds: float | None) -> None:
    """One catalogue image written (counted where its row's status is final: the writer)."""
    ray_metric(RENDER_IMAGES).inc(1, tags={"adapter": adapter or BASE_MODEL})
    if seconds is not None:
        ray_metric(RENDER_IMAGE_SECONDS).observe(seconds)


def count_failed(code: object, rows: int = 1) -> None:
    """`rows` catalogue rows failed with error code `code`."""
    if rows:  # Ray's Counter refuses an increment of 0
        ray_metric(RENDER_FAILURES).inc(rows, tags={"reason": failure_reason(code)})
