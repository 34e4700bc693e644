"""Many processes on one registry at once: puts, promotions, rollbacks and gets.

8 worker processes, started once for the module with the "spawn" start method (fresh
interpreters, as separate jobs and serve replicas are); each test hands every one of them a
task, releases them together through a Barrier and compares what each says it did with
what the registry holds afterwards. Three kinds of root: a local path and a `file://` URI
(exclusive create by mkdir and hard link) and a `SubTreeFileSystem`, which is not a
LocalFileSystem and so takes the claim protocol that object stores take.

Artifacts are small random safetensors files with a valid adapter.json: the registry checks
them exactly as it checks trained LoRAs, and no process has to load a model.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pytest
from safetensors.numpy import save_file

from bluepri.artifacts import ADAPTER_JSON, MODEL_CARD, WEIGHTS_NAME, AdapterInfo, WeightsRef
from bluepri.registry import AdapterRegistry

PROCESSES = 8
WAIT_S = 120  # a bound on a hung process, not a synchronisation: the Barrier starts them


@dataclass(frozen=True)
class Where:
    """How a process opens the shared registry (picklable, unlike a registry)."""

    kind: str  # local | file | claims
    folder: str

    def open(self) -> AdapterRegistry:
        cache = f"{self.folder}/cache"
        if self.kind == "local":
            return AdapterRegistry(f"{self.folder}/registry", cache_dir=cache)
        if self.kind == "file":
            return AdapterRegistry(f"file://{self.folder}/registry", cache_dir=cache)
        subtree = pafs.SubTreeFileSystem(self.folder, pafs.LocalFileSystem())
        return AdapterRegistry("registry", filesystem=subtree, cache_dir=cache)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_artifact(folder: Path, seed: int, size: int = 32) -> Path:
    """A random rank-4 LoRA pair (`size` features) in safetensors, adapter.json, model card."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    prefix = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora"
    tensors = {
        f"{prefix}.down.weight": rng.standard_normal((4, size), dtype=np.float32),
        f"{prefix}.up.weight": rng.standard_normal((size, 4), dtype=np.float32),
    }
    save_file(tensors, str(folder / WEIGHTS_NAME))
    info = AdapterInfo(
        base="tiny:base",
        rank=4,
        alpha=4.0,
        metrics={"final_val_loss": float(seed)},
        weights=WeightsRef(sha256=sha256_file(folder / WEIGHTS_NAME)),
    )
    (folder / ADAPTER_JSON).write_text(info.to_json())
    (folder / MODEL_CARD).write_text(f"# adapter {seed}\n")
    return folder


class Workers:
    """PROCESSES spawned interpreters kept for the module (spawning is the slow part): each
    `run` hands every one of them exactly one task, and a Barrier starts the tasks together.
    """

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.barrier = context.Barrier(count)
        self.results = context.Queue()
        self.inboxes = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(target=serve_tasks, args=(inbox, self.barrier, self.results))
            for inbox in self.inboxes
        ]
        for process in self.processes:
            process.start()

    def run(self, task: Callable[..., Any], argsets: list[tuple]) -> list[Any]:
        """`task(*args)` in one process per argument tuple; their return values in order.
        A failure in any process fails the test with that process's traceback."""
        assert len(argsets) == len(self.inboxes)
        for index, (inbox, args) in enumerate(zip(self.inboxes, argsets, strict=True)):
            inbox.put((index, task, args))
        outcomes = dict(self.results.get(timeout=WAIT_S) for _ in argsets)
        failures = [value for ok, value in outcomes.values() if not ok]
        assert not failures, failures[0]
        return [outcomes[index][1] for index in range(len(argsets))]

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for process in self.processes:
            process.join(timeout=WAIT_S)


def serve_tasks(inbox, barrier, results) -> None:
    """A worker's loop: wait for a task, start it with the others, report what came of it."""
    for index, task, args in iter(inbox.get, None):
        try:
            barrier.wait(timeout=WAIT_S)
            results.put((index, (True, task(*args))))
        except BaseException:
            results.put((index, (False, f"process {index}:\n{traceback.format_exc()}")))


@pytest.fixture(scope="module")
def workers():
    pool = Workers(PROCESSES)
    yield pool
    pool.close()


# -- what each process does ------------------------------------------------------------------


def put_one(where: Where, name: str, folder: str) -> tuple[str, str]:
    record = where.open().put(folder, name)
    return record.version, record.sha256


def promote_repeatedly(where: Where, name: str, version: str, times: int) -> list[str]:
    registry = where.open()
    return [registry.promote(name, version, f"{version} round {i}").reason for i in range(times)]


