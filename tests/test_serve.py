"""The Serve application over real HTTP on the session's Ray (tiny models): adapters per
request, same bytes as `generate()` batched or not, guards, the adapter LRU, the champion
following the registry, metrics on Ray's endpoint."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from bluepri.config import ModelsConfig
from bluepri.generate import GenerationRequest, generate, load_pipelines
from polling import wait_until

pytestmark = pytest.mark.integration

TIMEOUT_S = 90  # the service answers within its own 60 s; past this, it hung


@pytest.fixture(scope="module")
def reference_pipes(tiny_models):
    """`generate()`'s side of the comparisons (it loads adapters, so not the shared one)."""
    return load_pipelines(ModelsConfig.tiny())


def post(app, body, headers=None, **kwargs) -> requests.Response:
    headers = {**app.auth, **(headers or {})}
    return requests.post(
        f"{app.url}/v1/generate", json=body, headers=headers, timeout=TIMEOUT_S, **kwargs
    )


def ok_png(response: requests.Response) -> bytes:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return response.content


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def reference(app, pipes, body: dict) -> bytes:
    """What `generate()` makes in this process for the same request."""
    config = app.config
    request = GenerationRequest(
        prompt=body["prompt"],
        prompt_2=body.get("prompt_2"),
        negative_prompt=body.get("negative_prompt"),
        width=body.get("width", config.default_size),
        height=body.get("height", config.default_size),
        num_inference_steps=body.get("steps", config.default_steps),
        guidance_scale=body.get("guidance_scale", config.default_guidance),
        seed=body["seed"],
        refine=body.get("refine", True),
        high_noise_frac=body.get("high_noise_frac", 0.8),
        adapter=body.get("adapter"),
    )
    return png(generate(pipes, request, app.registry).image)


BODY = {"prompt": "a floor plan of a small flat", "prompt_2": "white lines on blue", "seed": 7}


def test_adapters_differ_and_base_only_and_refined_work(served_app) -> None:
    images = {}
    for adapter in ("bp@v0001", "bp@v0002", "none"):
        for refine in (False, True):
            response = post(served_app, {**BODY, "adapter": adapter, "refine": refine})
            images[adapter, refine] = ok_png(response)
            assert response.headers["X-Bluepri-Adapter"] == adapter
            sha = response.headers["X-Bluepri-Adapter-Sha256"]
            if adapter == "none":
                assert sha == "none"
            else:
                name, version = adapter.split("@")
                assert sha == served_app.registry.verify(name, version).sha256
            assert float(response.headers["X-Bluepri-Seconds-Total"]) > 0
            refiner_seconds = float(response.headers["X-Bluepri-Seconds-Refiner"])
            assert (refiner_seconds > 0) == refine
            pixels = np.asarray(Image.open(io.BytesIO(images[adapter, refine])))
            assert pixels.std() > 0
    assert len(set(images.values())) == len(images)  # every adapter and stage mattered
    # Naming no adapter means the default adapter's champion.
    champion = f"bp@{served_app.registry.champion('bp')}"
    default = post(served_app, {**BODY, "refine": False})
    assert default.headers["X-Bluepri-Adapter"] == champion
    assert ok_png(default) == images[champion, False]


@pytest.mark.parametrize("refine", [False, True])
def test_http_image_equals_generate(served_app, reference_pipes, refine: bool) -> None:
    body = {**BODY, "adapter": "bp@v0002", "refine": refine, "negative_prompt": "blurry"}
    served = ok_png(post(served_app, body))
    assert served == reference(served_app, reference_pipes, body)


def test_same_seed_same_bytes_when_batched_with_others(served_app) -> None:
    target = {"prompt": "a gear with twelve teeth", "seed": 11, "adapter": "bp@v0002"}
    alone = ok_png(post(served_app, target))
    others = [
        {"prompt": f"drawing number {i}", "seed": 100 + i, "adapter": "bp@v0002"} for i in range(7)
    ]
    batched_bytes = []
    for _ in range(5):  # rounds until the target shared a batch (normally the first)
        bodies = [*others[:3], {**target, "response_format": "json"}, *others[3:]]
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda b: post(served_app, b), bodies))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        made = responses[3].json()
        served = base64.b64decode(made["images"][0]["png_base64"])
        assert served == alone
        if made["served_by"]["batch_size"] > 1:
            batched_bytes.append(served)
            break
    assert batched_bytes, "the target never shared a batch with other requests"


