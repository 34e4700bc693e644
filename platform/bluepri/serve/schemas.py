"""The HTTP API's models, its limits and its errors.

`parse_generate` turns the raw body of `POST /v1/generate` into a checked `GenerateBody`
or an `ApiError` whose status says what was wrong and whose `field` names the culprit:
400 body not JSON or a malformed adapter reference, 413 body too large, 415 not JSON,
422 a field of the wrong type or outside the configured limits. Untrusted bytes never get
further than this module unchecked.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bluepri.config import ServeConfig
from bluepri.generate import GenerationRequest, is_adapter_reference

BASE_ONLY = "none"  # `adapter: "none"`: the base model alone (so no registry name "none")
MAX_SEED = 2**63 - 1


class ApiError(Exception):
    """An answer other than 200: status, one-line message, the field at fault, headers."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status, message, field, headers)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "status": self.status}


class GenerateBody(BaseModel):
    """`POST /v1/generate`. Omitted fields take the service's defaults (see `GET /docs`)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    prompt: str = Field(min_length=1, description="Prompt for text encoder 1 (subject).")
    prompt_2: str | None = Field(None, description="Prompt for text encoder 2 (style).")
    negative_prompt: str | None = None
    negative_prompt_2: str | None = None
    adapter: str | None = Field(
        None,
        description="`name`, `name@v0003`, `name@champion` or `none` (base model alone); "
        "omitted: the default adapter's champion.",
    )
    adapter_scale: float = Field(1.0, ge=0.0, le=4.0)
    steps: int | None = Field(None, ge=1, description="Denoising steps (base + refiner).")
    guidance_scale: float | None = None
    width: int | None = Field(None, description="Multiple of 8 within the limits.")
    height: int | None = Field(None, description="Multiple of 8 within the limits.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Omitted: drawn at random.")
    refine: bool | None = Field(None, description="Run the refiner; omitted: when loaded.")
    high_noise_frac: float = Field(0.8, gt=0.0, lt=1.0)
    num_images: int = Field(1, ge=1, description="Seeds seed, seed+1, ...; > 1 needs json.")
    response_format: Literal["png", "json"] = Field(
        "png", description="`png`: the image's bytes; `json`: base64 PNGs and metadata."
    )


class ImageOut(BaseModel):
    seed: int
    png_base64: str


class AdapterOut(BaseModel):
    name: str
    version: str
    sha256: str


class ReplicaOut(BaseModel):
    """The Base replica that made the first image, its batch and its adapter cache."""

    replica: str
    batch_size: int
    adapters_loaded: int
    loads: int
    evictions: int
    hits: int


class GenerateOut(BaseModel):
    """The `json` response of `POST /v1/generate`."""

    images: list[ImageOut]
    adapter: AdapterOut | None
    seconds: dict[str, float]
    width: int
    height: int
    steps: int
    guidance_scale: float
    refine: bool
    served_by: ReplicaOut | None = None


class AdapterEntry(BaseModel):
    name: str
    versions: list[str]
    champion: str | None


class AdaptersOut(BaseModel):
    """`GET /v1/adapters`."""

    default: str | None
    adapters: list[AdapterEntry]


class ErrorOut(BaseModel):
    """Every error: status, one-line message and the request field at fault (if any)."""

    error: str
    field: str | None
    status: int


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": what}
    for code, what in (
        (400, "Body is not JSON, or the adapter reference is malformed."),
        (401, "Missing or wrong API key (Authorization: Bearer KEY)."),
        (404, "Unknown adapter or version."),
        (413, "Body too large."),
        (415, "Content-Type is not application/json."),
        (422, "A field is of the wrong type or outside the limits, or the adapter failed."),
        (503, "Overloaded; retry after Retry-After seconds."),
        (504, "The request ran past the service's timeout."),
    )
}


def check_content_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {media_type or 'none'!r}")


def parse_generate(raw: bytes, config: ServeConfig) -> GenerateBody:
    """The checked body: JSON, typed, within the limits; else an ApiError naming the field."""
    limits = config.limits
    if len(raw) > limits.max_body_bytes:
        raise ApiError(413, f"body exceeds {limits.max_body_bytes} bytes")
    try:
        body = GenerateBody.model_validate_json(raw)
    except ValidationError as err:
        raise validation_error(err) from None
    except (RecursionError, ValueError) as err:  # a parser giving up on pathological JSON
        raise ApiError(400, f"body is not valid JSON ({type(err).__name__})") from None
    check_limits(body, config)
    return body


def validation_error(err: ValidationError) -> ApiError:
    """Pydantic's first complaint as an ApiError: 400 for broken JSON, else 422."""
    first = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "json_invalid":
        return ApiError(400, f"body is not valid JSON: {first['msg']}")
    if first["type"] in ("model_type", "model_attributes_type") and where is None:
        return ApiError(422, "body must be a JSON object")
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return ApiError(422, f"{where}: {message}" if where else message, field=where)


