"""The Serve application: Ingress (FastAPI) -> Base (adapters multiplexed, batched) -> Refiner.

- **Ingress** checks the key and the body, pins the adapter reference to (name, version,
  sha256) once (`champion.py`), and sends each image's request to Base with
  `multiplexed_model_id="name@version"` (`base` without an adapter), so Serve routes it
  to a replica that already holds that adapter. Refining requests go on to Refiner with
  the base's latents. A deadline, overload (`BackPressureError`) and dead replicas become
  504 / 503 JSON answers; a replica that died under a request is tried once more (the
  same seed gives the same bytes, so a retry is safe).
- **Base** loads a verified adapter per model id (`@serve.multiplexed`: the loader puts it
  into the pipeline's bounded `AdapterCache`), gathers requests with `@serve.batch` (Serve
  splits batches by model id), and runs `run_base` once per group of compatible requests:
  latents for refining requests, PNG bytes for the others.
- **Refiner** batches (latents, request) pairs through `run_refiner`.

The pipelines run in a worker thread under one lock per replica, so the event loop keeps
answering health checks and gathering the next batch meanwhile.
"""

import asyncio
import base64
import io
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from bluepri.config import (
    BatchedDeploymentSettings,
    DeploymentSettings,
    ServeConfig,
    build_config,
)
from bluepri.errors import BluepriError, error_line
from bluepri.generate import (
    GenerationRequest,
    Pipelines,
    ResolvedAdapter,
    batch_key,
    load_pipelines,
    resolve_adapter,
    run_base,
    run_refiner,
)
from bluepri.registry import AdapterRegistry
from bluepri.serve.auth import ApiKeys
from bluepri.serve.champion import BASE_MODEL_ID, AdapterResolver, PinnedAdapter
from bluepri.serve.page import page_html
from bluepri.serve.schemas import (
    BASE_ONLY,
    ERROR_RESPONSES,
    AdapterEntry,
    AdapterOut,
    AdaptersOut,
    ApiError,
    GenerateBody,
    GenerateOut,
    ImageOut,
    ReplicaOut,
    check_content_type,
    generation_requests,
    parse_generate,
)
from bluepri.telemetry import UNRESOLVED, serve_metrics

logger = logging.getLogger("ray.serve")
MAX_CONSTRUCTOR_RETRIES = 3  # a replica that cannot load its models fails the deploy fast
REPLICA_FAILURES = (RayActorError, ActorUnavailableError, ReplicaUnavailableError)


# -- what the deployments hand each other ------------------------------------------------


@dataclass(frozen=True)
class StageResult:
    """One request's outcome in a model stage: PNG bytes or latents, or why it failed."""

    seconds: float = 0.0
    png: bytes | None = None
    latents: torch.Tensor | None = None  # [1, C, h, w] on CPU, for the refiner
    adapter_sha256: str | None = None
    replica: ReplicaOut | None = None
    error: str | None = None  # the request's adapter could not be used (422)


@dataclass(frozen=True)
class RefineJob:
    latents: torch.Tensor
    request: GenerationRequest


