"""Which Ray a command joins is explicit: RAY_ADDRESS joins that cluster (and a dead one
fails in one line, at once); without it a command starts its own local Ray, whatever a
stale "current cluster" file says.
"""

from __future__ import annotations

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
    with stale_cluster_env() as env:
        # The bound is a hang guard: Ray's own lookup of the dead address takes minutes.
        done = subprocess.run(
            train_argv(small_set, out), env=env, capture_output=True, text=True, timeout=420
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert artifacts.has_adapter(str(out))
    assert (out / artifacts.WEIGHTS_NAME).stat().st_size > 0


@pytest.mark.parametrize(
    "address, says",
    [
        (None, "no Ray cluster answers there"),
        ("http://127.0.0.1:8265", "dashboard (job submission) address"),
        ("not-an-address", "is not host:port"),
    ],
)
def test_a_bad_ray_address_fails_in_one_line(
    address: str | None, says: str, tiny_models, small_set: Path, tmp_path: Path
) -> None:
    import os

    env = {**os.environ, "RAY_ADDRESS": address or dead_address()}
    done = subprocess.run(
        train_argv(small_set, tmp_path / "adapter"),
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("bluepri: error: RAY_ADDRESS="), done.stderr
    assert says in lines[0]
    assert not (tmp_path / "adapter").exists()


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
