"""The tiny folders are ordinary diffusers folders: vanilla diffusers, no bluepri import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VANILLA_SCRIPT = """
import json, sys
import numpy as np
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

base_dir, refiner_dir = sys.argv[1], sys.argv[2]
base = StableDiffusionXLPipeline.from_pretrained(base_dir)
refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_dir)
generator = torch.Generator().manual_seed(0)
latents = base(
    prompt="a drawing of a jet fighter plane", prompt_2="blueprint", width=160, height=96,
    num_inference_steps=10, denoising_end=0.8, output_type="latent", generator=generator,
).images
image = refiner(
    prompt="blueprint", image=latents, num_inference_steps=10, denoising_start=0.8,
    generator=generator,
).images[0]
pixels = np.asarray(image, dtype=np.float32)
print(json.dumps({
    "size": list(image.size), "latent_shape": list(latents.shape),
    "finite": bool(np.isfinite(pixels).all()), "std": float(pixels.std()),
    "bluepri_imported": any(m.startswith("bluepri") for m in sys.modules),
}))
"""


def test_vanilla_diffusers_runs_base_then_refiner(tiny_models: dict[str, Path]) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            VANILLA_SCRIPT,
            str(tiny_models["base"]),
            str(tiny_models["refiner"]),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["bluepri_imported"] is False
    assert report["size"] == [160, 96]
    assert report["latent_shape"] == [1, 4, 12, 20]
    assert report["finite"] and report["std"] > 0