def png_bytes(image: Any) -> bytes:
    """PIL's PNG encoding with its defaults: what `image.save(path)` writes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def replica_tag() -> str:
    try:
        return serve.get_replica_context().replica_tag
    except RayServeException:  # outside a replica
        return "local"


def groups(requests: list[GenerationRequest]) -> list[list[int]]:
    """Indices of the requests, grouped by `batch_key` (first-seen order)."""
    found: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        found.setdefault(batch_key(request), []).append(index)
    return list(found.values())


def warmup_request(config: ServeConfig, refine: bool) -> GenerationRequest:
    side = config.limits.min_side
    return GenerationRequest(
        prompt="warm-up", width=side, height=side, num_inference_steps=2, refine=refine,
        high_noise_frac=0.5,
    )  # fmt: skip


# -- Base -------------------------------------------------------------------------------


class Base:
    """SDXL base with multiplexed LoRA adapters: requests -> latents or PNGs, batched."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.pipes = load_pipelines(
            config.models.model_copy(update={"refiner": None}), config.max_adapters_per_replica
        )
        self.registry = AdapterRegistry(config.registry)
        self.lock = asyncio.Lock()
        self.replica = replica_tag()
        self.metrics = serve_metrics()
        self.pending = 0
        self.reported = (0, 0, 0)

        async def load(model_id: str) -> ResolvedAdapter | None:
            return await self.load_adapter(model_id)

        # The cap is configuration, so the loader is wired up here rather than by a
        # decorator on the class (Serve detects multiplexing on the instance). Serve's LRU
        # and the pipeline's AdapterCache see the same accesses with the same cap (`base`
        # takes a slot only in Serve's), so what Serve reports for routing is always
        # really loaded; the AdapterCache does the unloading.
        self.adapter_for = serve.multiplexed(
            max_num_models_per_replica=config.max_adapters_per_replica
        )(load)
        self.generate_batch.set_max_batch_size(config.base.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(config.base.batch_wait_timeout_s)
        if config.warmup:  # the first pass through a model is many times slower
            run_base(self.pipes, [warmup_request(config, refine=False)])

    async def load_adapter(self, model_id: str) -> ResolvedAdapter | None:
        """Serve's loader for a model id: `base`, or `name@version` verified and loaded."""
        if model_id == BASE_MODEL_ID:
            return None
        return await asyncio.to_thread(self.load_verified, model_id)

    def load_verified(self, model_id: str) -> ResolvedAdapter:
        adapter = resolve_adapter(model_id, self.registry)  # sha256 checked on the way
        self.pipes.adapters.activate(adapter)  # into the bounded LRU: really loaded now
        return adapter

    async def __call__(self, request: GenerationRequest) -> StageResult:
        self.pending += 1
        self.metrics.queue("base", self.replica, self.pending)
        try:
            return await self.generate_batch(request)
        finally:
            self.pending -= 1
            self.metrics.queue("base", self.replica, self.pending)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate_batch(self, requests: list[GenerationRequest]) -> list[StageResult]:
        model_id = serve.get_multiplexed_model_id() or BASE_MODEL_ID
        expected = None if model_id == BASE_MODEL_ID else model_id
        results: list[StageResult | None] = [None] * len(requests)
        # Sub-batches of different adapters run concurrently; the pipeline is one.
        async with self.lock:
            try:
                adapter = await self.adapter_for(model_id)
            except BluepriError as err:
                return [StageResult(error=error_line(err))] * len(requests)
            for indices in groups(requests):
                group = [requests[i] for i in indices]
                if any(r.adapter != expected for r in group):
                    out = [StageResult(error="request and routing disagree on the adapter")]
                    out *= len(group)
                else:
                    try:
                        out = await asyncio.to_thread(self.run_group, group, adapter)
                    except BluepriError as err:
                        out = [StageResult(error=error_line(err))] * len(group)
                for index, result in zip(indices, out, strict=True):
                    results[index] = result
        return results  # type: ignore[return-value]

    def run_group(
        self, group: list[GenerationRequest], adapter: ResolvedAdapter | None
    ) -> list[StageResult]:
        started = time.perf_counter()
        output = run_base(self.pipes, group, adapter)
        seconds = time.perf_counter() - started
        self.metrics.batch("base", len(group))
        replica = self.cache_report(len(group))
        sha256 = adapter.sha256 if adapter is not None else None
        if group[0].refine:  # latents leave on the CPU: the ingress has no accelerator
            latents = output.to("cpu")
            return [
                StageResult(seconds, latents=latents[i : i + 1].clone(), adapter_sha256=sha256,
                            replica=replica)
                for i in range(len(group))
            ]  # fmt: skip
        return [
            StageResult(seconds, png=png_bytes(image), adapter_sha256=sha256, replica=replica)
            for image in output
        ]

    def cache_report(self, batch_size: int) -> ReplicaOut:
        """The adapter cache's counters (and what peft really holds), also as metrics."""
        cache = self.pipes.adapters
        held = {n for names in self.pipes.base.get_list_adapters().values() for n in names}
        loads, evictions, hits = cache.loads, cache.evictions, cache.hits
        last = self.reported
        self.reported = (loads, evictions, hits)
        self.metrics.adapter_cache(
            self.replica, loads - last[0], evictions - last[1], hits - last[2], len(held)
        )
        return ReplicaOut(
            replica=self.replica,
            batch_size=batch_size,
            adapters_loaded=len(held),
            loads=loads,
            evictions=evictions,
            hits=hits,
        )


# -- Refiner ----------------------------------------------------------------------------


class Refiner:
    """SDXL refiner: (latents, request) -> PNGs, batched."""

    def __init__(self, config: ServeConfig):
        self.config = config
        loaded = load_pipelines(config.models, max_adapters=1)
        # The refiner keeps the base's VAE and text encoder 2 it shares; the base's UNet
        # and text encoder 1 are dropped with the base pipeline.
        self.pipes = Pipelines(base=None, refiner=loaded.refiner, models=config.models)
        del loaded
        self.lock = asyncio.Lock()
        self.replica = replica_tag()
        self.metrics = serve_metrics()
        self.pending = 0
        self.refine_batch.set_max_batch_size(config.refiner.max_batch_size)
        self.refine_batch.set_batch_wait_timeout_s(config.refiner.batch_wait_timeout_s)
        if config.warmup:
            request = warmup_request(config, refine=True)
            side = request.width // 8
            channels = self.pipes.refiner.unet.config.in_channels
            run_refiner(self.pipes, torch.zeros(1, channels, side, side), [request])

    async def __call__(self, job: RefineJob) -> StageResult:
        self.pending += 1
        self.metrics.queue("refiner", self.replica, self.pending)
        try:
            return await self.refine_batch(job)
        finally:
            self.pending -= 1
            self.metrics.queue("refiner", self.replica, self.pending)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def refine_batch(self, jobs: list[RefineJob]) -> list[StageResult]:
        requests = [job.request for job in jobs]
        results: list[StageResult | None] = [None] * len(jobs)
        async with self.lock:
            for indices in groups(requests):
                group = [jobs[i] for i in indices]
                try:
                    out = await asyncio.to_thread(self.run_group, group)
                except BluepriError as err:
                    out = [StageResult(error=error_line(err))] * len(group)
                for index, result in zip(indices, out, strict=True):
                    results[index] = result
        return results  # type: ignore[return-value]

    def run_group(self, group: list[RefineJob]) -> list[StageResult]:
        started = time.perf_counter()
        latents = torch.cat([job.latents for job in group])
        images = run_refiner(self.pipes, latents, [job.request for job in group])
        seconds = time.perf_counter() - started
        self.metrics.batch("refiner", len(group))
        return [StageResult(seconds, png=png_bytes(image)) for image in images]


# -- Ingress ----------------------------------------------------------------------------

api = FastAPI(
    title="bluepri",
    summary="SDXL + LoRA blueprint images: pick an adapter per request.",
    description=(
        "`POST /v1/generate` makes images with the SDXL base (and refiner), with the LoRA "
        "adapter the request names (default: the default adapter's champion). Errors are "
        "JSON `{error, field, status}` with a 4xx code saying what was wrong; 503 (with "
        "`Retry-After`) when overloaded, 504 past the service's timeout. With API keys "
        "configured, send `Authorization: Bearer KEY`."
    ),
)


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@api.exception_handler(ApiError)
async def api_error(_: Request, err: ApiError) -> JSONResponse:
    return error_response(err)


@api.exception_handler(StarletteHTTPException)
async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return error_response(ApiError(err.status_code, str(err.detail), headers=err.headers or {}))


@api.exception_handler(RequestValidationError)
async def invalid_request(_: Request, err: RequestValidationError) -> JSONResponse:
    first = (err.errors() or [{}])[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
    message = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
    return error_response(ApiError(422, message, field=where or None))


@api.exception_handler(Exception)
async def unexpected(_: Request, err: Exception) -> JSONResponse:
    logger.exception("unexpected error in a request")
    return error_response(ApiError(500, f"internal error ({type(err).__name__})"))


GENERATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": GenerateBody.model_json_schema()}},
    }
}
GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`png`: the image (headers carry adapter, sha256, seconds per stage); "
        "`json`: base64 PNGs and metadata.",
        "content": {
            "image/png": {},
            "application/json": {"schema": GenerateOut.model_json_schema()},
        },
    },
    **ERROR_RESPONSES,
}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Made:
    """One image through the stages, as the ingress saw it."""

    png: bytes
    seed: int
    base_seconds: float
    refiner_seconds: float
    base: StageResult


