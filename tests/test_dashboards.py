"""The Grafana dashboards and their checks, without Ray: the committed files are what the
Python generates, every query reads a metric that exists (ours as Ray exports it, or a
known Ray series), every metric of ours is on a dashboard, and broken copies fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bluepri.artifacts import RENDER_ERROR_CODES
from bluepri.ops.dashboards import (
    DASHBOARDS,
    DASHBOARDS_DIR,
    RAY_SERVICE_DISCOVERY_FILE,
    generated_files,
    queries_empty_when,
)
from bluepri.ops.promql import (
    RAY_SERIES,
    check_dashboards,
    concrete,
    expr_problems,
    label_names,
    metric_names,
    panel_queries,
)
from bluepri.telemetry import (
    ALL_METRICS,
    COUNTER,
    GAUGE,
    OTHER_REASON,
    SPECS,
    TRIAL_STATES,
    exported_series,
    failure_reason,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dashboards_copy(tmp_path: Path) -> Path:
    """A scratch copy of dashboards/ that checks clean before a test breaks it."""
    copy = tmp_path / "dashboards"
    shutil.copytree(DASHBOARDS_DIR, copy)
    assert check_dashboards(copy) == []
    return copy


def edit_dashboard(folder: Path, name: str, change) -> None:
    path = folder / f"{name}.json"
    dashboard = json.loads(path.read_text())
    change(dashboard)
    path.write_text(json.dumps(dashboard, indent=2))


# -- the committed dashboards ----------------------------------------------------------------


def test_committed_dashboards_check_clean() -> None:
    assert DASHBOARDS_DIR == ROOT / "dashboards"
    assert check_dashboards(DASHBOARDS_DIR) == []


def test_committed_files_are_what_generate_writes(tmp_path: Path) -> None:
    script = [sys.executable, str(ROOT / "dashboards" / "generate.py")]
    checked = subprocess.run([*script, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert checked.returncode == 0, checked.stderr

    # And the check does see a difference: a hand edit, and a file missing.
    copy = tmp_path / "copy"
    shutil.copytree(DASHBOARDS_DIR, copy)
    (copy / "serving.json").write_text((copy / "serving.json").read_text().replace("p95", "p96"))
    (copy / "prometheus.yml").unlink()
    checked = subprocess.run(
        [*script, "--check", "--out", str(copy)], capture_output=True, text=True, cwd=ROOT
    )
    assert checked.returncode == 1
    assert "serving.json" in checked.stderr and "prometheus.yml" in checked.stderr
    assert "training.json" not in checked.stderr


def test_every_metric_of_ours_is_on_a_dashboard() -> None:
    read = {name for query in panel_queries(DASHBOARDS_DIR) for name in metric_names(query.expr)}
    missing = [name for name in ALL_METRICS if not read.intersection(exported_series(name))]
    assert missing == []


def test_every_dashboard_has_its_file_and_panels() -> None:
    files = generated_files()
    for dashboard in DASHBOARDS:
        model = json.loads(files[f"{dashboard.name}.json"])
        assert model["uid"] == dashboard.uid and model["schemaVersion"] >= 39
        titles = [panel["title"] for panel in model["panels"]]
        assert len(titles) == len(set(titles)), f"{dashboard.name}: panel titles repeat"
        for panel in model["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_queries_empty_when_name_real_queries() -> None:
    queries = {(q.dashboard, q.panel, q.ref_id) for q in panel_queries(DASHBOARDS_DIR)}
    quiet = queries_empty_when()
    assert quiet and set(quiet) <= queries
    # Only rare events and missing hardware may leave a query empty, never a stage's core.
    assert ("serving", "Requests/s by adapter and status", "A") not in quiet
    assert ("serving", "Errors/s by adapter and status", "A") in quiet


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) not installed")
def test_prometheus_parses_every_query_and_the_config(tmp_path: Path) -> None:
    """promtool parses recording rules with Prometheus' own parser: every query, made
    concrete as a test against a real Prometheus would send it."""
    rules = [
        {"record": f"bluepri:query{i}", "expr": concrete(q.expr)}
        for i, q in enumerate(panel_queries(DASHBOARDS_DIR))
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    parsed = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True)
    assert parsed.returncode == 0, parsed.stdout.decode() + parsed.stderr.decode()
    config = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(DASHBOARDS_DIR / "prometheus.yml")],
        capture_output=True,
    )
    assert config.returncode == 0, config.stdout.decode() + config.stderr.decode()


def test_prometheus_config_reads_rays_service_discovery_file() -> None:
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load((DASHBOARDS_DIR / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["file_sd_configs"]
    assert discovery["files"] == [RAY_SERVICE_DISCOVERY_FILE]
    assert Path(RAY_SERVICE_DISCOVERY_FILE).name == PROMETHEUS_SERVICE_DISCOVERY_FILE


def test_ray_series_sources_exist_in_the_installed_ray() -> None:
    import importlib.util

    ray_root = Path(importlib.util.find_spec("ray").origin).parent.parent
    for series, source in RAY_SERIES.items():
        assert series.startswith("ray_")
        if source.startswith("ray/"):
            assert (ray_root / source.split(" ")[0]).exists(), f"{series}: {source}"


# -- naming: what Ray's exporter makes of our metrics ------------------------------------------


def test_exported_names_follow_rays_exporter() -> None:
    """Ray 2.60's metrics agent registers each metric with OpenTelemetry as `ray_<name>`,
    unit "1" (observable counter / observable gauge / histogram: see
    ray/_private/telemetry/open_telemetry_metric_recorder.py) and serves them through
    OpenTelemetry's Prometheus reader. The same reader, on a private registry, must name
    them as `exported_series` says."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    meter = provider.get_meter("test")
    for spec in SPECS:
        name, tags = f"ray_{spec.name}", {tag: "x" for tag in spec.tags}
        if spec.kind == COUNTER:
            callback = [lambda options, tags=tags: [Observation(1, tags)]]
            meter.create_observable_counter(name, unit="1", callbacks=callback)
        elif spec.kind == GAUGE:
            callback = [lambda options, tags=tags: [Observation(1, tags)]]
            meter.create_observable_gauge(name, unit="1", callbacks=callback)
        else:
            histogram = meter.create_histogram(
                name, unit="1", explicit_bucket_boundaries_advisory=list(spec.boundaries)
            )
            histogram.record(0.5, tags)
    exposition = generate_latest(registry).decode()
    provider.shutdown()
    samples = {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }
    for name in ALL_METRICS:
        assert set(exported_series(name)) <= samples, (name, sorted(samples))


