"""`bluepri demo`: the platform end to end on the embedded default, on a laptop.

Synthesises a blueprint set, prepares it into a training cache on Ray Data (validation,
dedup, BLIP captions for the uncaptioned drawings, VAE + text-encoder embeddings), and
renders catalogue prompts through the paper's two-stage base -> refiner process with both
prompts, writing images and contact sheets into one output folder. Each stage that lands
adds its step here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image
from pydantic import BaseModel

from bluepri.config import DemoConfig, PrepareConfig, SynthConfig, build_config
from bluepri.data.prepare import CacheInfo, prepare
from bluepri.data.synth import synthesize
from bluepri.generate import GenerationRequest, generate, load_pipelines
from bluepri.imaging import contact_sheet
from bluepri.storage import output_folder

# (prompt for text encoder 1 = subject, prompt_2 for text encoder 2 = style), as the paper's
# dual-encoder section suggests.
CATALOGUE_PROMPTS = (
    ("a drawing of a floor plan of a small apartment with three rooms", "blueprint, white lines"),
    ("a drawing of a kitchen with a stove, sink and a blender", "technical drawing on blue"),
    ("a drawing of a jet fighter plane and other aircraft", "detailed blueprint, top view"),
    ("a drawing of a motorcycle with a seat and two wheels", "blueprint, side elevation"),
    ("a drawing of a gear with twelve teeth and a shaft", "engineering blueprint"),
    ("a drawing of a chair and a table", "furniture blueprint, front view"),
    ("a drawing of a floor plan of a house with a kitchen", "architectural blueprint"),
    ("a drawing of a car with four wheels", "vehicle blueprint, side view"),
)
NEGATIVE_PROMPT = "photo, colour photograph, blurry"


class DemoResult(BaseModel):
    """What the demo wrote."""

    out_dir: str
    dataset_dir: str
    dataset_sheet: str
    cache: CacheInfo
    images: list[str]
    contact_sheet: str


def catalogue_requests(config: DemoConfig) -> list[GenerationRequest]:
    """`num_images` requests cycling the catalogue; every other one landscape (4:3)."""
    requests = []
    for index in range(config.num_images):
        prompt, prompt_2 = CATALOGUE_PROMPTS[index % len(CATALOGUE_PROMPTS)]
        width = config.size if index % 2 == 0 else (config.size * 4 // 3) // 8 * 8
        values = {
            "prompt": prompt,
            "prompt_2": prompt_2,
            "negative_prompt": NEGATIVE_PROMPT,
            "width": width,
            "height": config.size,
            "num_inference_steps": config.steps,
            "seed": config.seed + index,
            "refine": config.models.refiner is not None,
            "high_noise_frac": config.high_noise_frac,
        }
        requests.append(build_config(GenerationRequest, values))
    return requests


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> DemoResult:
    """Run every landed stage on the tiny models and the synthetic set."""
    out = output_folder(config.out_dir)
    renders = output_folder(out / "renders")
    requests = catalogue_requests(config)  # validate everything before the first step

    log(f"[1/4] synthesising {config.dataset_size} blueprints")
    dataset = synthesize(
        SynthConfig(out_dir=str(out / "dataset"), num_images=config.dataset_size, seed=config.seed)
    )
    dataset_sheet = out / "dataset_sheet.png"
    sample = sorted(Path(dataset.out_dir).glob("*.png"))[:12]
    contact_sheet([Image.open(p) for p in sample], [p.stem for p in sample], cell=160).save(
        dataset_sheet
    )

    log("[2/4] preparing the training cache (Ray Data: validate, dedup, caption, encode)")
    cache = prepare(
        PrepareConfig(
            source=dataset.out_dir,
            out=str(out / "cache"),
            resolution=config.size,
            center_crop=True,
            random_flip=True,
            base=config.models.base,
            vae=config.models.vae,
            captioner=config.captioner,
        ),
        log=log,
    )
    log(f"  cache: {cache.uri}")

    log(f"[3/4] loading models (base {config.models.base}, refiner {config.models.refiner})")
    pipes = load_pipelines(config.models)

    log(f"[4/4] rendering {len(requests)} catalogue prompts (base -> refiner)")
    paths, images = [], []
    for index, request in enumerate(requests):
        result = generate(pipes, request)
        path = renders / f"{index:03d}.png"
        result.image.save(path)
        paths.append(str(path))
        images.append(result.image)
        log(f"  {index + 1}/{len(requests)} {path.name} {result.seconds:.2f}s  {request.prompt}")
    sheet = out / "contact_sheet.png"
    contact_sheet(images, [r.prompt for r in requests]).save(sheet)
    return DemoResult(
        out_dir=str(out),
        dataset_dir=dataset.out_dir,
        dataset_sheet=str(dataset_sheet),
        cache=cache,
        images=paths,
        contact_sheet=str(sheet),
    )
