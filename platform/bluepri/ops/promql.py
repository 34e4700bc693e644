"""PromQL as the dashboards use it: which metrics an expression reads, and the checks that
every dashboard query reads a metric that exists and every metric of ours is on a dashboard.

A metric exists when it is one of telemetry's, under the name Ray's metrics endpoint
exports it (`telemetry.exported_series`), or one of Ray's own series in `RAY_SERIES`, each
noted with where Ray 2.60 defines it. The extractor is not a PromQL parser: it strips what
cannot name a metric (strings, label matchers and lists, ranges, offsets, numbers, keywords,
function names) and what is left are the metric names. Whether Prometheus accepts a query
is for Prometheus to say (the integration test sends every query to a real one); the checks
here catch the slips a review misses: a misspelt or unexported name, a label our metric
does not have, a typo in a function, unbalanced brackets, a Grafana variable no one
substitutes.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bluepri.telemetry import ALL_METRICS, SPECS, exported_series

SPECS_BY_NAME = {spec.name: spec for spec in SPECS}

_CORE = "Ray core (C++ src/ray/stats/metric_defs.cc), as queried by "
_CORE += "ray/dashboard/modules/metrics/dashboards/default_dashboard_panels.py"
_NODE = "ray/dashboard/modules/reporter/reporter_agent.py (METRICS_GAUGES)"
_INGRESS = "ray/serve/_private/request_ingress_metrics.py (serve_*_{protocol}_*, http)"
_REPLICA = "ray/serve/_private/replica.py"
_ROUTER = "ray/serve/_private/router.py"
_MULTIPLEX = "ray/serve/multiplex.py"
_DATA = "ray/data/_internal/stats.py (data_<field> gauges of op_runtime_metrics.py)"
_TRAIN = "ray/train/v2/_internal/metrics/"

# Ray's own series the dashboards may read: exported name -> where Ray 2.60 defines it.
# Ray Data and Ray Train export cumulative numbers as gauges (no `_total`); Serve's Counters
# and Histograms follow the same rules as ours.
RAY_SERIES: dict[str, str] = {
    # Ray core: tasks and actors by state, logical resources by name and state.
    "ray_tasks": _CORE,
    "ray_actors": _CORE,
    "ray_resources": _CORE,
    "ray_object_store_memory": _CORE,
    # Per-node host metrics, from each node's reporter agent.
    "ray_node_cpu_utilization": _NODE,
    "ray_node_cpu_count": _NODE,
    "ray_node_mem_used": _NODE,
    "ray_node_mem_total": _NODE,
    "ray_node_gpus_utilization": _NODE,
    "ray_node_gpus_available": _NODE,
    "ray_node_gram_used": _NODE,
    "ray_node_gram_available": _NODE,
    # Ray Serve: the HTTP proxy's view of each request.
    "ray_serve_num_http_requests_total": _INGRESS,
    "ray_serve_num_http_error_requests_total": _INGRESS,
    "ray_serve_http_request_latency_ms_bucket": _INGRESS,
    "ray_serve_http_request_latency_ms_sum": _INGRESS,
    "ray_serve_http_request_latency_ms_count": _INGRESS,
    "ray_serve_num_ongoing_http_requests": _INGRESS,
    # Ray Serve: replicas and the routers (handles) in front of them.
    "ray_serve_deployment_replica_healthy": "ray/serve/_private/deployment_state.py",
    "ray_serve_deployment_request_counter_total": _REPLICA,
    "ray_serve_deployment_error_counter_total": _REPLICA,
    "ray_serve_deployment_processing_latency_ms_bucket": _REPLICA,
    "ray_serve_deployment_processing_latency_ms_sum": _REPLICA,
    "ray_serve_deployment_processing_latency_ms_count": _REPLICA,
    "ray_serve_replica_processing_queries": _REPLICA,
    "ray_serve_deployment_queued_queries": _ROUTER,
    "ray_serve_num_ongoing_requests_at_replicas": _ROUTER,
    "ray_serve_num_multiplexed_models": _MULTIPLEX,
    "ray_serve_multiplexed_models_load_counter_total": _MULTIPLEX,
    "ray_serve_multiplexed_models_unload_counter_total": _MULTIPLEX,
    # Ray Data: per-operator numbers of a running dataset (labels dataset, operator).
    "ray_data_output_rows": _DATA,
    "ray_data_output_bytes": _DATA,
    "ray_data_num_tasks_running": _DATA,
    "ray_data_num_tasks_finished": _DATA,
    "ray_data_num_tasks_failed": _DATA,
    # Ray Train V2: the controller's state and the workers' time in report/checkpoint.
    "ray_train_controller_state": _TRAIN + "controller.py",
    "ray_train_worker_group_start_total_time_s": _TRAIN + "controller.py",
    "ray_train_report_total_blocked_time_s": _TRAIN + "worker.py",
    "ray_train_checkpoint_sync_total_time_s": _TRAIN + "worker.py",
}

# Grafana's own variables a query may use; `concrete` substitutes them. Dashboard template
# variables are not used in queries: every query runs as written, in Grafana or a test.
GRAFANA_VARIABLES = ("$__rate_interval",)
DEFAULT_RATE_INTERVAL = "30s"

AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile".split()
)
# Prometheus 2.42's functions (native-histogram ones left out: experimental there).
FUNCTIONS = frozenset(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv exp floor histogram_quantile holt_winters hour idelta
    increase irate label_join label_replace last_over_time ln log10 log2 max_over_time
    min_over_time minute month pi predict_linear present_over_time quantile_over_time rad rate
    resets round scalar sgn sin sinh sort sort_desc sqrt stddev_over_time stdvar_over_time
    sum_over_time tan tanh time timestamp vector year
    """.split()
)
KEYWORDS = frozenset(
    "by without on ignoring group_left group_right offset bool and or unless atan2 inf nan".split()
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_AT = re.compile(r"@\s*(?:start\s*\(\s*\)|end\s*\(\s*\)|[0-9.]+)")
_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_TOKEN = re.compile(
    r"(?P<number>0x[0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
)
_PAIRS = {")": "(", "]": "[", "}": "{"}
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
# Labels every series of ours has besides its tags: Prometheus' target labels, Ray's own
# (component, node, session, version, worker of the process that recorded it) and `le` on
# a histogram's buckets.
COMMON_LABELS = frozenset(
    "instance job le Component NodeAddress SessionName Version WorkerId".split()
)


def without_strings(expr: str) -> str:
    """`expr` with every string literal emptied (strings may hold any bracket or name)."""
    return _STRING.sub('""', expr)


def identifiers(expr: str) -> Iterator[tuple[str, bool]]:
    """(name, is_called) for every identifier outside strings, matchers, label lists,
    ranges, offsets and Grafana variables: metric names, function names and keywords."""
    text = without_strings(expr)
    for pattern in (_LABEL_LIST, _MATCHERS, _RANGE, _OFFSET, _AT, _VARIABLE):
        text = pattern.sub(" ", text)
    for token in _TOKEN.finditer(text):
        if token.group("name"):
            called = text[token.end() :].lstrip().startswith("(")
            yield token.group("name"), called


def metric_names(expr: str) -> list[str]:
    """The metrics `expr` reads, in first-seen order."""
    names: list[str] = []
    for name, called in identifiers(expr):
        if not called and name not in KEYWORDS and name not in names:
            names.append(name)
    return names


def balanced(text: str) -> bool:
    """Whether every (, [ and { of `text` closes, in order."""
    stack: list[str] = []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in _PAIRS and (not stack or stack.pop() != _PAIRS[char]):
            return False
    return not stack


def expr_problems(expr: str) -> list[str]:
    """What is wrong with `expr` short of asking Prometheus."""
    problems = []
    text = without_strings(expr)
    if not balanced(text):
        problems.append("unbalanced brackets")
    for name, called in identifiers(expr):
        if called and name not in FUNCTIONS and name not in AGGREGATIONS:
            problems.append(f"unknown function {name}()")
    if "__name__" in text:
        problems.append("selects metrics by __name__, which the checks cannot follow")
    for variable in _VARIABLE.findall(text):
        if variable.replace("{", "").replace("}", "") not in GRAFANA_VARIABLES:
            problems.append(f"variable {variable} is not one of {', '.join(GRAFANA_VARIABLES)}")
    if not metric_names(expr):
        problems.append("reads no metric")
    return problems


def label_names(expr: str) -> set[str]:
    """The labels `expr` groups, joins or matches on (by, without, on, ignoring, group_*,
    and the label side of every matcher)."""
    text = without_strings(expr)
    names = set()
    for group in _LABEL_LIST.finditer(text):
        inside = group.group(0)[group.group(0).index("(") + 1 : -1]
        names.update(_LABEL.findall(inside))
    for matchers in _MATCHERS.finditer(text):
        names.update(_MATCHER_LABEL.findall(matchers.group(0)))
    return names


def concrete(expr: str, rate_interval: str = DEFAULT_RATE_INTERVAL) -> str:
    """`expr` as Prometheus itself can run it: Grafana's variables substituted."""
    return expr.replace("${__rate_interval}", rate_interval).replace(
        "$__rate_interval", rate_interval
    )


def unknown_labels(expr: str, ours: dict[str, str]) -> list[str]:
    """Labels `expr` uses that none of the metrics it reads has, when it reads only ours
    (a misspelt label matches nothing, or folds every series into one, and still returns
    data). Ray's own series are left alone: their labels are Ray's to change."""
    names = metric_names(expr)
    if not names or any(name not in ours for name in names):
        return []
    tags = {tag for name in names for tag in SPECS_BY_NAME[ours[name]].tags}
    return sorted(label_names(expr) - tags - COMMON_LABELS)


def our_series() -> dict[str, str]:
    """Every exported series of ours -> the telemetry metric it belongs to."""
    return {series: name for name in ALL_METRICS for series in exported_series(name)}


def unknown_metric(name: str, ours: dict[str, str]) -> str:
    """The problem line for a metric that is neither ours nor Ray's, with a likely fix."""
    known = [*ours, *RAY_SERIES]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"unknown metric {name}: not a bluepri.telemetry metric as Ray exports it, "
        f"nor a known Ray series{hint}"
    )


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, as the dashboard JSON holds it."""

    dashboard: str  # the file's stem: training, tuning, serving, rendering
    panel: str  # the panel's title
    ref_id: str  # Grafana's A, B, ... within the panel
    expr: str


def flat_panels(panels: list[Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too; rows themselves are not panels."""
    for panel in panels:
        if not isinstance(panel, dict):
            continue
        yield from flat_panels(panel.get("panels") or [])
        if panel.get("type") != "row":
            yield panel


