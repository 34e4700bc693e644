"""Loading an adapter the way a user without bluepri would: a fresh Python that imports
diffusers only, renders a prompt before and after `load_lora_weights`, and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = """
import json, sys
import numpy as np, torch
from diffusers import StableDiffusionXLPipeline

base, adapter = sys.argv[1], sys.argv[2]
pipe = StableDiffusionXLPipeline.from_pretrained(base)
pipe.set_progress_bar_config(disable=True)

def image():
    generator = torch.Generator().manual_seed(0)
    return pipe("a drawing of a floor plan", num_inference_steps=3, height=64, width=64,
                generator=generator, output_type="np").images[0]

def has_lora(module):
    return any("lora_A" in name for name, _ in module.named_modules())

before = image()
pipe.load_lora_weights(adapter)
after = image()
print(json.dumps({
    "bluepri_imported": any(name.startswith("bluepri") for name in sys.modules),
    "max_diff": float(np.abs(after - before).max()),
    "unet": has_lora(pipe.unet),
    "text_encoder": has_lora(pipe.text_encoder),
    "text_encoder_2": has_lora(pipe.text_encoder_2),
}))
"""


def load_in_vanilla_diffusers(base: Path | str, adapter: Path | str) -> dict[str, Any]:
    """{bluepri_imported, max_diff (pixels, 0..1), unet/text_encoder/text_encoder_2 adapted}."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(base), str(adapter)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])