def get_each(where: Where, name: str, versions: list[str]) -> list[str]:
    registry = where.open()
    return [sha256_file(registry.get(name, version) / WEIGHTS_NAME) for version in versions]


def put_promote_rollback_get(
    where: Where, name: str, index: int, folders: list[str]
) -> list[tuple[str, str, str]]:
    """Two puts, both promoted, one rollback, then every own version and the champion got:
    (action, version, sha256 or reason) for every event this process caused."""
    registry = where.open()
    records = [registry.put(folder, name) for folder in folders]
    done = [("put", r.version, r.sha256) for r in records]
    for record in records:
        decision = registry.promote(name, record.version, f"process {index} {record.version}")
        done.append(("promote", record.version, decision.reason))
    back = registry.rollback(name, f"process {index} rolls back")
    done.append(("rollback", back.version, back.reason))
    for record in records:
        assert sha256_file(registry.get(name, record.version) / WEIGHTS_NAME) == record.sha256
    assert (registry.get(name) / WEIGHTS_NAME).is_file()
    return done


# -- the tests ---------------------------------------------------------------------------------

KINDS = ["local", "file", "claims"]


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_puts_give_distinct_versions_that_each_verify(
    kind, workers, tmp_path: Path
) -> None:
    where = Where(kind, str(tmp_path))
    folders = [str(small_artifact(tmp_path / "src" / str(i), seed=i)) for i in range(PROCESSES)]
    stored = workers.run(put_one, [(where, "bp", folder) for folder in folders])

    versions = [version for version, _ in stored]
    assert len(set(versions)) == PROCESSES, versions
    registry = where.open()
    assert registry.versions("bp") == sorted(versions)
    for (version, digest), folder in zip(stored, folders, strict=True):
        assert digest == sha256_file(Path(folder) / WEIGHTS_NAME)
        assert registry.verify("bp", version).sha256 == digest
    assert sorted(e["version"] for e in registry.history("bp") if e["action"] == "put") == sorted(
        versions
    )


@pytest.mark.parametrize("kind", ["local", "claims"])
def test_concurrent_promotions_lose_no_event(kind, workers, tmp_path: Path) -> None:
    where = Where(kind, str(tmp_path))
    registry = where.open()
    versions = [
        registry.put(small_artifact(tmp_path / "src" / str(i), seed=i), "bp").version
        for i in range(PROCESSES)
    ]
    reasons = workers.run(promote_repeatedly, [(where, "bp", v, 3) for v in versions])

    promotions = [e for e in registry.history("bp") if e["action"] == "promote"]
    assert sorted(e["reason"] for e in promotions) == sorted(r for rs in reasons for r in rs)
    assert registry.champion("bp") == promotions[-1]["version"]


def test_concurrent_gets_from_a_file_uri_all_succeed(workers, tmp_path: Path) -> None:
    """Every process downloads the same versions into one shared cache at the same time."""
    where = Where("file", str(tmp_path))
    registry = where.open()
    records = [
        registry.put(small_artifact(tmp_path / "src" / str(i), seed=i, size=1 << 17), "bp")
        for i in range(6)
    ]
    versions = [r.version for r in records]
    got = workers.run(get_each, [(where, "bp", versions)] * PROCESSES)
    assert got == [[r.sha256 for r in records]] * PROCESSES


@pytest.mark.parametrize("kind", ["local", "file"])
def test_eight_processes_put_promote_rollback_and_get(kind, workers, tmp_path: Path) -> None:
    """Acceptance: distinct versions, every version verifies, every event is in the history,
    the champion is one of the promoted versions."""
    where = Where(kind, str(tmp_path))
    argsets = []
    for index in range(PROCESSES):
        folders = [
            str(small_artifact(tmp_path / "src" / f"{index}-{k}", 10 * index + k)) for k in (1, 2)
        ]
        argsets.append((where, "bp", index, folders))
    done = [event for events in workers.run(put_promote_rollback_get, argsets) for event in events]

    registry = where.open()
    puts = [(version, digest) for action, version, digest in done if action == "put"]
    assert len({version for version, _ in puts}) == 2 * PROCESSES
    for version, digest in puts:
        assert registry.verify("bp", version).sha256 == digest
    history = registry.history("bp")
    recorded = {
        (e["action"], e["version"], e["sha256"] if e["action"] == "put" else e["reason"])
        for e in history
    }
    assert set(done) <= recorded
    assert len(history) == len(done)  # and nothing else happened
    promoted = {version for action, version, _ in done if action == "promote"}
    assert registry.champion("bp") in promoted