def read_dashboard(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """A dashboard file's JSON, or the problems that stop it being read as one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, [f"{path.name}: not valid JSON ({err})"]
    if not isinstance(value, dict) or not isinstance(value.get("panels"), list):
        return None, [f"{path.name}: not a Grafana dashboard (no panels list)"]
    return value, []


def dashboard_problems(path: Path, dashboard: dict[str, Any]) -> list[str]:
    """Structural problems: no panels, a panel without queries, a query without expr, no
    `datasource` variable for the queries to name."""
    problems = []
    variables = (dashboard.get("templating") or {}).get("list") or []
    if not any(v.get("name") == "datasource" for v in variables if isinstance(v, dict)):
        problems.append(f"{path.name}: no `datasource` template variable")
    panels = list(flat_panels(dashboard["panels"]))
    if not panels:
        problems.append(f"{path.name}: no panels")
    for panel in panels:
        title = panel.get("title") or "(untitled)"
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{path.name}: panel {title!r} has no queries")
            continue
        for target in targets:
            expr = target.get("expr") if isinstance(target, dict) else None
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{path.name}: panel {title!r} has a query without expr")
    return problems


def panel_queries(dashboards_dir: str | Path) -> list[PanelQuery]:
    """Every query of every panel of every dashboard file in `dashboards_dir`, in order
    (files that do not read as dashboards are left out: `check_dashboards` names them)."""
    queries = []
    for path in sorted(Path(dashboards_dir).glob("*.json")):
        dashboard, _ = read_dashboard(path)
        if dashboard is None:
            continue
        for panel in flat_panels(dashboard["panels"]):
            for target in panel.get("targets") or []:
                expr = target.get("expr") if isinstance(target, dict) else None
                if isinstance(expr, str) and expr.strip():
                    queries.append(
                        PanelQuery(
                            dashboard=path.stem,
                            panel=str(panel.get("title") or "(untitled)"),
                            ref_id=str(target.get("refId") or ""),
                            expr=expr,
                        )
                    )
    return queries


def check_dashboards(dashboards_dir: str | Path) -> list[str]:
    """Every problem of the dashboards in `dashboards_dir`, one line each ([] when none):
    files that are not dashboards, queries that read unknown metrics or do not hold
    together, and metrics of ours that no dashboard reads."""
    folder = Path(dashboards_dir)
    paths = sorted(folder.glob("*.json"))
    problems = [] if paths else [f"{folder}: no dashboard JSON files"]
    for path in paths:
        dashboard, unreadable = read_dashboard(path)
        problems += unreadable if dashboard is None else dashboard_problems(path, dashboard)

    ours = our_series()
    read: set[str] = set()
    for query in panel_queries(folder):
        where = f"{query.dashboard}.json: panel {query.panel!r} ({query.ref_id})"
        problems += [f"{where}: {problem}" for problem in expr_problems(query.expr)]
        problems += [
            f"{where}: label {label!r} is not one of its metrics' tags"
            for label in unknown_labels(query.expr, ours)
        ]
        for name in metric_names(query.expr):
            read.add(name)
            if name not in ours and name not in RAY_SERIES:
                problems.append(f"{where}: {unknown_metric(name, ours)}")

    for name, kind in ALL_METRICS.items():
        series = exported_series(name)
        if not read.intersection(series):
            problems.append(f"{name} ({kind}) is not on any dashboard: query {' or '.join(series)}")
    return problems
