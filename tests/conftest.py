"""Shared fixtures: one BLUEPRI_HOME with the tiny models built once, one local Ray per session.

Unit tests never start Ray. Integration tests ask for `ray_session`; every one of them shares
the same local Ray (started once, seconds), and cleans up whatever it started on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# transformers warns on import that torchvision is absent; we do not install it on purpose.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No hub here: set before `datasets`/`huggingface_hub` are imported (they read it once), so a
# test of an unreachable hub id fails at once instead of after ~45 s of network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def bluepri_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide BLUEPRI_HOME, set before anything (Ray workers too) reads it."""
    home = tmp_path_factory.mktemp("bluepri-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BLUEPRI_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny_models(bluepri_home: Path) -> dict[str, Path]:
    """The tiny base, refiner and BLIP folders, built once per session."""
    from bluepri.models.loading import tiny_folder

    return {name: tiny_folder(name) for name in ("base", "refiner", "blip")}


@pytest.fixture(scope="session")
def tiny_pipelines(tiny_models: dict[str, Path]):
    """Base + refiner loaded once (read-only use: tests must not leave adapters active)."""
    from bluepri.config import ModelsConfig
    from bluepri.generate import load_pipelines

    return load_pipelines(ModelsConfig.tiny())


@pytest.fixture(scope="session")
def ray_session(bluepri_home: Path):
    """ONE local Ray for the whole session (2 CPUs, with the dashboard that Tune needs)."""
    import ray

    from bluepri.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()
