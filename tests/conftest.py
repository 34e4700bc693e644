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
# Trackers (`--report_to`): wandb offline (no account, no network, no login prompt) and quiet;
# MLflow in each run's own store. Set at import, before the session's Ray starts: its workers,
# where rank 0 opens the trackers, inherit this environment.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)


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


# -- the served application (one per session) --------------------------------------------

SERVED_ADAPTER = "bp"  # two versions, v0001 the champion
EXTRA_ADAPTER = "extra"  # three more versions, for the adapter LRU
SERVED_FIXTURE = "served_app"


CLUSTER_FIXTURE = "local_cluster"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests on the local multi-node cluster run first, before the session's Ray exists
    (`ray stop` ends every Ray on the machine); tests on the served app run last: its
    replicas hold CPUs until the session ends."""

    def order(item) -> int:
        fixtures = getattr(item, "fixturenames", ())
        return 0 if CLUSTER_FIXTURE in fixtures else 2 if SERVED_FIXTURE in fixtures else 1

    items.sort(key=order)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServedApp:
    """The session's running service: base URL, API key, registry, default adapter name."""

    def __init__(self, url: str, api_key: str, registry, adapter_name: str, config):
        self.url = url
        self.api_key = api_key
        self.registry = registry
        self.adapter_name = adapter_name
        self.config = config

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def served_config(registry_root: Path, keys_file: Path):
    """Tiny models, small limits, a 1 s champion bound, Base autoscaling 1 -> 2 replicas on
    fractional CPUs (the whole app reserves at most 0.8 of the session's 2 CPUs) with a
    short queue (12 at the ingress's handle), so a burst gets deliberate 503s."""
    from bluepri.config import (
        AutoscalingSettings,
        BatchedDeploymentSettings,
        DeploymentSettings,
        ModelsConfig,
        ServeConfig,
        ServeLimits,
    )

    return ServeConfig(
        models=ModelsConfig.tiny(),
        registry=str(registry_root),
        adapter_name=SERVED_ADAPTER,
        champion_refresh_s=1.0,
        limits=ServeLimits(
            min_side=64, max_side=128, max_pixels=128 * 96, max_steps=20,
            max_prompt_chars=1000, max_num_images=4,
        ),
        default_size=64,
        default_steps=4,
        max_adapters_per_replica=2,
        request_timeout_s=60.0,
        ingress=DeploymentSettings(num_cpus=0.05, max_ongoing_requests=64, max_queued_requests=128),
        base=BatchedDeploymentSettings(
            num_cpus=0.25, max_ongoing_requests=8, max_queued_requests=12, max_batch_size=4,
            autoscaling=AutoscalingSettings(
                min_replicas=1, max_replicas=2, target_ongoing_requests=2,
                upscale_delay_s=0.5, downscale_delay_s=3.0, look_back_period_s=2.0,
                metrics_interval_s=0.5,
            ),
        ),
        refiner=BatchedDeploymentSettings(
            num_cpus=0.25, max_ongoing_requests=8, max_queued_requests=64, max_batch_size=4
        ),
        api_keys_file=str(keys_file),
        api_keys_env=None,
        port=free_port(),
    )  # fmt: skip


def served_registry(root: Path):
    """A registry of real adapters (SERVED_ADAPTER: 2 versions, EXTRA_ADAPTER: 3, each with
    v0001 the champion) and a file holding one API key: (registry, api_key, keys_file)."""
    import secrets

    from bluepri.models.tiny import save_random_adapter as make_adapter
    from bluepri.registry import AdapterRegistry

    registry = AdapterRegistry(root / "registry")
    for seed, name in enumerate([SERVED_ADAPTER] * 2 + [EXTRA_ADAPTER] * 3):
        registry.put(make_adapter(root / f"adapter-{seed}", seed), name)
    registry.promote(SERVED_ADAPTER, "v0001", "the served app's first champion")
    registry.promote(EXTRA_ADAPTER, "v0001", "a champion for the extra adapter")
    api_key = secrets.token_urlsafe(24)
    keys_file = root / "api-keys"
    keys_file.write_text(f"# test keys\n{api_key}\n")
    return registry, api_key, keys_file


@pytest.fixture(scope="session")
def served_app(ray_session, tiny_models, tmp_path_factory: pytest.TempPathFactory):
    """The Serve app on the session's Ray, with a registry of real adapters and an API key."""
    from ray import serve

    from bluepri.serve.deploy import start, stop

    registry, api_key, keys_file = served_registry(tmp_path_factory.mktemp("served"))
    config = served_config(registry.uri, keys_file)
    url = start(config)
    yield ServedApp(url, api_key, registry, SERVED_ADAPTER, config)
    stop(config)
    serve.shutdown()
