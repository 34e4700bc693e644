"""`bluepri demo`: the platform end to end on the embedded default, on a laptop.

Synthesises a blueprint set, prepares it into a training cache on Ray Data (validation,
dedup, BLIP captions for the uncaptioned drawings, VAE + text-encoder embeddings), trains a
LoRA adapter on Ray Train with 2 workers and registers it as the champion in the adapter
registry, searches learning rate, rank and snr_gamma on the same cache (Ray Tune + Optuna +
ASHA) and promotes the winner only if it beats that champion, then renders a catalogue of
prompts on Ray Data (`bluepri.render`: base and refiner actor pools) through the paper's
two-stage base -> refiner process with both prompts, with and without the champion, into
a manifest, contact sheets and an HTML gallery.
Everything lands in one output folder. Each stage that lands adds its step here.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from pydantic import BaseModel

from bluepri import artifacts
from bluepri.config import (
    DemoConfig,
    PrepareConfig,
    RenderConfig,
    SearchConfig,
    ServeConfig,
    SynthConfig,
    TrainConfig,
    build_config,
)
from bluepri.data.prepare import CacheInfo, prepare
from bluepri.data.synth import synthesize
from bluepri.errors import BluepriError
from bluepri.generate import GenerationRequest
from bluepri.imaging import contact_sheet
from bluepri.registry import AdapterRegistry
from bluepri.render import render
from bluepri.storage import output_folder
from bluepri.train import train
from bluepri.tune import TuneResult, tune
from bluepri.tune.results import summary_lines
from bluepri.tune.search import search_exists

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
ADAPTER_NAME = "blueprints"


class DemoResult(BaseModel):
    """What the demo wrote."""

    out_dir: str
    dataset_dir: str
    dataset_sheet: str
    cache: CacheInfo
    adapter: str
    search: TuneResult | None
    champion: str
    images: list[str]
    contact_sheet: str
    gallery: str = ""  # the rendered catalogue's HTML gallery
    served: list[str] = []  # PNGs fetched from the HTTP service


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
    out = output_folder(config.out_dir).resolve()  # stages run in other working dirs
    requests = catalogue_requests(config)  # validate everything before the first step

    log(f"[1/6] synthesising {config.dataset_size} blueprints")
    dataset = synthesize(
        SynthConfig(out_dir=str(out / "dataset"), num_images=config.dataset_size, seed=config.seed)
    )
    dataset_sheet = out / "dataset_sheet.png"
    sample = sorted(Path(dataset.out_dir).glob("*.png"))[:12]
    contact_sheet([Image.open(p) for p in sample], [p.stem for p in sample], cell=160).save(
        dataset_sheet
    )

    log("[2/6] preparing the training cache (Ray Data: validate, dedup, caption, encode)")
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
            val_fraction=0.25,  # enough held-out drawings to compare adapters on
        ),
        log=log,
    )
    log(f"  cache: {cache.uri}")

    log(f"[3/6] training a LoRA adapter on Ray Train ({config.train_workers} workers)")
    trained = train(demo_train_config(config, cache.uri, out), log=log)
    log(
        f"  adapter: {trained.adapter}  held-out loss {trained.initial_val_loss:.4f} -> "
        f"{trained.final_val_loss:.4f}"
    )
    registry = AdapterRegistry(out / "registry")
    first = registry.put(trained.adapter, ADAPTER_NAME)  # a re-run gets the same version back
    if registry.champion(ADAPTER_NAME) is None:
        registry.promote(ADAPTER_NAME, first.version, reason="the demo's first training run")

    search = None
    if config.tune_trials:
        log(
            f"[4/6] searching learning rate, rank and snr_gamma: {config.tune_trials} trials on "
            "the same cache (Ray Tune + Optuna TPE + ASHA)"
        )
        search_config = demo_search_config(config, cache.uri, out)
        # A second `make demo` resumes the finished search instead of training it again.
        search = tune(search_config, resume=search_exists(search_config), log=lambda _: None)
        for line in summary_lines(search):
            log(f"  {line}")
    champion = registry.get(ADAPTER_NAME, "champion")
    log(f"  champion: {ADAPTER_NAME}/{registry.champion(ADAPTER_NAME)}")

    log("[5/6] serving the registry over HTTP (Ray Serve: Ingress -> Base -> Refiner)")
    served = serve_demo(config, out, registry, log)

    log(
        f"[6/6] rendering {len(requests)} catalogue prompts on Ray Data (base and refiner "
        "actor pools), with the base model and with the champion adapter"
    )
    rendered = render(demo_render_config(config, requests, out, registry), log=log)
    rows = artifacts.read_render_manifest(rendered.out).to_pylist()
    paths = [str(Path(rendered.out) / row["image_path"]) for row in rows]
    labels = [f"{row['id'].split('-')[-1]}: {row['prompt']}" for row in rows]
    sheet = out / "contact_sheet.png"
    contact_sheet([Image.open(path) for path in paths], labels).save(sheet)
    log(f"  gallery: {rendered.gallery}")
    return DemoResult(
        out_dir=str(out),
        dataset_dir=dataset.out_dir,
        dataset_sheet=str(dataset_sheet),
        cache=cache,
        adapter=trained.adapter,
        search=search,
        champion=str(champion),
        images=paths,
        contact_sheet=str(sheet),
        gallery=rendered.gallery,
        served=served,
    )


def serve_demo(
    config: DemoConfig, out: Path, registry: AdapterRegistry, log: Callable[[str], None]
) -> list[str]:
    """Start the service on the demo's registry, fetch the champion, a second version (when
    there is one) and the base model alone, with and without the refiner, over real HTTP;
    save the PNGs under serve/; stop the service."""
    from ray import serve

    from bluepri.serve import deploy

    folder = output_folder(out / "serve")
    serve_config = demo_serve_config(config, registry)
    url = deploy.start(serve_config)
    log(f"  serving at {url} (API docs {url}/docs)")
    champion = registry.champion(ADAPTER_NAME)
    others = [v for v in registry.versions(ADAPTER_NAME) if v != champion]
    adapters = [ADAPTER_NAME, *[f"{ADAPTER_NAME}@{v}" for v in others[-1:]], "none"]
    paths = []
    try:
        for adapter in adapters:
            for refine in (True, False):
                prompt, prompt_2 = CATALOGUE_PROMPTS[0]
                body = {"prompt": prompt, "prompt_2": prompt_2, "seed": config.seed,
                        "adapter": adapter, "refine": refine}  # fmt: skip
                png, headers = post_json(f"{url}/v1/generate", body)
                served = headers["x-bluepri-adapter"]
                stage = "refined" if refine else "no-refiner"
                path = folder / f"{served.replace('@', '-')}-{stage}.png"
                path.write_bytes(png)
                paths.append(str(path))
                log(
                    f"  {path.name}: {served} sha256 {headers['x-bluepri-adapter-sha256'][:12]}, "
                    f"base {float(headers['x-bluepri-seconds-base']):.2f}s, refiner "
                    f"{float(headers['x-bluepri-seconds-refiner']):.2f}s"
                )
    finally:
        deploy.stop(serve_config)
        serve.shutdown()  # the replicas' CPUs go back to the render step
    return paths


def demo_serve_config(config: DemoConfig, registry: AdapterRegistry) -> ServeConfig:
    """The demo's service: its models and registry, open (loopback only), on a free port,
    fractional CPUs for one replica per deployment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    largest = max(config.size * 4 // 3 // 8 * 8, config.size)
    return build_config(
        ServeConfig,
        {
            "models": config.models.model_dump(),
            "registry": registry.uri,
            "adapter_name": ADAPTER_NAME,
            "default_size": config.size,
            "default_steps": config.steps,
            "limits": {"min_side": 64, "max_side": largest, "max_pixels": largest * largest},
            "api_keys_env": None,
            "port": port,
            "ingress": {"num_cpus": 0.1},
            "base": {"num_cpus": 0.5},
            "refiner": {"num_cpus": 0.5},
        },
    )


def post_json(url: str, body: dict) -> tuple[bytes, dict[str, str]]:
    """POST a JSON body; the answer's bytes and (lower-cased) headers; a non-200 answer is
    an error."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 (loopback)
            return response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as err:
        raise BluepriError(f"serve answered {err.code}: {err.read()[:300]!r}") from None


def demo_recipe(config: DemoConfig, cache_uri: str) -> dict:
    """The paper's recipe, short, on the demo cache: what the training run and trials share."""
    return {
        "pretrained_model_name_or_path": config.models.base,
        "cache": cache_uri,
        "train_batch_size": 4,
        "snr_gamma": 5.0,
        "validation_prompt": CATALOGUE_PROMPTS[0][0],
        "validation_inference_steps": config.steps,
        "seed": config.seed,
    }


def demo_train_config(config: DemoConfig, cache_uri: str, out: Path) -> TrainConfig:
    """A short run of the paper's recipe on `train_workers` workers."""
    return build_config(
        TrainConfig,
        {
            **demo_recipe(config, cache_uri),
            "output_dir": str(out / "adapter"),
            "num_workers": config.train_workers,
            "num_train_epochs": config.train_epochs,
            "learning_rate": config.learning_rate,
            "rank": 8,
            "checkpointing_steps": 10,
            "num_validation_images": 2,
            "resume_from_checkpoint": "latest",
            "experiment_name": "demo",
        },
    )


def demo_search_config(config: DemoConfig, cache_uri: str, out: Path) -> SearchConfig:
    """A small search around the demo's recipe, promoting into the demo's registry."""
    return build_config(
        SearchConfig,
        {
            "experiment_name": "demo-search",
            "storage_path": str(out / "tune"),
            "num_trials": config.tune_trials,
            "seed": config.seed,
            "registry": str(out / "registry"),
            "adapter_name": ADAPTER_NAME,
            "space": {
                "learning_rate": {"kind": "loguniform", "low": 2e-4, "high": 5e-3},
                "rank": {"kind": "int", "low": 4, "high": 32, "log": True},
                "snr_gamma": {"kind": "choice", "choices": [None, 1.0, 5.0]},
            },
            "train": {
                **demo_recipe(config, cache_uri),
                "num_workers": 1,
                "num_train_epochs": config.tune_epochs,
                "num_validation_images": 0,
            },
        },
    )


def demo_render_config(
    config: DemoConfig, requests: list[GenerationRequest], out: Path, registry: AdapterRegistry
) -> RenderConfig:
    """The catalogue as a JSONL file, each prompt twice: the base model alone and the
    champion, named by its version (so a later champion is a new job's render)."""
    catalogue = out / "catalogue.jsonl"
    lines = []
    for index, request in enumerate(requests):
        for tag, adapter in (("base", "none"), ("lora", None)):
            row = {
                "id": f"{index:03d}-{tag}",
                "prompt": request.prompt,
                "prompt_2": request.prompt_2,
                "negative_prompt": request.negative_prompt,
                "width": request.width,
                "height": request.height,
                "seed": request.seed,
            }
            if adapter:
                row["adapter"] = adapter
            lines.append(json.dumps(row))
    catalogue.write_text("\n".join(lines) + "\n")
    return build_config(
        RenderConfig,
        {
            "catalogue": str(catalogue),
            "out": str(out / "renders"),
            "models": config.models.model_dump(),
            "registry": registry.uri,
            "adapter": f"{ADAPTER_NAME}@{registry.champion(ADAPTER_NAME)}",
            "width": config.size,
            "height": config.size,
            "steps": config.steps,
            "refine": config.models.refiner is not None,
            "high_noise_frac": config.high_noise_frac,
            "max_side": max(2048, config.size * 2),
            "base_batch_size": 2,
            "refiner_batch_size": 2,
            "block_rows": 4,
        },
    )
