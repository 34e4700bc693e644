"""The Grafana dashboards (training, tuning, serving, rendering) as data, the JSON Grafana
imports, and the Prometheus config that scrapes every Ray node.

Each panel is a title, a unit and its queries (PromQL, legend, and, for a query that a
healthy run may leave empty, when that is). `dashboards/generate.py` writes the JSON files
and `prometheus.yml` from here; `promql.check_dashboards` checks what it wrote. Queries read
telemetry's metrics under their exported names and Ray's own series (`promql.RAY_SERIES`);
rates use Grafana's `$__rate_interval` and nothing else is a variable, so a test can run
every query as it stands (`promql.concrete`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parents[3] / "dashboards"
# Where Ray writes the Prometheus file_sd targets of the cluster's nodes: the session
# folder, with this link kept in Ray's temp dir (ray/_private/metrics_agent.py,
# PrometheusServiceDiscoveryWriter; the name is ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE).
RAY_SERVICE_DISCOVERY_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
SCRAPE_INTERVAL = "5s"
PROMETHEUS_YML = "prometheus.yml"
SCHEMA_VERSION = 39
RATE = "[$__rate_interval]"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    empty_when: str | None = None  # why a healthy, busy stage may show no series here


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat": one number, 6 columns wide
    stacked: bool = False


@dataclass(frozen=True)
class Dashboard:
    name: str  # the file's stem
    title: str
    description: str
    panels: tuple[Panel, ...]

    @property
    def uid(self) -> str:
        return f"bluepri-{self.name}"


# -- PromQL shapes every dashboard uses ------------------------------------------------------


def per_second(series: str, by: str, where: str = "") -> str:
    """The summed per-second rate of a counter (or of a gauge that only grows)."""
    selector = f"{series}{{{where}}}" if where else series
    return f"sum by ({by}) (rate({selector}{RATE}))"


def quantile(q: float, histogram: str, by: str = "", where: str = "") -> str:
    """The q-quantile of a histogram of ours or Ray's (`histogram` without `_bucket`)."""
    selector = f"{histogram}_bucket{{{where}}}" if where else f"{histogram}_bucket"
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({selector}{RATE})))"


def mean(histogram: str, by: str = "") -> str:
    """A histogram's mean observation over the rate window."""
    total = f"sum by ({by}) " if by else "sum"
    return f"{total}(rate({histogram}_sum{RATE})) / {total}(rate({histogram}_count{RATE}))"


NO_GPUS = "the cluster has no GPUs"

CPU_PER_NODE = Panel(
    "CPU utilization per node",
    "Ray's reporter agent on each node (ray_node_cpu_utilization).",
    (Query("avg by (instance) (ray_node_cpu_utilization)", "{{instance}}"),),
    unit="percent",
)