@serve.ingress(api)
class Ingress:
    """The HTTP API (FastAPI): checks, pins the adapter, fans out to Base and Refiner."""

    def __init__(self, base: Any, refiner: Any, config: ServeConfig, keys: ApiKeys):
        self.base = base
        self.refiner = refiner
        self.config = config
        self.keys = keys
        self.resolver = AdapterResolver(AdapterRegistry(config.registry), config.champion_refresh_s)
        self.metrics = serve_metrics()

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(page_html())

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/adapters", response_model=AdaptersOut, responses=ERROR_RESPONSES)
    async def adapters(self, request: Request) -> AdaptersOut:
        """Adapter names with their versions and champion; `default` answers requests
        that name no adapter."""
        self.keys.check(request.headers.get("authorization"))
        return await asyncio.to_thread(self.listing)

    def listing(self) -> AdaptersOut:
        registry = self.resolver.registry
        entries = []
        for name in registry.names():
            try:
                entries.append(
                    AdapterEntry(
                        name=name,
                        versions=registry.versions(name),
                        champion=registry.champion(name),
                    )
                )
            except BluepriError:  # a broken entry is skipped, not a failed listing
                continue
        return AdaptersOut(default=self.config.adapter_name, adapters=entries)

    @api.post(
        "/v1/generate",
        summary="Generate images",
        response_class=Response,
        responses=GENERATE_RESPONSES,
        openapi_extra=GENERATE_BODY,
    )
    async def generate(self, request: Request) -> Response:
        started = time.perf_counter()
        label = UNRESOLVED
        try:
            response, label = await self.answer(request, started)
        except ApiError as err:
            response = error_response(err)
        except Exception as err:  # a bug: logged with its traceback, answered as JSON
            logger.exception("unexpected error in POST /v1/generate")
            response = error_response(ApiError(500, f"internal error ({type(err).__name__})"))
        self.metrics.request(label, response.status_code)
        self.metrics.seconds("total", time.perf_counter() - started)
        return response

    async def answer(self, request: Request, started: float) -> tuple[Response, str]:
        self.keys.check(request.headers.get("authorization"))
        check_content_type(request.headers.get("content-type"))
        raw = await read_body(request, self.config.limits.max_body_bytes)
        body = parse_generate(raw, self.config)
        pinned = await self.pin(body.adapter)
        label = pinned.label if pinned else BASE_ONLY
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        requests = generation_requests(body, self.config, pinned.label if pinned else None, seed)
        budget = self.config.request_timeout_s - (time.perf_counter() - started)
        try:
            made = await asyncio.wait_for(self.run_all(requests, pinned), timeout=budget)
        except asyncio.TimeoutError:
            raise ApiError(
                504, f"the request ran past {self.config.request_timeout_s:g} s"
            ) from None
        total = time.perf_counter() - started
        first = made[0]
        headers = {
            "X-Bluepri-Adapter": label,
            "X-Bluepri-Adapter-Sha256": first.base.adapter_sha256 or BASE_ONLY,
            "X-Bluepri-Seed": str(seed),
            "X-Bluepri-Seconds-Base": f"{max(m.base_seconds for m in made):.4f}",
            "X-Bluepri-Seconds-Refiner": f"{max(m.refiner_seconds for m in made):.4f}",
            "X-Bluepri-Seconds-Total": f"{total:.4f}",
        }
        if body.response_format == "png":
            return Response(first.png, media_type="image/png", headers=headers), label
        request0 = requests[0]
        out = GenerateOut(
            images=[
                ImageOut(seed=m.seed, png_base64=base64.b64encode(m.png).decode()) for m in made
            ],
            adapter=AdapterOut(
                name=pinned.name, version=pinned.version, sha256=first.base.adapter_sha256 or ""
            )
            if pinned
            else None,
            seconds={
                "base": max(m.base_seconds for m in made),
                "refiner": max(m.refiner_seconds for m in made),
                "total": total,
            },
            width=request0.width or 0,
            height=request0.height or 0,
            steps=request0.num_inference_steps,
            guidance_scale=request0.guidance_scale,
            refine=request0.refine,
            served_by=first.base.replica,
        )
        return JSONResponse(out.model_dump(mode="json"), headers=headers), label

    async def pin(self, adapter: str | None) -> PinnedAdapter | None:
        """The request's adapter pinned to a version (None: the base model alone)."""
        reference = adapter if adapter is not None else self.config.adapter_name
        if reference is None or reference == BASE_ONLY:
            return None
        return await asyncio.to_thread(self.resolver.resolve, reference)

    async def run_all(
        self, requests: list[GenerationRequest], pinned: PinnedAdapter | None
    ) -> list[Made]:
        """Every image at once (one failure cancels the rest)."""
        model_id = pinned.label if pinned else BASE_MODEL_ID
        tasks = [asyncio.ensure_future(self.run_one(r, model_id)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    async def run_one(self, request: GenerationRequest, model_id: str) -> Made:
        started = time.perf_counter()
        base = await self.call(self.base.options(multiplexed_model_id=model_id), request)
        if base.error is not None:
            raise ApiError(422, f"adapter: {base.error}", field="adapter")
        base_done = time.perf_counter()
        self.metrics.seconds("base", base_done - started)
        png, refiner_seconds = base.png, 0.0
        if request.refine:
            refined = await self.call(self.refiner, RefineJob(base.latents, request))
            if refined.error is not None:
                raise ApiError(422, f"refine: {refined.error}", field="refine")
            png, refiner_seconds = refined.png, time.perf_counter() - base_done
            self.metrics.seconds("refiner", refiner_seconds)
        return Made(png, request.seed, base_done - started, refiner_seconds, base)

    async def call(self, handle: Any, argument: Any) -> StageResult:
        """One stage call; overload and lost replicas become 503 (a lost one is retried)."""
        retry_after = {"Retry-After": str(self.config.retry_after_s)}
        for attempt in (1, 2):
            try:
                return await handle.remote(argument)
            except BackPressureError:
                raise ApiError(503, "overloaded: retry later", headers=retry_after) from None
            except DeploymentUnavailableError:
                raise ApiError(503, "the model is unavailable", headers=retry_after) from None
            except REPLICA_FAILURES as err:
                logger.warning("a replica failed under a request (try %d): %s", attempt, err)
                if attempt == 2:
                    raise ApiError(
                        503, "a model replica failed: retry later", headers=retry_after
                    ) from None
        raise AssertionError("unreachable")


# -- the application --------------------------------------------------------------------


def deployment_options(settings: DeploymentSettings, config: ServeConfig) -> dict[str, Any]:
    """Ray Serve options of one deployment, from its settings."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": config.retry_after_s},
        "max_constructor_retry_count": MAX_CONSTRUCTOR_RETRIES,
    }
    if settings.autoscaling is not None:
        scaling = settings.autoscaling.model_dump(exclude_none=True)
        options["autoscaling_config"] = scaling
    else:
        options["num_replicas"] = settings.num_replicas
    return options


def build_app(config: ServeConfig | dict) -> Any:
    """The Serve application for `config` (a ServeConfig or its dict, as `serve deploy`
    passes a config file's `args`)."""
    if not isinstance(config, ServeConfig):
        config = build_config(ServeConfig, dict(config))
    keys = ApiKeys.from_config(config)
    base = deployment("Base", Base, config.base, config).bind(config)
    refiner = None
    if config.models.refiner is not None:
        refiner = deployment("Refiner", Refiner, config.refiner, config).bind(config)
    return deployment("Ingress", Ingress, config.ingress, config).bind(base, refiner, config, keys)


def deployment(
    name: str,
    cls: type,
    settings: DeploymentSettings | BatchedDeploymentSettings,
    config: ServeConfig,
) -> Any:
    return serve.deployment(cls, name=name, **deployment_options(settings, config))
