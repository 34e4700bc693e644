"""Operate, end to end, on real parts: the multi-node Ray cluster of cluster/local/ (a head
and two worker nodes, token authentication on), jobs/train.py and jobs/render.py submitted
through the real `ray job submit`, the Serve application deployed with the real
`serve deploy` and answering requests meanwhile, and Debian's Prometheus scraping the
cluster through Ray's service-discovery file. Every panel query of every dashboard is then
evaluated against that Prometheus over its HTTP API.

These tests run first in a session (conftest orders them): `cluster/local/stop.sh` is
`ray stop`, which ends every Ray on the machine.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from bluepri import artifacts
from conftest import SERVED_ADAPTER, free_port, served_config, served_registry
from polling import http_status, wait_until

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"
BIN = Path(sys.executable).parent
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_S = 1
DASHBOARDS_WITH_DATA = ("training", "tuning", "serving", "rendering")  # all stages run here


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count < 65000 and all(port_is_free(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports")


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class LocalCluster:
    """The running cluster: what start.sh recorded, and the environment of a client."""

    info: dict
    env: dict[str, str]  # for `ray job ...`, `serve ...`: token auth and the dashboard URL
    state_dir: Path

    @property
    def dashboard(self) -> str:
        return self.info["dashboard_url"]

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args],
            env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory, tiny_models):
    state = tmp_path_factory.mktemp("local-cluster")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    dashboard = free_ports(210)  # the dashboard, then the worker nodes' agent ports above it
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        WORKERS="2",
        WORKER_CPUS="2",
        GCS_PORT=str(free_port()),
        DASHBOARD_PORT=str(dashboard),
        METRICS_PORT=str(free_ports(3)),
        STATE_DIR=str(state),
        # Ray's metrics export every second (10 s by default) so a short job shows up.
        RAY_metrics_report_interval_ms="1000",
    )
    started = subprocess.run(
        [str(REPO / "cluster/local/start.sh")], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        info = json.loads((state / "cluster.json").read_text())
        assert "source" in started.stdout and "ray job submit" in started.stdout
        client = {**env, **read_env_sh(state / "env.sh")}
        assert client["RAY_AUTH_MODE"] == "token"
        yield LocalCluster(info, client, state)
    finally:
        stopped = subprocess.run(
            [str(REPO / "cluster/local/stop.sh")], env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert stopped.returncode == 0, stopped.stderr


def read_env_sh(path: Path) -> dict[str, str]:
    """The `export K=V` lines start.sh writes for clients."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            pairs[key] = value
    return pairs


@pytest.fixture(scope="module")
def prometheus(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory):
    """Debian's Prometheus on the cluster's service-discovery file, scraping every second."""
    from bluepri.ops.dashboards import SCRAPE_INTERVAL, prometheus_config

    root = tmp_path_factory.mktemp("prometheus")
    config = prometheus_config(local_cluster.info["service_discovery"]).replace(
        SCRAPE_INTERVAL, f"{SCRAPE_S}s"
    )
    (root / "prometheus.yml").write_text(config)
    port = free_port()
    log = (root / "prometheus.log").open("w")
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: ready(url), 60, "Prometheus to be ready")
        # Every node of the cluster is a target that answers (head, 2 workers, + agents).
        wait_until(lambda: len(up_targets(url)) >= 3, 60, "Prometheus to scrape the nodes")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def ready(url: str) -> bool:
    return http_status(f"{url}/-/ready") == 200


def up_targets(url: str) -> list[str]:
    try:
        body = requests.get(f"{url}/api/v1/targets", timeout=5).json()
    except requests.RequestException:
        return []  # not answering yet: the poll asks again
    return [t["scrapeUrl"] for t in body["data"]["activeTargets"] if t["health"] == "up"]


# -- the workload: serve while a train job, then a render job, run -----------------------------


@dataclass
class Traffic:
    """Requests sent to the service in the background, by HTTP status."""

    statuses: dict[int, int] = field(default_factory=dict)
    by_request: dict[tuple[str | None, bool, int], int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)


ADAPTERS_CYCLE = (None, f"{SERVED_ADAPTER}@v0002", "extra@v0001", "extra@v0002",
                  "extra@v0003", "missing-adapter")  # fmt: skip


