"""THE generation path: SDXL base -> refiner latent handoff, both prompts, seeds, adapters.

The demo, Ray Serve, catalogue rendering and evaluation all call `generate`, so one request
and seed give the same pixels everywhere. The paper's two-stage process: the base runs the
first `high_noise_frac` of the schedule (`denoising_end`) and hands its *latents* (no VAE
round trip) to the refiner, which runs the rest (`denoising_start`).

Prompts: `prompt` goes to text encoder 1 (CLIP ViT-L) and `prompt_2` to text encoder 2
(OpenCLIP bigG). The refiner has only the bigG encoder, so it is given `prompt_2` (falling
back to `prompt`), keeping each prompt on the encoder it was written for.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import Field, field_validator, model_validator

from bluepri.artifacts import WEIGHTS_NAME
from bluepri.config import ModelsConfig, StrictModel
from bluepri.errors import BluepriError
from bluepri.models import load_base, load_refiner


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
    adapter: str | None = None  # folder of a diffusers-format LoRA (see DESIGN.md)
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


@dataclass
class Generated:
    """One generated image and how it was made."""

    image: Image.Image
    request: GenerationRequest
    seconds: float


@dataclass
class Pipelines:
    """Loaded base (+ refiner); adapters are loaded into the base once and switched by name."""

    base: Any
    refiner: Any | None
    models: ModelsConfig
    adapters: dict[str, str] = field(default_factory=dict)  # adapter folder -> adapter name


def load_pipelines(models: ModelsConfig) -> Pipelines:
    """Load base and refiner once; the refiner shares the base's VAE and text encoder 2."""
    base = load_base(models.base, dtype=models.dtype, device=models.device, vae_ref=models.vae)
    refiner = None
    if models.refiner:
        refiner = load_refiner(
            models.refiner, dtype=models.dtype, device=models.device, share_from=base
        )
    for pipe in (base, refiner):
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
    return Pipelines(base=base, refiner=refiner, models=models)


def adapter_name(folder: str) -> str:
    """A stable, peft-safe adapter name for a folder."""
    return "a" + hashlib.sha256(folder.encode()).hexdigest()[:12]


def use_adapter(pipes: Pipelines, request: GenerationRequest) -> None:
    """Activate the request's adapter on the base UNet, or none."""
    if request.adapter is None:
        if pipes.adapters:
            pipes.base.disable_lora()
        return
    folder = str(Path(request.adapter).expanduser().resolve())
    if folder not in pipes.adapters:
        if not (Path(folder) / WEIGHTS_NAME).is_file():
            raise BluepriError(f"adapter {request.adapter!r} has no {WEIGHTS_NAME}")
        pipes.base.load_lora_weights(folder, adapter_name=adapter_name(folder))
        pipes.adapters[folder] = adapter_name(folder)
    pipes.base.enable_lora()
    pipes.base.set_adapters([pipes.adapters[folder]], adapter_weights=[request.adapter_scale])


def generate(pipes: Pipelines, request: GenerationRequest) -> Generated:
    """Make one image: base (to `high_noise_frac`) then refiner, or the base alone."""
    if request.refine and pipes.refiner is None:
        raise BluepriError("the request asks for the refiner but no refiner model is loaded")
    started = time.perf_counter()
    use_adapter(pipes, request)
    # A CPU generator gives the same noise on every device, so a seed means one image.
    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    base_args = dict(
        prompt=request.prompt,
        prompt_2=request.prompt_2,
        negative_prompt=request.negative_prompt,
        negative_prompt_2=request.negative_prompt_2,
        width=request.width,
        height=request.height,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=generator,
    )
    with torch.inference_mode():
        if not request.refine:
            image = pipes.base(**base_args).images[0]
        else:
            latents = pipes.base(
                **base_args, denoising_end=request.high_noise_frac, output_type="latent"
            ).images
            image = pipes.refiner(
                prompt=request.prompt_2 or request.prompt,
                negative_prompt=request.negative_prompt_2 or request.negative_prompt,
                image=latents,
                num_inference_steps=request.num_inference_steps,
                denoising_start=request.high_noise_frac,
                guidance_scale=request.guidance_scale,
                generator=generator,
            ).images[0]
    return Generated(image=image, request=request, seconds=time.perf_counter() - started)