def test_num_images_are_consecutive_seeds(served_app) -> None:
    body = {**BODY, "adapter": "bp@v0001", "num_images": 3, "response_format": "json"}
    response = post(served_app, body)
    assert response.status_code == 200, response.text
    made = response.json()
    assert [image["seed"] for image in made["images"]] == [7, 8, 9]
    assert made["adapter"]["version"] == "v0001"
    for image in made["images"]:
        single = ok_png(post(served_app, {**BODY, "adapter": "bp@v0001", "seed": image["seed"]}))
        assert base64.b64decode(image["png_base64"]) == single


def bad_requests(app) -> list[tuple[str, dict, bytes | None, dict]]:
    """(why, json body or None, raw body, extra headers): each must get a 4xx JSON error."""
    good = {"prompt": "a chair", "seed": 1, "refine": False}
    cases: list[tuple[str, dict, bytes | None, dict]] = []

    def body(why, **changes):
        cases.append((why, {**good, **changes}, None, {}))

    def raw(why, data: bytes, headers=None):
        cases.append((why, {}, data, headers or {"Content-Type": "application/json"}))

    body("prompt missing", prompt=None)
    cases[-1][1].pop("prompt")
    body("prompt empty", prompt="")
    body("prompt a number", prompt=42)
    body("prompt a list", prompt=["a", "b"])
    body("prompt 100 kB", prompt="x" * 100_000)
    body("prompt_2 too long", prompt_2="y" * 5000)
    body("negative prompt an object", negative_prompt={"a": 1})
    body("width a string", width="64")
    body("width not a multiple of 8", width=65)
    body("height not a multiple of 8", height=100)
    body("width too small", width=32)
    body("width too large", width=4096)
    body("height negative", height=-64)
    body("too many pixels", width=128, height=128)
    body("width a float", width=64.5)
    body("steps zero", steps=0)
    body("steps negative", steps=-3)
    body("steps huge", steps=10**9)
    body("steps enormous integer", steps=10**40)
    body("steps a bool", steps=True)
    body("guidance negative", guidance_scale=-1.0)
    body("guidance too large", guidance_scale=1e6)
    body("guidance a string", guidance_scale="high")
    body("seed negative", seed=-1)
    body("seed too large", seed=2**64)
    body("num_images zero", num_images=0)
    body("num_images too many", num_images=50, response_format="json")
    body("num_images > 1 as png", num_images=2)
    body("unknown response format", response_format="gif")
    body("unknown field", colour="blue")
    body("high_noise_frac 1", high_noise_frac=1.0, refine=True)
    body("refine with too few steps", refine=True, steps=1, high_noise_frac=0.9)
    body("adapter_scale too large", adapter_scale=100.0)
    body("adapter unknown", adapter="no-such-adapter")
    body("adapter version unknown", adapter="bp@v0099")
    body("adapter path-like", adapter="../../etc/passwd")
    body("adapter dotdot in name", adapter="bp..x")
    body("adapter with slash", adapter="bp/v0001")
    body("adapter absolute path", adapter="/tmp")
    body("adapter version dotdot", adapter="bp@../v0001")
    body("adapter empty", adapter="")
    body("adapter a number", adapter=3)
    body("refine a string", refine="yes")
    raw("NaN guidance", b'{"prompt": "a", "guidance_scale": NaN}')
    raw("Infinity guidance", b'{"prompt": "a", "guidance_scale": Infinity}')
    raw("-Infinity guidance", b'{"prompt": "a", "guidance_scale": -Infinity}')
    raw("overflowing float", b'{"prompt": "a", "guidance_scale": 1e999}')
    raw("bad JSON", b'{"prompt": "a",')
    raw("not JSON at all", b"prompt=a")
    raw("JSON list", b'["prompt", "a"]')
    raw("JSON string", b'"a"')
    raw("empty body", b"")
    raw("deeply nested JSON", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    raw("body over the limit", b'{"prompt": "' + b"z" * (2 << 20) + b'"}')
    raw("invalid UTF-8", b'{"prompt": "\xff\xfe"}')
    raw("wrong content type", json.dumps(good).encode(), {"Content-Type": "text/plain"})
    raw("form content type", b"prompt=a", {"Content-Type": "application/x-www-form-urlencoded"})
    cases.append(("no API key", good, None, {"Authorization": ""}))
    cases.append(("wrong API key", good, None, {"Authorization": "Bearer not-the-key"}))
    cases.append(("wrong scheme", good, None, {"Authorization": f"Basic {app.api_key}"}))
    cases.append(("key too long", good, None, {"Authorization": "Bearer " + "k" * 10000}))
    return cases


def test_bad_requests_get_4xx_json_and_the_service_stays_up(served_app) -> None:
    cases = bad_requests(served_app)
    assert len(cases) >= 40
    seen = {}
    for why, body, data, headers in cases:
        if data is None:
            response = post(served_app, body, headers=headers)
        else:
            response = requests.post(
                f"{served_app.url}/v1/generate",
                data=data,
                headers={**served_app.auth, **headers},
                timeout=TIMEOUT_S,
            )
        assert 400 <= response.status_code < 500, (why, response.status_code, response.text)
        assert response.headers["content-type"] == "application/json", why
        error = response.json()
        assert error["status"] == response.status_code, why
        assert error["error"] and len(error["error"]) < 1000, why
        seen[why] = (response.status_code, error["field"])
    # The codes and fields say what was wrong.
    assert seen["prompt 100 kB"] == (422, "prompt")
    assert seen["width not a multiple of 8"] == (422, "width")
    assert seen["steps huge"] == (422, "steps")
    assert seen["NaN guidance"] == (422, "guidance_scale")
    assert seen["adapter unknown"] == (404, "adapter")
    assert seen["adapter version unknown"] == (404, "adapter")
    assert seen["adapter path-like"] == (400, "adapter")
    assert seen["bad JSON"][0] == 400
    assert seen["wrong content type"][0] == 415
    assert seen["body over the limit"][0] == 413
    assert seen["no API key"][0] == seen["wrong API key"][0] == 401
    ok_png(post(served_app, {"prompt": "a chair", "seed": 1, "refine": False}))


def test_other_routes(served_app) -> None:
    assert requests.get(f"{served_app.url}/healthz", timeout=30).json() == {"status": "ok"}
    locked = requests.get(f"{served_app.url}/v1/adapters", timeout=30)
    assert locked.status_code == 401 and locked.json()["status"] == 401
    listing = requests.get(f"{served_app.url}/v1/adapters", headers=served_app.auth, timeout=30)
    adapters = {a["name"]: a for a in listing.json()["adapters"]}
    assert listing.json()["default"] == "bp"
    assert adapters["bp"]["versions"] == ["v0001", "v0002"]
    assert adapters["bp"]["champion"] == served_app.registry.champion("bp")
    schema = requests.get(f"{served_app.url}/openapi.json", timeout=30).json()
    assert {"/v1/generate", "/v1/adapters", "/healthz"} <= set(schema["paths"])
    assert requests.get(f"{served_app.url}/docs", timeout=30).status_code == 200
    missing = requests.get(f"{served_app.url}/no/such/route", timeout=30)
    assert missing.status_code == 404 and missing.json()["status"] == 404
    assert (
        requests.get(f"{served_app.url}/", timeout=30)
        .headers["content-type"]
        .startswith("text/html")
    )


def test_adapter_lru_evicts_stays_bounded_and_right(served_app, reference_pipes) -> None:
    """Five adapters, two per replica (at most two Base replicas): evictions must happen."""
    adapters = ["bp@v0001", "bp@v0002", "extra@v0001", "extra@v0002", "extra@v0003"]
    cap = served_app.config.max_adapters_per_replica
    expected = {}
    replicas = {}
    for round_ in range(2):
        for adapter in adapters:
            body = {"prompt": "a kitchen", "seed": 3, "adapter": adapter, "refine": False}
            response = post(served_app, {**body, "response_format": "json"})
            assert response.status_code == 200, response.text
            made = response.json()
            served = base64.b64decode(made["images"][0]["png_base64"])
            if round_ == 0:
                expected[adapter] = reference(served_app, reference_pipes, body)
            assert served == expected[adapter], adapter
            replica = made["served_by"]
            assert replica["adapters_loaded"] <= cap
            replicas[replica["replica"]] = replica
    assert len(set(expected.values())) == len(adapters)
    assert sum(r["evictions"] for r in replicas.values()) >= 1
    assert sum(r["loads"] for r in replicas.values()) > cap


def test_a_failing_adapter_load_fails_only_that_request(served_app, tmp_path) -> None:
    """Weights for another architecture are valid safetensors that load as nothing."""
    import hashlib

    import torch
    from safetensors.torch import save_file

    from bluepri.artifacts import ADAPTER_JSON, WEIGHTS_NAME, AdapterInfo

    folder = tmp_path / "foreign"
    folder.mkdir()
    save_file({"transformer.blocks.0.lora_A.weight": torch.ones(4, 8)}, folder / WEIGHTS_NAME)
    digest = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    info = AdapterInfo(base="tiny:base", rank=4, alpha=4, weights={"sha256": digest})
    (folder / ADAPTER_JSON).write_text(info.to_json())
    served_app.registry.put(folder, "foreign")
    for _ in range(2):
        response = post(served_app, {"prompt": "a car", "adapter": "foreign@v0001"})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "adapter"
        assert "failed to load" in response.json()["error"]
        ok_png(post(served_app, {"prompt": "a car", "adapter": "bp@v0002", "refine": False}))


def champion_version(app) -> str:
    response = post(app, {"prompt": "a plan", "seed": 5, "refine": False})
    ok_png(response)
    return response.headers["X-Bluepri-Adapter"].split("@")[1]


def wait_for_champion(app, version: str, deadline_s: float) -> float:
    """Seconds until champion requests report `version` (polling real answers)."""
    started = time.monotonic()
    wait_until(lambda: champion_version(app) == version, deadline_s, f"champion {version}", 0)
    return time.monotonic() - started


def test_champion_follows_promotion_and_rollback(served_app) -> None:
    registry = served_app.registry
    bound = served_app.config.champion_refresh_s
    before = registry.champion("bp")
    assert champion_version(served_app) == before
    other = "v0002" if before == "v0001" else "v0001"
    registry.promote("bp", other, "test: promote while serving")
    # The refresh bound plus the time a slow machine takes to answer a few requests.
    switched = wait_for_champion(served_app, other, deadline_s=bound + 30)
    registry.rollback("bp", "test: roll back while serving")
    rolled_back = wait_for_champion(served_app, before, deadline_s=bound + 30)
    print(f"champion switch seen after {switched:.2f} s, rollback after {rolled_back:.2f} s")
    assert registry.champion("bp") == before


def test_in_flight_requests_keep_their_pinned_version(served_app) -> None:
    """Images of one request, made while the champion changes, all come from one version."""
    registry = served_app.registry
    before = registry.champion("bp")
    other = "v0002" if before == "v0001" else "v0001"
    body = {"prompt": "a motorcycle", "seed": 20, "num_images": 4, "response_format": "json"}
    references = {
        version: [
            ok_png(post(served_app, {**body, "adapter": f"bp@{version}", "num_images": 1,
                                     "response_format": "png", "seed": 20 + i}))
            for i in range(4)
        ]
        for version in (before, other)
    }  # fmt: skip
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, served_app, body)
        registry.promote("bp", other, "test: promote under an in-flight request")
        made = pending.result().json()
    try:
        version = made["adapter"]["version"]
        images = [base64.b64decode(i["png_base64"]) for i in made["images"]]
        assert images == references[version]
    finally:
        registry.rollback("bp", "test: restore the champion")
        wait_for_champion(served_app, before, deadline_s=served_app.config.champion_refresh_s + 30)


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_metrics_reach_rays_endpoint(served_app, ray_session) -> None:
    from bluepri.telemetry import SERVE_METRICS

    port = next(n["MetricsExportPort"] for n in ray_session.nodes() if n["Alive"])
    ok_png(post(served_app, {"prompt": "a wing", "adapter": "bp@v0001"}))
    wanted = {f"ray_{name}" for name in SERVE_METRICS}

    def exported() -> str | None:
        text = scrape(port)
        return text if all(f"\n{name}" in text for name in wanted) else None

    # Ray exports every few seconds.
    text = wait_until(exported, 90, f"{sorted(wanted)} on the metrics endpoint")
    requests_lines = [
        line for line in text.splitlines() if line.startswith("ray_bluepri_serve_requests")
    ]
    assert any('adapter="bp@v0001"' in line and 'status="200"' in line for line in requests_lines)
