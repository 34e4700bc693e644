"""The served app under load (real HTTP on 127.0.0.1): only 200 or deliberate 503 answers,
nobody waits past the timeout, Base autoscales 1 -> 2 replicas and back (read from
Serve's status), and a killed Base replica is replaced without help."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from polling import wait_until

pytestmark = pytest.mark.integration

REPLICA_CLASS = "ServeReplica:{app}:Base"


def base_status(app) -> tuple[str, int]:
    """(deployment status, RUNNING replicas) of Base, from serve.status()."""
    from ray import serve

    deployment = serve.status().applications[app.config.app_name].deployments["Base"]
    states = {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}
    return str(getattr(deployment.status, "value", deployment.status)), states.get("RUNNING", 0)


class Load:
    """Requests from `concurrency` threads; every answer's status and duration recorded."""

    def __init__(self, app, concurrency: int):
        self.app = app
        self.concurrency = concurrency
        self.statuses: Counter = Counter()
        self.problems: list[str] = []
        self.longest = 0.0
        self.sent = 0
        self.lock = threading.Lock()
        self.client_timeout = app.config.request_timeout_s + 15  # past this: a hang

    def one(self, index: int) -> None:
        body = {
            "prompt": f"load drawing {index}",
            "seed": index,
            "refine": index % 4 == 0,
            "adapter": "bp@v0001",
        }
        started = time.monotonic()
        try:
            response = requests.post(
                f"{self.app.url}/v1/generate",
                json=body,
                headers=self.app.auth,
                timeout=self.client_timeout,
            )
        except requests.RequestException as err:  # a hang or a dropped connection
            with self.lock:
                self.statuses["no answer"] += 1
                self.problems.append(f"{type(err).__name__}: {err}")
            return
        seconds = time.monotonic() - started
        with self.lock:
            self.statuses[response.status_code] += 1
            self.longest = max(self.longest, seconds)
            if response.status_code == 200:
                if response.headers.get("content-type") != "image/png":
                    self.problems.append("a 200 without a PNG")
            elif response.status_code == 503:
                if "retry-after" not in {k.lower() for k in response.headers}:
                    self.problems.append("a 503 without Retry-After")
            else:
                self.problems.append(f"{response.status_code}: {response.text[:200]}")

    def run(self, count: int, until=None, deadline_s: float = 240) -> None:
        """`count` requests, then more while `until()` is false (bounded by the deadline)."""
        stop = time.monotonic() + deadline_s
        with ThreadPoolExecutor(self.concurrency) as pool:
            while True:
                batch = count if self.sent == 0 else self.concurrency * 4
                list(pool.map(self.one, range(self.sent, self.sent + batch)))
                self.sent += batch
                if until is None or until() or time.monotonic() > stop:
                    return


def test_load_autoscaling_and_only_deliberate_503s(served_app) -> None:
    wait_until(lambda: base_status(served_app)[1] == 1, 180, "Base at one replica")
    seen = {"max": 1, "samples": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen["max"] = max(seen["max"], base_status(served_app)[1])
            seen["samples"] += 1
            done.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load = Load(served_app, concurrency=16)
    started = time.monotonic()
    load.run(300, until=lambda: seen["max"] >= 2)
    load_seconds = time.monotonic() - started
    done.set()
    watcher.join()
    risen = seen["max"]
    fall_started = time.monotonic()
    wait_until(lambda: base_status(served_app)[1] == 1, 180, "Base back at one replica")
    fell_after = time.monotonic() - fall_started
    print(
        f"\nload: {load.sent} requests at concurrency 16 in {load_seconds:.1f} s: "
        f"{dict(load.statuses)}; longest {load.longest:.1f} s; Base replicas 1 -> {risen} "
        f"-> 1 ({fell_after:.1f} s after the load)"
    )
    assert load.sent >= 300
    assert not load.problems, load.problems[:5]
    assert set(load.statuses) <= {200, 503}, load.statuses
    assert load.statuses[200] > 0
    assert risen == 2, "Base never scaled to two replicas under load"


def base_replica_pids(app, ray) -> dict[str, int]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,  # this session's Ray, not another's
        filters=[
            ("class_name", "=", REPLICA_CLASS.format(app=app.config.app_name)),
            ("state", "=", "ALIVE"),
        ],
        timeout=30,
    )
    return {actor.actor_id: actor.pid for actor in actors}


def test_killing_a_base_replica_under_load_recovers(served_app, ray_session) -> None:
    wait_until(lambda: base_status(served_app) == ("HEALTHY", 1), 180, "a healthy Base")
    before = wait_until(lambda: base_replica_pids(served_app, ray_session), 60, "Base's pid")
    victim_id, victim_pid = next(iter(before.items()))
    load = Load(served_app, concurrency=8)
    runner = threading.Thread(target=load.run, args=(120,))
    runner.start()
    wait_until(lambda: sum(load.statuses.values()) >= 8, 120, "answers before the kill")
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    runner.join()

    def replaced() -> bool:
        pids = base_replica_pids(served_app, ray_session)
        status, running = base_status(served_app)
        return status == "HEALTHY" and running >= 1 and victim_id not in pids

    wait_until(replaced, 180, "a replacement Base replica")
    recovered_after = time.monotonic() - killed_at
    after = Load(served_app, concurrency=4)
    after.run(8)
    failed = sum(n for status, n in load.statuses.items() if status != 200)
    print(
        f"\nkill: Base replica pid {victim_pid} killed under load; {load.sent} requests: "
        f"{dict(load.statuses)} ({failed} not 200); replaced after {recovered_after:.1f} s; "
        f"afterwards {dict(after.statuses)}"
    )
    assert after.statuses == Counter({200: 8}), after.problems
    assert set(load.statuses) <= {200, 503}, load.problems[:5]


def test_a_burst_past_the_queue_gets_503_with_retry_after(served_app) -> None:
    """48 slow requests at once; Base takes 8 per replica (at most 2) and queues 12."""

    def one(index: int) -> requests.Response:
        body = {"prompt": f"burst {index}", "seed": index, "width": 128, "height": 96,
                "steps": 20, "adapter": "bp@v0001"}  # fmt: skip
        timeout = served_app.config.request_timeout_s + 15
        return requests.post(
            f"{served_app.url}/v1/generate", json=body, headers=served_app.auth, timeout=timeout
        )

    with ThreadPoolExecutor(48) as pool:
        responses = list(pool.map(one, range(48)))
    statuses = Counter(r.status_code for r in responses)
    print(f"\nburst of 48: {dict(statuses)}")
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0 and statuses[200] > 0
    for response in responses:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == str(served_app.config.retry_after_s)
            assert response.json()["status"] == 503
    after = requests.post(
        f"{served_app.url}/v1/generate",
        json={"prompt": "after the burst", "seed": 1},
        headers=served_app.auth,
        timeout=90,
    )
    assert after.status_code == 200
