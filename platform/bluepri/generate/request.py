"""The typed generation request, and which requests may share a batch.

A request names its adapter by reference: a registry reference (`blueprints`,
`blueprints@v0003`, `blueprints@champion`) resolved through the registry to a version and a
sha256, or, for library and CLI use, a local adapter folder.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from bluepri.config import StrictModel


class GenerationRequest(StrictModel):
    """One image to make. Width/height default to the base model's native size."""

    prompt: str = Field(min_length=1)
    prompt_2: str | None = None
    negative_prompt: str | None = None
    negative_prompt_2: str | None = None
    width: int | None = Field(None, ge=64, le=4096)
    height: int | None = Field(None, ge=64, le=4096)
    num_inference_steps: int = Field(30, ge=1, le=500)
    guidance_scale: float = Field(5.0, ge=0.0, le=50.0)
    seed: int = Field(0, ge=0, lt=2**63)
    refine: bool = True
    high_noise_frac: float = Field(0.8, gt=0.0, lt=1.0)
    adapter: str | None = None  # registry reference or local adapter folder (see module doc)
    adapter_scale: float = Field(1.0, ge=0.0, le=4.0)

    @field_validator("width", "height")
    @classmethod
    def multiple_of_8(cls, value: int | None) -> int | None:
        # The VAE downsamples by 8; other sizes would be silently floored by diffusers.
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value

    @model_validator(mode="after")
    def refine_needs_steps(self) -> GenerationRequest:
        if self.refine and round(self.num_inference_steps * (1 - self.high_noise_frac)) < 1:
            raise ValueError("too few steps for the refiner to run one; raise num_inference_steps")
        return self


def batch_key(request: GenerationRequest) -> tuple[Any, ...]:
    """Requests with equal keys can run as one batch: the same adapter (as referenced),
    scale, size, schedule and guidance. Prompts, negative prompts and seeds may differ."""
    return (
        request.adapter,
        request.adapter_scale,
        request.width,
        request.height,
        request.num_inference_steps,
        request.guidance_scale,
        request.refine,
        request.high_noise_frac if request.refine else None,
    )
