"""Serve without Ray: the config and its Serve config file, the request guards, API keys,
and the champion's refresh bound (on a real registry, with a controllable clock)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bluepri.config import ModelsConfig, ServeConfig, ServeLimits, build_config
from bluepri.errors import BluepriError
from bluepri.serve.auth import ApiKeys
from bluepri.serve.champion import AdapterResolver
from bluepri.serve.schemas import ApiError, generation_requests, parse_generate

CONFIG = ServeConfig(
    models=ModelsConfig.tiny(),
    limits=ServeLimits(min_side=64, max_side=128, max_pixels=128 * 96, max_steps=20),
    default_size=64,
    default_steps=4,
)


def parsed(body) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_generate(raw, CONFIG)


def refused(body) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parsed(body)
    return caught.value


def test_defaults_fill_a_minimal_request() -> None:
    body = parsed({"prompt": "a plan", "seed": 4, "num_images": 2, "response_format": "json"})
    requests = generation_requests(body, CONFIG, "bp@v0001", seed=4)
    assert [r.seed for r in requests] == [4, 5]
    first = requests[0]
    assert (first.width, first.height, first.num_inference_steps) == (64, 64, 4)
    assert first.refine and first.adapter == "bp@v0001"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"prompt": "a", "width": 72 + 1}, 422, "width"),
        ({"prompt": "a", "height": 136}, 422, "height"),
        ({"prompt": "a", "width": 128, "height": 128}, 422, "width"),
        ({"prompt": "a", "steps": 21}, 422, "steps"),
        ({"prompt": "a", "steps": 0}, 422, "steps"),
        ({"prompt": "a", "guidance_scale": 31.0}, 422, "guidance_scale"),
        ({"prompt": "x" * 2001}, 422, "prompt"),
        ({"prompt": "a", "num_images": 2}, 422, "num_images"),
        ({"prompt": "a", "num_images": 5, "response_format": "json"}, 422, "num_images"),
        ({"prompt": "a", "seed": 2**63 - 1, "num_images": 2, "response_format": "json"}, 422,
         "seed"),
        ({"prompt": "a", "adapter": "../x"}, 400, "adapter"),
        ({"prompt": "a", "adapter": "a/b"}, 400, "adapter"),
        ({"prompt": "a", "extra": 1}, 422, "extra"),
        ({"prompt": 1}, 422, "prompt"),
        (b'{"prompt": "a", "guidance_scale": NaN}', 422, "guidance_scale"),
        (b'{"prompt": "a", "guidance_scale": 1e999}', 422, "guidance_scale"),
        (b'{"prompt": ', 400, None),
        (b"[1, 2]", 422, None),
        (b"[" * 50_000 + b"]" * 50_000, 400, None),
    ],
)  # fmt: skip
def test_guards_name_the_field(body, status: int, field: str | None) -> None:
    error = refused(body)
    assert (error.status, error.field) == (status, field)
    assert error.body() == {"error": error.message, "field": field, "status": status}


def test_refine_needs_a_refiner_and_enough_steps() -> None:
    no_refiner = CONFIG.model_copy(update={"models": ModelsConfig(base="tiny:base", refiner=None)})
    with pytest.raises(ApiError) as caught:
        parse_generate(b'{"prompt": "a", "refine": true}', no_refiner)
    assert caught.value.field == "refine"
    body = parsed({"prompt": "a", "steps": 1, "high_noise_frac": 0.9})
    with pytest.raises(ApiError) as caught:
        generation_requests(body, CONFIG, None, seed=0)
    assert (caught.value.status, caught.value.field) == (422, "steps")


def test_a_body_over_the_limit_is_refused() -> None:
    assert refused(b" " * (CONFIG.limits.max_body_bytes + 1)).status == 413


@pytest.mark.parametrize(
    "values",
    [
        {"default_size": 2048},  # outside the default limits' pixels
        {"limits": {"min_side": 512, "max_side": 256}},
        {"base": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}},
        {"adapter_name": "../x"},
        {"port": 0},
        {"unknown": 1},
    ],
)
def test_bad_configs_fail_in_one_line(values) -> None:
    with pytest.raises(BluepriError) as caught:
        build_config(ServeConfig, values)
    assert "\n" not in str(caught.value)


def test_api_keys_from_file_and_env(tmp_path: Path, monkeypatch) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nkey-one\n\nkey-two\n")
    monkeypatch.setenv("TEST_KEYS", "key-three, key-one")
    update = {"api_keys_file": str(keys_file), "api_keys_env": "TEST_KEYS"}
    config = CONFIG.model_copy(update=update)
    keys = ApiKeys.from_config(config)
    assert len(keys.digests) == 3
    for good in ("Bearer key-one", "bearer key-two", "Bearer  key-three "):
        keys.check(good)
    for bad in (None, "", "Bearer", "Basic key-one", "Bearer key-on", "Bearer key-one1",
                "Bearer " + "k" * 5000):  # fmt: skip
        with pytest.raises(ApiError) as caught:
            keys.check(bad)
        assert caught.value.status == 401
        assert caught.value.headers == {"WWW-Authenticate": "Bearer"}
    open_api = ApiKeys.from_config(CONFIG.model_copy(update={"api_keys_env": "UNSET_VAR_X"}))
    assert not open_api.enabled
    open_api.check(None)


def test_a_configured_key_file_must_hold_a_key(tmp_path: Path) -> None:
    for content in (None, "# only a comment\n"):
        path = tmp_path / "keys"
        if content is not None:
            path.write_text(content)
        with pytest.raises(BluepriError):
            ApiKeys.from_config(CONFIG.model_copy(update={"api_keys_file": str(path)}))


def test_the_champion_is_followed_within_the_refresh_bound(tiny_models, tmp_path: Path) -> None:
    from bluepri.models.tiny import save_random_adapter as make_adapter
    from bluepri.registry import AdapterRegistry

    registry = AdapterRegistry(tmp_path / "registry")
    for seed in range(2):
        registry.put(make_adapter(tmp_path / f"a{seed}", seed), "bp")
    registry.promote("bp", "v0001", "first")
    now = [100.0]
    resolver = AdapterResolver(registry, refresh_s=30.0, clock=lambda: now[0])
    assert resolver.resolve("bp").version == "v0001"
    registry.promote("bp", "v0002", "second")
    now[0] += 29.9  # within the bound the cached champion may still answer
    assert resolver.resolve("bp@champion").version == "v0001"
    now[0] += 0.2  # past the bound it must not
    pinned = resolver.resolve("bp")
    assert (pinned.version, pinned.sha256) == ("v0002", registry.verify("bp", "v0002").sha256)
    assert resolver.resolve("bp@v0001").label == "bp@v0001"
    assert resolver.resolve("bp@latest").version == "v0002"
    registry.rollback("bp", "back")
    now[0] += 30.0
    assert resolver.resolve("bp").version == "v0001"
    for reference, status in (("nope", 404), ("bp@v0009", 404), ("bp@../v1", 400), ("..", 400)):
        with pytest.raises(ApiError) as caught:
            resolver.resolve(reference)
        assert (caught.value.status, caught.value.field) == (status, "adapter")


def test_write_config_is_a_valid_serve_config(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    from bluepri.cli import main

    out = tmp_path / "serve.yaml"
    code = main(["serve", "--write-config", str(out), "--tiny", "--port", "8123"])
    assert code == 0
    document = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(document)
    (app,) = document["applications"]
    assert app["import_path"] == "bluepri.serve:build_app"
    assert document["http_options"]["host"] == "127.0.0.1"
    assert document["http_options"]["port"] == 8123
    config = build_config(ServeConfig, app["args"])  # what build_app receives
    assert config.models == ModelsConfig.tiny() and config.port == 8123


def test_the_example_serve_config_is_current() -> None:
    """jobs/configs/serve.yaml is what `bluepri serve --write-config` writes for it."""
    from bluepri.serve.deploy import serve_config

    path = Path(__file__).parent.parent / "jobs" / "configs" / "serve.yaml"
    document = yaml.safe_load(path.read_text())
    config = build_config(ServeConfig, document["applications"][0]["args"])
    assert document == serve_config(config)