TRAINING = Dashboard(
    "training",
    "bluepri / training",
    "LoRA fine-tuning on Ray Train: per-worker loss, learning rate, throughput and step "
    "time (bluepri_train_*), with Ray Train's run state and the nodes' CPUs and GPUs.",
    (
        Panel(
            "Workers training",
            "Ray Train workers that reported a step (one series per run and rank).",
            (Query("count(ray_bluepri_train_loss)", "workers"),),
            kind="stat",
        ),
        Panel(
            "Steps/s",
            "Optimiser steps per second of all runs (every worker takes every step).",
            (
                Query(
                    "sum(avg by (run) (rate(ray_bluepri_train_steps_total" + RATE + ")))", "steps/s"
                ),
            ),
            kind="stat",
        ),
        Panel(
            "Samples/s",
            "Training samples per second of all workers.",
            (Query("sum(ray_bluepri_train_samples_per_second)", "samples/s"),),
            kind="stat",
        ),
        Panel(
            "Best validation loss",
            "The lowest held-out loss of any run now training.",
            (
                Query(
                    "min(ray_bluepri_train_val_loss)",
                    "val loss",
                    "no validation yet (one per validation_epochs)",
                ),
            ),
            unit="none",
            kind="stat",
        ),
        Panel(
            "Training loss per worker",
            "Loss of the last optimiser step (the all-reduced mean, so ranks agree).",
            (
                Query(
                    "avg by (run, worker) (ray_bluepri_train_loss)",
                    "{{run}} rank {{worker}}",
                ),
            ),
            unit="none",
        ),
        Panel(
            "Validation loss per run",
            "Held-out loss at each validation, from rank 0.",
            (
                Query(
                    "avg by (run) (ray_bluepri_train_val_loss)",
                    "{{run}}",
                    "no validation yet (one per validation_epochs)",
                ),
            ),
            unit="none",
        ),
        Panel(
            "Learning rate per worker",
            "The UNet LoRA parameters' learning rate after each step (the scheduler's).",
            (
                Query(
                    "avg by (run, worker) (ray_bluepri_train_learning_rate)",
                    "{{run}} rank {{worker}}",
                ),
            ),
            unit="sci",
        ),
        Panel(
            "Samples/s per worker",
            "Each worker's samples over its last step's seconds, and their sum per run.",
            (
                Query(
                    "sum by (run, worker) (ray_bluepri_train_samples_per_second)",
                    "{{run}} rank {{worker}}",
                ),
                Query("sum by (run) (ray_bluepri_train_samples_per_second)", "{{run}} all"),
            ),
        ),
        Panel(
            "Step time per worker",
            "Seconds per optimiser step (data, forward, backward, all-reduce, update): "
            "mean and p95 over the rate window.",
            (
                Query(
                    mean("ray_bluepri_train_step_seconds", "run, worker"),
                    "{{run}} rank {{worker}} mean",
                ),
                Query(
                    quantile(0.95, "ray_bluepri_train_step_seconds", "run, worker"),
                    "{{run}} rank {{worker}} p95",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Steps/s per worker",
            "Optimiser steps per second (a stalled worker shows here first).",
            (
                Query(
                    per_second("ray_bluepri_train_steps_total", "run, worker"),
                    "{{run}} rank {{worker}}",
                ),
            ),
        ),
        Panel(
            "Ray Train run state",
            "The Train controller's state of each run (Ray Train's own metric).",
            (
                Query(
                    "max by (ray_train_run_name, ray_train_controller_state) "
                    "(ray_train_controller_state) > 0",
                    "{{ray_train_run_name}} {{ray_train_controller_state}}",
                ),
            ),
            unit="none",
        ),
        Panel(
            "Time in ray.train.report per worker",
            "Cumulative seconds each worker spent reporting (checkpoint upload included).",
            (
                Query(
                    "max by (ray_train_run_name, ray_train_worker_world_rank) "
                    "(ray_train_report_total_blocked_time_s)",
                    "{{ray_train_run_name}} rank {{ray_train_worker_world_rank}}",
                    "no worker has reported yet (a checkpoint or a validation)",
                ),
            ),
            unit="s",
        ),
        CPU_PER_NODE,
        Panel(
            "GPU utilization per GPU",
            "Ray's reporter agent (ray_node_gpus_utilization).",
            (
                Query(
                    "avg by (instance, GpuIndex) (ray_node_gpus_utilization)",
                    "{{instance}} GPU {{GpuIndex}}",
                    NO_GPUS,
                ),
            ),
            unit="percent",
        ),
        Panel(
            "GPU memory used per GPU",
            "Ray's reporter agent (ray_node_gram_used, in MiB).",
            (
                Query(
                    "sum by (instance, GpuIndex) (ray_node_gram_used)",
                    "{{instance}} GPU {{GpuIndex}}",
                    NO_GPUS,
                ),
            ),
            unit="mbytes",
        ),
    ),
)

TUNING = Dashboard(
    "tuning",
    "bluepri / tuning",
    "Hyperparameter search on Ray Tune: trials by state and the best validation loss so far "
    "(bluepri_tune_*, from the search's driver), the trials' Ray Train runs, the cluster's CPUs.",
    (
        Panel(
            "Trials running",
            "Trials of all searches now running.",
            (Query('sum(ray_bluepri_tune_trials{state="RUNNING"})', "running"),),
            kind="stat",
        ),
        Panel(
            "Trials finished",
            "Trials that ran to their end or were stopped early by ASHA.",
            (Query('sum(ray_bluepri_tune_trials{state="TERMINATED"})', "finished"),),
            kind="stat",
        ),
        Panel(
            "Trials failed",
            "Trials that ended in an error (after their retry).",
            (Query('sum(ray_bluepri_tune_trials{state="ERROR"})', "failed"),),
            kind="stat",
        ),
        Panel(
            "Best validation loss",
            "The lowest validation loss any trial has reported.",
            (
                Query(
                    "min(ray_bluepri_tune_best_val_loss)",
                    "best",
                    "no trial has reported a validation yet",
                ),
            ),
            unit="none",
            kind="stat",
        ),
        Panel(
            "Trials by state",
            "Tune's trial states (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) per search.",
            (
                Query(
                    "max by (experiment, state) (ray_bluepri_tune_trials)",
                    "{{experiment}} {{state}}",
                ),
            ),
            stacked=True,
        ),
        Panel(
            "Best validation loss over time",
            "The lowest validation loss reported so far, per search.",
            (
                Query(
                    "min by (experiment) (ray_bluepri_tune_best_val_loss)",
                    "{{experiment}}",
                    "no trial has reported a validation yet",
                ),
            ),
            unit="none",
        ),
        Panel(
            "Trial training runs by Ray Train state",
            "Each trial trains on Ray Train: its runs counted by controller state.",
            (
                Query(
                    "sum by (ray_train_controller_state) (ray_train_controller_state) > 0",
                    "{{ray_train_controller_state}}",
                ),
            ),
            stacked=True,
        ),
        Panel(
            "CPUs in use",
            "Logical CPUs the trials' drivers and workers hold, against the cluster's.",
            (
                Query('sum(ray_resources{Name="CPU",State="USED"})', "in use"),
                Query('sum(ray_resources{Name="CPU"})', "cluster"),
            ),
        ),
        CPU_PER_NODE,
    ),
)

NO_ERRORS = "no request failed"
SERVING = Dashboard(
    "serving",
    "bluepri / serving",
    "The generate service on Ray Serve: requests by adapter and status, latency per stage, "
    "batching, queues, replicas and the adapter cache (bluepri_serve_*), beside Ray "
    "Serve's own HTTP, replica and router series.",
    (
        Panel(
            "Requests/s",
            "Generate requests answered per second, all adapters and statuses.",
            (Query("sum(rate(ray_bluepri_serve_requests_total" + RATE + "))", "requests/s"),),
            unit="reqps",
            kind="stat",
        ),
        Panel(
            "Error ratio",
            "Share of generate requests answered with a status other than 2xx.",
            (
                Query(
                    '(sum(rate(ray_bluepri_serve_requests_total{status!~"2.."}' + RATE + "))"
                    " or vector(0)) / sum(rate(ray_bluepri_serve_requests_total" + RATE + "))",
                    "errors",
                ),
            ),
            unit="percentunit",
            kind="stat",
        ),
        Panel(
            "p95 latency",
            "95th percentile of a whole generate request, as the ingress saw it.",
            (
                Query(
                    quantile(0.95, "ray_bluepri_serve_stage_seconds", where='stage="total"'),
                    "p95",
                ),
            ),
            unit="s",
            kind="stat",
        ),
        Panel(
            "Healthy replicas",
            "Replicas of every deployment that pass their health check (Ray Serve).",
            (Query("sum(ray_serve_deployment_replica_healthy)", "replicas"),),
            kind="stat",
        ),
        Panel(
            "Requests/s by adapter and status",
            "Generate requests answered, by adapter (name@version, none, unresolved) and "
            "HTTP status.",
            (
                Query(
                    per_second("ray_bluepri_serve_requests_total", "adapter, status"),
                    "{{adapter}} {{status}}",
                ),
            ),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "Errors/s by adapter and status",
            "Generate requests answered with a status other than 2xx.",
            (
                Query(
                    per_second(
                        "ray_bluepri_serve_requests_total", "adapter, status", 'status!~"2.."'
                    ),
                    "{{adapter}} {{status}}",
                    NO_ERRORS,
                ),
            ),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "Ray Serve HTTP requests/s",
            "Every HTTP request through Serve's proxy, by route and status code, and its "
            "errors by code (Ray Serve's own series; health checks left out).",
            (
                Query(
                    per_second(
                        "ray_serve_num_http_requests_total",
                        "application, route, status_code",
                        'route!~"/-/.*"',
                    ),
                    "{{route}} {{status_code}}",
                ),
                Query(
                    per_second(
                        "ray_serve_num_http_error_requests_total", "application, route, error_code"
                    ),
                    "{{route}} error {{error_code}}",
                    NO_ERRORS,
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Latency per stage",
            "Seconds per stage of a generate request as the ingress saw it (base, refiner, "
            "total): p50 and p95.",
            (
                Query(quantile(0.5, "ray_bluepri_serve_stage_seconds", "stage"), "{{stage}} p50"),
                Query(quantile(0.95, "ray_bluepri_serve_stage_seconds", "stage"), "{{stage}} p95"),
            ),
            unit="s",
        ),
        Panel(
            "Ray Serve latency p95",
            "End to end at the HTTP proxy, and inside each deployment's replicas (Ray Serve).",
            (
                Query(
                    quantile(
                        0.95,
                        "ray_serve_http_request_latency_ms",
                        "application",
                        'route!~"/-/.*"',
                    ),
                    "HTTP {{application}}",
                ),
                Query(
                    quantile(0.95, "ray_serve_deployment_processing_latency_ms", "deployment"),
                    "{{deployment}}",
                ),
            ),
            unit="ms",
        ),
        Panel(
            "Batch size per stage",
            "Requests per model batch (one adapter, size and schedule): mean and p95.",
            (
                Query(mean("ray_bluepri_serve_batch_size", "stage"), "{{stage}} mean"),
                Query(quantile(0.95, "ray_bluepri_serve_batch_size", "stage"), "{{stage}} p95"),
            ),
        ),
        Panel(
            "Queue depth",
            "Requests inside each Base and Refiner replica (waiting for a batch or running), "
            "and Ray Serve's: waiting in a router for a replica, and being processed.",
            (
                Query(
                    "sum by (stage, replica) (ray_bluepri_serve_queue_depth)",
                    "{{stage}} {{replica}}",
                ),
                Query(
                    "sum by (deployment) (ray_serve_deployment_queued_queries)",
                    "{{deployment}} waiting for a replica",
                ),
                Query(
                    "sum by (deployment) (ray_serve_replica_processing_queries)",
                    "{{deployment}} processing",
                ),
            ),
        ),
        Panel(
            "Replicas per deployment",
            "Healthy replicas of each deployment (Ray Serve's health checks).",
            (
                Query(
                    "sum by (application, deployment) (ray_serve_deployment_replica_healthy)",
                    "{{application}} {{deployment}}",
                ),
            ),
        ),
        Panel(
            "Adapter cache: loads, hits, evictions",
            "Per second, per Base replica: adapters loaded into the pipeline, batches whose "
            "adapter was already there, adapters unloaded to stay within the cap.",
            (
                Query(
                    per_second("ray_bluepri_serve_adapter_loads_total", "replica"),
                    "loads {{replica}}",
                    "no request named an adapter",
                ),
                Query(
                    per_second("ray_bluepri_serve_adapter_hits_total", "replica"),
                    "hits {{replica}}",
                    "no adapter was asked for twice",
                ),
                Query(
                    per_second("ray_bluepri_serve_adapter_evictions_total", "replica"),
                    "evictions {{replica}}",
                    "no replica needed more adapters than max_adapters_per_replica",
                ),
            ),
        ),
        Panel(
            "Adapters held per replica",
            "LoRA adapters in each Base replica's pipeline, and the models Ray Serve's "
            "multiplexing counts there.",
            (
                Query("sum by (replica) (ray_bluepri_serve_adapters_loaded)", "{{replica}}"),
                Query(
                    "sum by (deployment, replica) (ray_serve_num_multiplexed_models)",
                    "Serve: {{replica}}",
                ),
            ),
        ),
    ),
)

RENDERING = Dashboard(
    "rendering",
    "bluepri / rendering",
    "Catalogue rendering on Ray Data: images written per second, failed rows by reason, "
    "seconds per image (bluepri_render_*), with Ray Data's per-operator rows and tasks.",
    (
        Panel(
            "Images/s",
            "Catalogue images written per second, all adapters.",
            (Query("sum(rate(ray_bluepri_render_images_total" + RATE + "))", "images/s"),),
            kind="stat",
        ),
        Panel(
            "Rows failed/s",
            "Catalogue rows failed per second, all reasons (0 when none).",
            (
                Query(
                    "sum(rate(ray_bluepri_render_failures_total" + RATE + ")) or vector(0)",
                    "failed/s",
                ),
            ),
            kind="stat",
        ),
        Panel(
            "p95 seconds per image",
            "95th percentile of model and writer seconds per image.",
            (Query(quantile(0.95, "ray_bluepri_render_image_seconds"), "p95"),),
            unit="s",
            kind="stat",
        ),
        Panel(
            "Ray Data tasks running",
            "Tasks of every operator of the running datasets (Ray Data).",
            (Query("sum(ray_data_num_tasks_running)", "tasks"),),
            kind="stat",
        ),
        Panel(
            "Images/s by adapter",
            "Catalogue images written per second, by adapter (name@version, or none).",
            (Query(per_second("ray_bluepri_render_images_total", "adapter"), "{{adapter}}"),),
            stacked=True,
        ),
        Panel(
            "Failed rows/s by reason",
            "Rows that failed, by the manifest's error code (render_error, write_error, the "
            "plan's checks: bad_size, unknown_adapter, ...).",
            (
                Query(
                    per_second("ray_bluepri_render_failures_total", "reason"),
                    "{{reason}}",
                    "no row failed",
                ),
            ),
            stacked=True,
        ),
        Panel(
            "Seconds per image",
            "Model (base, refiner) and writer seconds per image: mean, p50, p95.",
            (
                Query(mean("ray_bluepri_render_image_seconds"), "mean"),
                Query(quantile(0.5, "ray_bluepri_render_image_seconds"), "p50"),
                Query(quantile(0.95, "ray_bluepri_render_image_seconds"), "p95"),
            ),
            unit="s",
        ),
        Panel(
            "Ray Data rows out/s per operator",
            "Rows each operator of the render pipeline emits per second (Ray Data's own).",
            (Query(per_second("ray_data_output_rows", "dataset, operator"), "{{operator}}"),),
        ),
        Panel(
            "Ray Data tasks per operator",
            "Tasks running and failed per operator (Ray Data's own).",
            (
                Query("sum by (operator) (ray_data_num_tasks_running)", "{{operator}} running"),
                Query("sum by (operator) (ray_data_num_tasks_failed)", "{{operator}} failed"),
            ),
        ),
        CPU_PER_NODE,
    ),
)

DASHBOARDS = (TRAINING, TUNING, SERVING, RENDERING)


# -- Grafana JSON ----------------------------------------------------------------------------

TIMESERIES_SIZE = (12, 8)  # grid columns (of 24) and rows
STAT_SIZE = (6, 4)


def layout(panels: tuple[Panel, ...]) -> list[dict[str, int]]:
    """Grafana gridPos for each panel: left to right, a new row when the next does not fit."""
    positions, x, y, row_height = [], 0, 0, 0
    for panel in panels:
        w, h = STAT_SIZE if panel.kind == "stat" else TIMESERIES_SIZE
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        positions.append({"h": h, "w": w, "x": x, "y": y})
        x, row_height = x + w, max(row_height, h)
    return positions


def ref_id(index: int) -> str:
    """Grafana's name for a panel's index-th query: A, B, ..."""
    return chr(ord("A") + index)


def grafana_target(query: Query, ref: str) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend,
        "range": True,
        "refId": ref,
    }


def grafana_panel(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    if panel.kind == "stat":
        custom: dict[str, Any] = {}
        options: dict[str, Any] = {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    else:
        custom = {
            "drawStyle": "line",
            "fillOpacity": 20 if panel.stacked else 0,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if panel.stacked else "none"},
        }
        options = {
            "legend": {
                "calcs": [],
                "displayMode": "list",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": {"custom": custom, "unit": panel.unit}, "overrides": []},
        "gridPos": grid,
        "id": panel_id,
        "options": options,
        "targets": [grafana_target(query, ref_id(i)) for i, query in enumerate(panel.queries)],
        "title": panel.title,
        "type": panel.kind,
    }


def grafana_dashboard(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (import it, or provision it from a folder)."""
    panels = [
        grafana_panel(panel, i + 1, grid)
        for i, (panel, grid) in enumerate(
            zip(dashboard.panels, layout(dashboard.panels), strict=True)
        )
    ]
    return {
        "annotations": {"list": []},
        "description": dashboard.description,
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": panels,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["bluepri", "ray"],
        "templating": {
            "list": [
                {
                    "current": {},
                    "hide": 0,
                    "label": "Prometheus",
                    "name": "datasource",
                    "options": [],
                    "query": "prometheus",
                    "refresh": 1,
                    "regex": "",
                    "type": "datasource",
                }
            ]
        },
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": dashboard.title,
        "uid": dashboard.uid,
        "version": 1,
    }


def prometheus_config(service_discovery_file: str = RAY_SERVICE_DISCOVERY_FILE) -> str:
    """A Prometheus config that scrapes every node of the Ray cluster whose service-discovery
    file is `service_discovery_file` (Ray rewrites it as nodes come and go)."""
    return f"""# Generated by dashboards/generate.py from bluepri.ops.dashboards: edit it there.
# Scrapes every Ray node's metrics endpoint, as listed in the service-discovery file
# that Ray's head node keeps up to date (the link in Ray's temp dir names the session's).
global:
  scrape_interval: {SCRAPE_INTERVAL}
  evaluation_interval: {SCRAPE_INTERVAL}

scrape_configs:
  - job_name: ray
    file_sd_configs:
      - files:
          - {service_discovery_file}
        # Ray replaces the file inside the session folder, behind the link, which a
        # watch on the link's folder does not see: read it again this often.
        refresh_interval: {SCRAPE_INTERVAL}
"""


def generated_files() -> dict[str, str]:
    """Every file `dashboards/generate.py` writes: name -> text."""
    files = {
        f"{d.name}.json": json.dumps(grafana_dashboard(d), indent=2) + "\n" for d in DASHBOARDS
    }
    files[PROMETHEUS_YML] = prometheus_config()
    return files


def stale_files(folder: Path, files: dict[str, str]) -> list[str]:
    """Names in `folder` that differ from `files` (or are missing), and dashboard JSON there
    that nothing generates any more."""
    stale = [
        name
        for name, text in files.items()
        if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text
    ]
    stale += sorted(p.name for p in folder.glob("*.json") if p.name not in files)
    return stale


def queries_empty_when() -> dict[tuple[str, str, str], str]:
    """(dashboard, panel title, refId) -> when that query may rightly return no series,
    for the queries a busy, healthy stage can leave empty (errors, evictions, GPUs...)."""
    return {
        (d.name, p.title, ref_id(i)): q.empty_when
        for d in DASHBOARDS
        for p in d.panels
        for i, q in enumerate(p.queries)
        if q.empty_when
    }