# -- the extractor ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.95, sum by (stage, le) (rate(ray_bluepri_serve_stage_seconds"
            '_bucket{stage=~"base|refiner", replica!="x{y}"}[$__rate_interval])))',
            ["ray_bluepri_serve_stage_seconds_bucket"],
        ),
        (
            "sum(rate(a_total[5m] offset 1h)) by (instance) / on() group_left(job) "
            "(b or vector(0)) > bool 1e3",
            ["a_total", "b"],
        ),
        (
            'label_replace(up{job="ray"}, "host", "$1", "instance", "(.*):ray_fake")',
            ["up"],
        ),
        (
            "count_over_time(x:recorded[1h:5m]) unless ignoring(le) max_over_time(y[10m])"
            " and z @ 1700000000",
            ["x:recorded", "y", "z"],
        ),
        ("topk(5, log2(ray_x)) - 0x1F * .5 + inf", ["ray_x"]),
        ("sum without (WorkerId) (ray_a) + sum(ray_a)", ["ray_a"]),
    ],
)
def test_metric_names(expr: str, names: list[str]) -> None:
    assert metric_names(expr) == names
    assert expr_problems(expr) == []


def test_label_names() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (stage, le) (rate(x{stage=~"a{b}", replica != "=y"}'
        "[5m]))) / on(a) group_left(b, c) y"
    )
    assert label_names(expr) == {"stage", "le", "replica", "a", "b", "c"}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rat(ray_x[5m])", "unknown function rat()"),
        ("sum(rate(ray_x[5m])", "unbalanced brackets"),
        ("sum(ray_x])", "unbalanced brackets"),
        ('sum({__name__=~"ray_.*"})', "__name__"),
        ("rate(ray_x[$window])", "variable $window"),
        ("vector(1)", "reads no metric"),
    ],
)
def test_expr_problems(expr: str, problem: str) -> None:
    assert any(problem in found for found in expr_problems(expr)), expr_problems(expr)


def test_concrete_substitutes_grafanas_rate_interval() -> None:
    expr = "rate(a[$__rate_interval]) + rate(b[${__rate_interval}])"
    assert concrete(expr) == "rate(a[30s]) + rate(b[30s])"
    assert concrete(expr, "1m") == "rate(a[1m]) + rate(b[1m])"
    assert all("$" not in concrete(q.expr) for q in panel_queries(DASHBOARDS_DIR))