def check_limits(body: GenerateBody, config: ServeConfig) -> None:
    """The configured limits, with the field at fault named."""
    limits = config.limits
    for name in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2"):
        text = getattr(body, name)
        if text is not None and len(text) > limits.max_prompt_chars:
            raise ApiError(
                422, f"{name}: longer than {limits.max_prompt_chars} characters", field=name
            )
    width = body.width if body.width is not None else config.default_size
    height = body.height if body.height is not None else config.default_size
    for name, side in (("width", width), ("height", height)):
        if side % 8:
            raise ApiError(422, f"{name}: must be a multiple of 8, got {side}", field=name)
        if not limits.min_side <= side <= limits.max_side:
            raise ApiError(
                422,
                f"{name}: must be within [{limits.min_side}, {limits.max_side}], got {side}",
                field=name,
            )
    if width * height > limits.max_pixels:
        raise ApiError(
            422, f"width: {width}x{height} exceeds {limits.max_pixels} pixels", field="width"
        )
    if body.steps is not None and body.steps > limits.max_steps:
        raise ApiError(422, f"steps: at most {limits.max_steps}", field="steps")
    guidance = body.guidance_scale
    if guidance is not None and not (
        math.isfinite(guidance) and limits.min_guidance <= guidance <= limits.max_guidance
    ):
        raise ApiError(
            422,
            f"guidance_scale: must be within [{limits.min_guidance}, {limits.max_guidance}]",
            field="guidance_scale",
        )
    if body.num_images > limits.max_num_images:
        raise ApiError(422, f"num_images: at most {limits.max_num_images}", field="num_images")
    if body.num_images > 1 and body.response_format == "png":
        raise ApiError(
            422,
            "num_images: response_format png returns one image; ask for json",
            field="num_images",
        )
    if body.seed is not None and body.seed + body.num_images - 1 > MAX_SEED:
        raise ApiError(422, "seed: seed + num_images - 1 exceeds 2**63 - 1", field="seed")
    if body.refine and config.models.refiner is None:
        raise ApiError(422, "refine: this service has no refiner", field="refine")
    adapter = body.adapter
    if adapter is not None and adapter != BASE_ONLY and not is_adapter_reference(adapter):
        raise ApiError(
            400,
            "adapter: malformed reference; use name, name@version, name@champion or none",
            field="adapter",
        )


def generation_requests(
    body: GenerateBody, config: ServeConfig, adapter_label: str | None, seed: int
) -> list[GenerationRequest]:
    """`num_images` requests with seeds seed, seed+1, ... (`adapter_label`: name@version)."""
    values = {
        "prompt": body.prompt,
        "prompt_2": body.prompt_2,
        "negative_prompt": body.negative_prompt,
        "negative_prompt_2": body.negative_prompt_2,
        "width": body.width if body.width is not None else config.default_size,
        "height": body.height if body.height is not None else config.default_size,
        "num_inference_steps": body.steps if body.steps is not None else config.default_steps,
        "guidance_scale": (
            body.guidance_scale if body.guidance_scale is not None else config.default_guidance
        ),
        "refine": body.refine if body.refine is not None else config.models.refiner is not None,
        "high_noise_frac": body.high_noise_frac,
        "adapter": adapter_label,
        "adapter_scale": body.adapter_scale,
    }
    try:
        return [GenerationRequest(**values, seed=seed + index) for index in range(body.num_images)]
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        name = ".".join(str(p) for p in first["loc"]) or "steps"  # the model-level check
        name = {"num_inference_steps": "steps"}.get(name, name)
        raise ApiError(422, f"{name}: {first['msg']}", field=name) from None