def send_traffic(url: str, api_key: str, traffic: Traffic) -> None:
    """Requests over five adapters (more than the replicas hold: loads and evictions), and
    one that names no stored adapter (404s), until told to stop. Each pass through the
    adapters is refined or not, alternately, so every adapter is asked both ways; 4 steps
    leave the refiner one (with 2 it has none, a 422)."""
    index = 0
    while not traffic.stop.is_set():
        adapter = ADAPTERS_CYCLE[index % len(ADAPTERS_CYCLE)]
        refine = (index // len(ADAPTERS_CYCLE)) % 2 == 0
        body = {"prompt": "a floor plan", "width": 64, "height": 64, "steps": 4,
                "seed": index, "refine": refine, "adapter": adapter}  # fmt: skip
        try:
            status = requests.post(
                f"{url}/v1/generate", json=body, timeout=60,
                headers={"Authorization": f"Bearer {api_key}"},
            ).status_code  # fmt: skip
        except requests.RequestException:
            status = 0
        traffic.statuses[status] = traffic.statuses.get(status, 0) + 1
        key = (adapter, refine, status)
        traffic.by_request[key] = traffic.by_request.get(key, 0) + 1
        index += 1


@dataclass
class ClusterRun:
    started: float
    train_job: str
    train_log: str
    adapter: Path
    render_job: str
    render_out: Path
    partial_render: subprocess.CompletedProcess
    partial_out: Path
    traffic: Traffic
    head_node: str
    worker_nodes: set[str]
    train_nodes: set[str]
    render_nodes: set[str]
    tune_root: Path


def submit(cluster: LocalCluster, job_id: str, job: str, *args: str) -> subprocess.CompletedProcess:
    """`ray job submit` as jobs/README.md says for cluster/local (scripts by absolute path);
    it follows the job's log until the job ends."""
    return cluster.ray(
        "job", "submit", "--submission-id", job_id, "--runtime-env", "jobs/runtime_env.yaml",
        "--", "python", str(REPO / "jobs" / job), *args, timeout=600,
    )  # fmt: skip


def job_status(cluster: LocalCluster, job_id: str) -> str:
    done = cluster.ray("job", "status", job_id)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def state_list(cluster: LocalCluster, kind: str, *filters: str) -> list[dict]:
    """Ray's state API through its CLI (`ray list ...`)."""
    args = ["list", kind, "--format", "json", "--detail", "--limit", "10000"]
    for f in filters:
        args += ["--filter", f]
    done = cluster.ray(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def deploy_service(cluster: LocalCluster, root: Path):
    """The Serve app of the session fixture's shape, deployed with `serve deploy` from a
    config file generated by bluepri. One HTTP proxy, on the head: the nodes share a host."""
    from bluepri.serve.deploy import serve_config

    registry, api_key, keys_file = served_registry(root)
    config = served_config(registry.uri, keys_file)
    document = serve_config(config)
    document["proxy_location"] = "HeadOnly"
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    done = subprocess.run(
        [str(BIN / "serve"), "deploy", str(path), "--address", cluster.dashboard],
        env=cluster.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    def answers() -> bool:
        return http_status(f"{config.url}/healthz") == 200

    wait_until(answers, 300, "the served app on the cluster", poll_s=1)
    return config.url, api_key


def write_catalogue(path: Path, rows: int, empty_prompts: int = 0) -> Path:
    """`rows` rows to render, then `empty_prompts` rows that fail their checks."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "seed"])
        for i in range(rows):
            writer.writerow([f"row-{i:02d}", f"blueprint of a house, variant {i}", i])
        for i in range(rows, rows + empty_prompts):
            writer.writerow([f"row-{i:02d}", "", i])
    return path


@pytest.fixture(scope="module")
def cluster_run(local_cluster: LocalCluster, prometheus: str, tmp_path_factory) -> ClusterRun:
    from bluepri.config import SynthConfig
    from bluepri.data.synth import synthesize

    root = tmp_path_factory.mktemp("cluster-run")
    started = time.time()
    url, api_key = deploy_service(local_cluster, root / "serve")
    traffic = Traffic()
    sender = threading.Thread(target=send_traffic, args=(url, api_key, traffic), daemon=True)
    sender.start()
    try:
        synthesize(SynthConfig(out_dir=str(root / "dataset"), num_images=16, seed=11))
        adapter = root / "adapter"
        dataset, adapter, registry = root / "dataset", root / "adapter", root / "registry"
        train = submit(local_cluster, "bluepri-train-1", "train.py",
                       str(CONFIGS / "train_tiny.yaml"), f"train_data_dir={dataset}",
                       f"output_dir={adapter}", "max_train_steps=30")  # fmt: skip
        assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-4000:]
        put = subprocess.run(
            [str(BIN / "bluepri"), "adapters", "put", str(adapter), "--name", "blueprints",
             "--registry", str(registry)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert put.returncode == 0, put.stderr

        # The nightly search on the same data: its winner becomes the champion.
        search = submit(local_cluster, "bluepri-search-1", "nightly_tune.py",
                        str(CONFIGS / "nightly_tune_tiny.yaml"), f"registry={registry}",
                        f"storage_path={root / 'tune'}", f"train.train_data_dir={dataset}",
                        "--experiment_name", "night")  # fmt: skip
        assert search.returncode == 0, search.stdout[-4000:] + search.stderr[-4000:]

        catalogue = write_catalogue(root / "catalogue.csv", 12)
        render_out = root / "renders"
        render = submit(local_cluster, "bluepri-render-1", "render.py",
                        str(CONFIGS / "render_tiny.yaml"), f"catalogue={catalogue}",
                        f"out={render_out}", f"registry={registry}")  # fmt: skip
        assert render.returncode == 0, render.stdout[-4000:] + render.stderr[-4000:]
        # A catalogue with a row that fails its checks: the job renders the rest, ends with
        # exit code 1 (rows_failed), and counts the failure by reason for the dashboard.
        partial_out = root / "partial-renders"
        partial = submit(local_cluster, "bluepri-render-2", "render.py",
                         str(CONFIGS / "render_tiny.yaml"),
                         f"catalogue={write_catalogue(root / 'partial.csv', 1, 1)}",
                         f"out={partial_out}", f"registry={registry}")  # fmt: skip
        # Until Prometheus has scraped the render actors' and the drivers' exports.
        wait_until(lambda: rendered_series(prometheus), 60, "render metrics in Prometheus")
        wait_until(lambda: failure_series(prometheus), 60, "render failures in Prometheus")
        # Five adapters over at most two Base replicas of two each: some replica evicts.
        wait_until(lambda: eviction_series(prometheus), 120, "adapter evictions in Prometheus")
    finally:
        traffic.stop.set()
        sender.join(timeout=120)

    nodes = state_list(local_cluster, "nodes")
    head = next(n["node_id"] for n in nodes if n["is_head_node"])
    workers = {n["node_id"] for n in nodes if not n["is_head_node"]}
    return ClusterRun(
        started=started, train_job="bluepri-train-1", train_log=train.stdout, adapter=adapter,
        render_job="bluepri-render-1", render_out=render_out, traffic=traffic,
        partial_render=partial, partial_out=partial_out,
        head_node=head, worker_nodes=workers,
        train_nodes=job_nodes(local_cluster, "bluepri-train-1", "RayTrainWorker"),
        render_nodes=job_nodes(local_cluster, "bluepri-render-1", "MapWorker"),
        tune_root=root / "tune",
    )  # fmt: skip


def rendered_series(prometheus: str) -> bool:
    result = query_range(prometheus, "ray_bluepri_render_images_total", time.time() - 600)
    return bool(result)


def eviction_series(prometheus: str) -> bool:
    since = time.time() - 600
    return bool(query_range(prometheus, "ray_bluepri_serve_adapter_evictions_total", since))


def failure_series(prometheus: str) -> bool:
    result = query_range(prometheus, "ray_bluepri_render_failures_total", time.time() - 600)
    return any(r["metric"].get("reason") == "empty_prompt" for r in result)


def job_nodes(cluster: LocalCluster, submission_id: str, class_prefix: str) -> set[str]:
    """Nodes that ran the job's actors of a class (their state outlives them)."""
    jobs = state_list(cluster, "jobs", f"submission_id={submission_id}")
    job_id = jobs[0]["job_id"]
    actors = state_list(cluster, "actors", f"job_id={job_id}")
    return {a["node_id"] for a in actors if a["class_name"].startswith(class_prefix)}


def query_range(prometheus: str, expr: str, start: float) -> list[dict]:
    """The expression over [start, now] at the scrape interval, as Grafana asks for it."""
    response = requests.get(
        f"{prometheus}/api/v1/query_range",
        params={"query": expr, "start": start, "end": time.time(), "step": f"{SCRAPE_S}s"},
        timeout=30,
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


# -- the checks ---------------------------------------------------------------------------------


def test_jobs_submitted_to_the_cluster_succeed_and_use_its_worker_nodes(
    local_cluster: LocalCluster, cluster_run: ClusterRun
) -> None:
    for job in (cluster_run.train_job, cluster_run.render_job):
        assert f"Job '{job}' succeeded" in job_status(local_cluster, job)
    # The train job's JSON summary line (in the log `ray job submit` followed) names the
    # artifact, and it is there.
    summary = json.loads(next(line for line in reversed(cluster_run.train_log.splitlines())
                              if line.startswith('{"status"')))  # fmt: skip
    assert summary["status"] == "ok" and summary["global_step"] == 30
    assert summary["adapter"] == str(cluster_run.adapter)
    assert artifacts.has_adapter(str(cluster_run.adapter))
    assert artifacts.read_adapter_info(str(cluster_run.adapter)).rank == 4
    rows = artifacts.read_render_manifest(str(cluster_run.render_out)).to_pylist()
    assert len(rows) == 12 and all(r["status"] == "rendered" for r in rows)
    assert all((cluster_run.render_out / r["image_path"]).stat().st_size > 0 for r in rows)
    # A job that rendered some rows and failed others: exit code 1 through `ray job submit`,
    # FAILED for Ray, its JSON line says why, and the manifest names the row and its reason.
    partial = cluster_run.partial_render
    assert partial.returncode != 0
    assert "Job 'bluepri-render-2' failed" in job_status(local_cluster, "bluepri-render-2")
    summary = json.loads(next(line for line in reversed(partial.stdout.splitlines())
                              if line.startswith('{"status"')))  # fmt: skip
    assert summary["status"] == "rows_failed"
    rows = artifacts.read_render_manifest(str(cluster_run.partial_out)).to_pylist()
    assert sorted((r["id"], r["status"], r["error_code"]) for r in rows) == [
        ("row-00", "rendered", None), ("row-01", "failed", "empty_prompt")
    ]  # fmt: skip
    # The nightly search evaluated its champion against the base into the history.
    from bluepri.eval import EvalResult
    from bluepri.eval.history import read_history

    evaluation = EvalResult.model_validate_json(
        (cluster_run.tune_root / "night" / "eval" / "eval.json").read_text()
    )
    held_out = artifacts.read_manifest(evaluation.cache).num_val  # captions to prompt with
    assert evaluation.label == "night" and len(evaluation.prompts) == min(
        evaluation.protocol.max_prompts, held_out
    )
    assert {r.label.split("@")[0] for r in evaluation.runs} == {"base", "blueprints"}
    history = read_history(str(cluster_run.tune_root / "eval-history.parquet")).to_pylist()
    assert {(h["eval"], h["run"]) for h in history} == {(evaluation.label, r.label)
                                                         for r in evaluation.runs}  # fmt: skip
    assert Path(evaluation.report).is_file()
    # The head holds no CPUs: training and rendering ran on the worker nodes.
    assert len(cluster_run.worker_nodes) == 2
    assert cluster_run.train_nodes and cluster_run.train_nodes <= cluster_run.worker_nodes
    assert cluster_run.render_nodes and cluster_run.render_nodes <= cluster_run.worker_nodes
    # The service answered all along, and the unknown adapter was refused, not crashed on.
    # Every stored adapter answered, refined and not; none was refused as invalid.
    traffic = cluster_run.traffic
    answered = {(adapter, refine) for adapter, refine, status in traffic.by_request
                if status == 200}  # fmt: skip
    stored = [a for a in ADAPTERS_CYCLE if a != "missing-adapter"]
    assert answered == {(a, r) for a in stored for r in (False, True)}, traffic.by_request
    assert traffic.statuses.get(404, 0) >= 1 and 422 not in traffic.statuses, traffic.statuses


def test_every_dashboard_panel_is_evaluated_and_the_stages_run_show_data(
    cluster_run: ClusterRun, prometheus: str, tmp_path: Path
) -> None:
    from bluepri.ops.dashboards import DASHBOARDS_DIR, queries_empty_when
    from bluepri.ops.promql import concrete, panel_queries

    may_be_empty = queries_empty_when()
    report, dashboards, unexpectedly_empty, empty = [], set(), [], []
    for query in panel_queries(DASHBOARDS_DIR):
        series = query_range(prometheus, concrete(query.expr), cluster_run.started)
        dashboards.add(query.dashboard)
        if not series:
            empty.append((query.dashboard, query.panel, query.ref_id))
        why_empty = may_be_empty.get((query.dashboard, query.panel, query.ref_id))
        state = f"{len(series)} series" if series else f"no data ({why_empty or 'EXPECTED DATA'})"
        line = f"{query.dashboard:10} {query.panel[:44]:44} {query.ref_id}  {state}"
        report.append(line)
        if not series and not why_empty and query.dashboard in DASHBOARDS_WITH_DATA:
            unexpectedly_empty.append(line)
    text = "\n".join(report)
    (tmp_path / "panels.txt").write_text(text + "\n")
    print(f"\nevery panel query against Prometheus ({len(report)} queries):\n{text}")

    assert dashboards == {"training", "tuning", "serving", "rendering"}
    # Every query of the stages this run exercised returned series, but those that may
    # rightly be empty in a healthy run (GPU panels on CPUs, failed rows where none failed):
    # so every panel there shows data unless all its queries are of that kind.
    assert not unexpectedly_empty, "\n".join(unexpectedly_empty)
    # This run also fails a render row and evicts adapters, which a healthy run need not:
    # only the GPU panels are left without data on a cluster without GPUs.
    assert empty and all("GPU" in panel for _, panel, _ in empty), empty
