"""Which Ray a command joins is explicit: RAY_ADDRESS joins that cluster (and a dead one
fails in one line, at once); without it a command starts its own local Ray, whatever a
stale "current cluster" file says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bluepri import artifacts
from bluepri.config import SynthConfig
from bluepri.data.synth import synthesize
from stale_ray import dead_address, stale_cluster_env

BLUEPRI = str(Path(sys.executable).with_name("bluepri"))


def train_argv(data: Path, out: Path) -> list[str]:
    return [
        BLUEPRI, "train", "--pretrained_model_name_or_path=tiny:base", f"--train_data_dir={data}",
        f"--output_dir={out}", "--resolution=64", "--center_crop", "--max_train_steps=2",
        "--num_workers=1", "--report_to=none", "--mixed_precision=no", "--captioner=tiny:blip",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runtime-synth")
    synthesize(SynthConfig(out_dir=str(folder), num_images=4, seed=3))
    return folder


def test_train_starts_its_own_ray_despite_a_stale_current_cluster_file(
    tiny_models, small_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    # On a worker group: the run starts Ray itself (a one-worker local run would start it
    # only for the data stage, and train in its own process).
    argv = [*train_argv(small_set, out), "--worker_group"]
    with stale_cluster_env() as env:
        # The bound is a hang guard: Ray's own lookup of the dead address takes minutes.
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=420)
        ray_sessions = list((Path(env["RAY_TMPDIR"]) / "ray").glob("session_*"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert ray_sessions  # its own Ray, in the temp folder it was given
    assert artifacts.has_adapter(str(out))
    assert (out / artifacts.WEIGHTS_NAME).stat().st_size > 0
    # Where the run's wall time went, in metrics.json and on the terminal (issue 15).
    timings = json.loads((out / artifacts.METRICS_JSON).read_text())["timings"]
    phases = {k: v for k, v in timings.items() if k != "total"}
    for phase in ("ray", "data", "worker_group_start", "model_load", "first_step", "steps",
                  "validation_loss", "validation_images", "validation_report", "checkpoints",
                  "artifact", "worker_group_stop", "loop_other"):  # fmt: skip
        assert phase in phases, phase
    assert all(v >= 0 for k, v in phases.items() if k != "fit_other"), timings
    assert phases["ray"] > 0 and phases["worker_group_start"] > 0  # really measured
    assert "where the time went:" in done.stdout and "worker_group_start" in done.stdout

    # The same run again, on the cache the first one prepared, as a one-worker local run
    # trains by default: in its own process, and no Ray started at all.
    again = tmp_path / "again"
    argv = [*train_argv(small_set, again), f"--cache_root={out / 'cache'}"]
    with stale_cluster_env() as env:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=420)
        ray_sessions = list((Path(env["RAY_TMPDIR"]) / "ray").glob("session_*"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert artifacts.has_adapter(str(again)) and ray_sessions == []
    timings = json.loads((again / artifacts.METRICS_JSON).read_text())["timings"]
    assert "ray" not in timings and timings["steps"] > 0


def test_every_process_of_bluepri_ray_polls_train_workers_often(ray_session, monkeypatch) -> None:
    """Ray Train's controller checks its workers every 2 s by default, which a short run pays
    at each checkpoint and at its end: a local bluepri Ray gives every process the shorter
    interval, and so do the job runtime env and the platform image on clusters."""
    import ray
    import yaml

    from bluepri.runtime import TRAIN_POLL_ENV

    @ray.remote(num_cpus=0)
    def environment() -> dict[str, str | None]:
        import os

        return {name: os.environ.get(name) for name in TRAIN_POLL_ENV}

    assert ray.get(environment.remote()) == TRAIN_POLL_ENV
    # A value the environment sets wins (bench/overhead.py measures Ray's default with it).
    from bluepri.runtime import train_poll_env

    for name in TRAIN_POLL_ENV:
        monkeypatch.setenv(name, "1.5")
    assert train_poll_env() == dict.fromkeys(TRAIN_POLL_ENV, "1.5")
    repo = Path(__file__).resolve().parents[1]
    job_env = yaml.safe_load((repo / "jobs" / "runtime_env.yaml").read_text())["env_vars"]
    dockerfile = (repo / "cluster" / "Dockerfile").read_text().splitlines()
    for name, value in TRAIN_POLL_ENV.items():
        assert job_env[name] == value
        assert f"ENV {name}={value}" in dockerfile


def demo_argv(_data: Path, out: Path) -> list[str]:
    return [BLUEPRI, "demo", "--out", str(out)]  # the demo makes its own data


@pytest.mark.parametrize("argv_for", [train_argv, demo_argv], ids=["train", "demo"])
@pytest.mark.parametrize(
    "address, says",
    [
        (None, "no Ray cluster answers there"),
        ("http://127.0.0.1:8265", "dashboard (job submission) address"),
        ("not-an-address", "is not host:port"),
    ],
)
def test_a_bad_ray_address_fails_in_one_line_before_any_work(
    argv_for, address: str | None, says: str, tiny_models, small_set: Path, tmp_path: Path
) -> None:
    import os

    env = {**os.environ, "RAY_ADDRESS": address or dead_address()}
    out = tmp_path / "out"
    done = subprocess.run(argv_for(small_set, out), env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("bluepri: error: RAY_ADDRESS="), done.stderr
    assert says in lines[0]
    assert not out.exists()  # refused before the first step wrote anything


def test_no_address_means_a_local_ray_and_auto_means_the_recorded_one(monkeypatch) -> None:
    from bluepri.errors import BluepriError
    from bluepri.runtime import ray_address

    with stale_cluster_env() as env:
        monkeypatch.setenv("RAY_TMPDIR", env["RAY_TMPDIR"])
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        assert ray_address() is None
        monkeypatch.setenv("RAY_ADDRESS", "auto")  # the recorded cluster: dead, one line
        with pytest.raises(BluepriError, match="no Ray cluster answers there"):
            ray_address()