# -- broken copies fail ----------------------------------------------------------------------


def test_an_unknown_metric_is_named(dashboards_copy: Path) -> None:
    def misspell(dashboard: dict) -> None:
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                target["expr"] = target["expr"].replace(
                    "ray_bluepri_serve_requests_total", "ray_bluepri_serve_requestz_total"
                )

    edit_dashboard(dashboards_copy, "serving", misspell)
    problems = check_dashboards(dashboards_copy)
    assert any(
        p.startswith("serving.json: panel 'Requests/s by adapter and status' (A)")
        and "unknown metric ray_bluepri_serve_requestz_total" in p
        for p in problems
    ), problems
    # Misspelt everywhere, the real counter is now on no dashboard either.
    assert any(p.startswith("bluepri_serve_requests (counter) is not on any") for p in problems)


def test_a_name_without_rays_suffix_gets_a_hint(dashboards_copy: Path) -> None:
    def drop_total(dashboard: dict) -> None:
        dashboard["panels"][0]["targets"][0]["expr"] = "sum(ray_bluepri_render_images)"

    edit_dashboard(dashboards_copy, "rendering", drop_total)
    problems = check_dashboards(dashboards_copy)
    assert any(
        "unknown metric ray_bluepri_render_images:" in p
        and "did you mean ray_bluepri_render_images_total" in p
        for p in problems
    ), problems


def test_a_label_our_metric_lacks_is_named(dashboards_copy: Path) -> None:
    def misspell_label(dashboard: dict) -> None:
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                target["expr"] = target["expr"].replace("by (adapter, status)", "by (adaptor)")

    edit_dashboard(dashboards_copy, "serving", misspell_label)
    problems = check_dashboards(dashboards_copy)
    assert (
        "serving.json: panel 'Requests/s by adapter and status' (A): "
        "label 'adaptor' is not one of its metrics' tags"
    ) in problems


def test_a_metric_on_no_dashboard_is_named(dashboards_copy: Path) -> None:
    def drop_failure_panels(dashboard: dict) -> None:
        dashboard["panels"] = [
            panel
            for panel in dashboard["panels"]
            if not any("render_failures" in t["expr"] for t in panel["targets"])
        ]

    edit_dashboard(dashboards_copy, "rendering", drop_failure_panels)
    assert check_dashboards(dashboards_copy) == [
        "bluepri_render_failures (counter) is not on any dashboard: "
        "query ray_bluepri_render_failures_total"
    ]


def test_invalid_json_and_empty_panels_are_named(dashboards_copy: Path) -> None:
    (dashboards_copy / "rendering.json").write_text('{"panels": [')
    edit_dashboard(
        dashboards_copy, "tuning", lambda d: d["panels"][0].update(targets=[{"refId": "A"}])
    )
    problems = check_dashboards(dashboards_copy)
    assert any(p.startswith("rendering.json: not valid JSON") for p in problems), problems
    assert "tuning.json: panel 'Trials running' has a query without expr" in problems
    # The rendering metrics were only on the unreadable dashboard.
    assert any(p.startswith("bluepri_render_images (counter) is not on any") for p in problems)


def test_an_empty_folder_is_a_problem(tmp_path: Path) -> None:
    assert check_dashboards(tmp_path) != []


# -- recording helpers (pure) ----------------------------------------------------------------


def test_failure_reasons_are_the_manifests_codes() -> None:
    assert [failure_reason(code) for code in RENDER_ERROR_CODES] == list(RENDER_ERROR_CODES)
    assert failure_reason("CUDA out of memory") == OTHER_REASON
    assert failure_reason(None) == OTHER_REASON


def test_trial_states_are_tunes() -> None:
    from ray.tune.experiment.trial import Trial

    from bluepri.tune.metrics import lowest_loss, trial_counts

    states = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED, Trial.TERMINATED, Trial.ERROR)
    assert set(TRIAL_STATES) == set(states)
    counts = trial_counts([Trial.RUNNING, Trial.RUNNING, Trial.TERMINATED])
    assert counts == {"PENDING": 0, "RUNNING": 2, "PAUSED": 0, "TERMINATED": 1, "ERROR": 0}

    best = None
    for reported in (None, 0.5, float("nan"), "0.1", True, 0.25, 0.75):
        best = lowest_loss(best, reported)
    assert best == 0.25
