"""The generation stages: `run_base` (prompts -> latents or images) and `run_refiner`
(latents -> images), each over a batch of compatible requests, and `generate` = both.

The paper's two-stage process: the base runs the first `high_noise_frac` of the schedule
(`denoising_end`) and hands its *latents* (no VAE round trip) to the refiner, which runs
the rest (`denoising_start`). Serve runs the two stages in different deployments, render in
different actor pools, the demo in one process; all give the same bytes for one request:

- every request gets its own CPU generator from its seed for the base, and one from
  (seed, "refiner") for the refiner, so the two stages need not share generator state;
- prompts are encoded one request at a time and stacked, so a batch mixes prompts,
  negative prompts or none freely;
- the denoising runs under `batch_invariant()` numerics, so batching changes no bytes.

Prompts: `prompt` goes to text encoder 1 (CLIP ViT-L) and `prompt_2` to text encoder 2
(OpenCLIP bigG). The refiner has only the bigG encoder, so it is given `prompt_2` (falling
back to `prompt`), keeping each prompt on the encoder it was written for.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from bluepri.config import ModelsConfig
from bluepri.errors import BluepriError
from bluepri.generate.adapters import AdapterCache, ResolvedAdapter, resolve_adapter
from bluepri.generate.invariance import batch_invariant
from bluepri.generate.request import GenerationRequest, batch_key
from bluepri.models import load_base, load_refiner

EMBEDDING_NAMES = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


@dataclass
class Pipelines:
    """Loaded base (+ refiner) and the adapters loaded into the base."""

    base: Any
    refiner: Any | None
    models: ModelsConfig
    max_adapters: int = 8
    adapters: AdapterCache = field(init=False)

    def __post_init__(self) -> None:
        self.adapters = AdapterCache(self.base, self.max_adapters)


@dataclass
class Generated:
    """One generated image and how it was made."""

    image: Image.Image
    request: GenerationRequest
    seconds: float
    adapter: ResolvedAdapter | None = None


def load_pipelines(models: ModelsConfig, max_adapters: int = 8) -> Pipelines:
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
            use_scheduler(pipe, models.scheduler)
    return Pipelines(base=base, refiner=refiner, models=models, max_adapters=max_adapters)


def use_scheduler(pipe: Any, scheduler: str) -> None:
    """`model`: the pipeline's own sampler; `euler`: Euler from its config (MLPerf's SDXL)."""
    if scheduler == "euler":
        from diffusers import EulerDiscreteScheduler

        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)


def refiner_seed(seed: int) -> int:
    """The refiner's seed, derived from the request's: independent of the base's stream."""
    return int.from_bytes(hashlib.sha256(f"{seed}:refiner".encode()).digest()[:7], "big")


def generators(seeds: list[int]) -> list[torch.Generator]:
    # CPU generators give the same noise on every device, so a seed means one image.
    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def check_batch(requests: list[GenerationRequest]) -> GenerationRequest:
    """The batch's shared settings (its first request); refuses a mixed batch."""
    if not requests:
        raise BluepriError("a generation batch needs at least one request")
    if len({batch_key(r) for r in requests}) > 1:
        raise BluepriError("requests in one batch must share adapter, size, steps and guidance")
    return requests[0]


def stacked_embeddings(pipe: Any, prompts: list[dict[str, Any]], guidance: float) -> dict:
    """Each request's prompt embeddings, encoded alone (as a single call would), stacked."""
    encoded = [
        pipe.encode_prompt(
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guidance > 1.0,
            **prompt,
        )
        for prompt in prompts
    ]
    return {
        name: torch.cat([parts[i] for parts in encoded])
        for i, name in enumerate(EMBEDDING_NAMES)
        if encoded[0][i] is not None
    }


def run_base(
    pipes: Pipelines, requests: list[GenerationRequest], adapter: ResolvedAdapter | None = None
) -> torch.Tensor | list[Image.Image]:
    """The base stage for a batch: latents at `high_noise_frac` when the requests refine,
    else finished images. `adapter` is the batch's resolved adapter (None: base model)."""
    first = check_batch(requests)
    pipes.adapters.activate(adapter, first.adapter_scale)
    prompts = [
        {
            "prompt": r.prompt,
            "prompt_2": r.prompt_2,
            "negative_prompt": r.negative_prompt,
            "negative_prompt_2": r.negative_prompt_2,
        }
        for r in requests
    ]
    with torch.inference_mode(), batch_invariant(pipes.models.batch_invariant):
        embeddings = stacked_embeddings(pipes.base, prompts, first.guidance_scale)
        output = pipes.base(
            **embeddings,
            width=first.width,
            height=first.height,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            generator=generators([r.seed for r in requests]),
            denoising_end=first.high_noise_frac if first.refine else None,
            output_type="latent" if first.refine else "pil",
        )
    return output.images


def run_refiner(
    pipes: Pipelines, latents: torch.Tensor, requests: list[GenerationRequest]
) -> list[Image.Image]:
    """The refiner stage for a batch: the base's latents -> images (`denoising_start`)."""
    first = check_batch(requests)
    if pipes.refiner is None:
        raise BluepriError("the request asks for the refiner but no refiner model is loaded")
    prompts = [
        {
            "prompt": r.prompt_2 or r.prompt,
            "negative_prompt": r.negative_prompt_2 or r.negative_prompt,
        }
        for r in requests
    ]
    with torch.inference_mode(), batch_invariant(pipes.models.batch_invariant):
        embeddings = stacked_embeddings(pipes.refiner, prompts, first.guidance_scale)
        output = pipes.refiner(
            **embeddings,
            image=latents,
            num_inference_steps=first.num_inference_steps,
            denoising_start=first.high_noise_frac,
            guidance_scale=first.guidance_scale,
            generator=generators([refiner_seed(r.seed) for r in requests]),
        )
    return output.images


def generate(pipes: Pipelines, request: GenerationRequest, registry: Any = None) -> Generated:
    """Make one image: base (to `high_noise_frac`) then refiner, or the base alone.
    `registry` resolves a registry reference in `request.adapter` (else it is a folder)."""
    if request.refine and pipes.refiner is None:
        raise BluepriError("the request asks for the refiner but no refiner model is loaded")
    started = time.perf_counter()
    adapter = resolve_adapter(request.adapter, registry)
    result = run_base(pipes, [request], adapter)
    images = run_refiner(pipes, result, [request]) if request.refine else result
    return Generated(images[0], request, time.perf_counter() - started, adapter)
