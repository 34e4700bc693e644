"""`bluepri demo`: the platform end to end on the embedded default, on a laptop.

Synthesises a blueprint set, prepares it into a training cache on Ray Data (validation,
dedup, BLIP captions for the uncaptioned drawings, VAE + text-encoder embeddings), trains a
LoRA adapter on Ray Train with 2 workers and registers it as the champion in the adapter
registry, searches learning rate, rank and snr_gamma on the same cache (Ray Tune + Optuna +
ASHA) and promotes the winner only if it beats that champion, then renders a catalogue of
prompts on Ray Data (`bluepri.render`: base and refiner actor pools) through the paper's
two-stage base -> refiner process with both prompts, with and without the champion, into
a manifest, contact sheets and an HTML gallery, and finally evaluates the base against the
champion on the held-out split (`bluepri.eval`: held-out loss, blueprint score, CLIP score,
FID/KID) into one HTML report.

The base model draws plain drawings (dark ink on paper; the tiny drawing models are
pretrained on the synthetic set's `paper` style) and the adapter learns blueprints, so the
demo's contact sheet, base | adapter on the same prompts and seeds, shows the paper's effect,
and the blueprint palette score (`bluepri.eval.palette`) of both columns measures it. The
terminal tells one line per step; the libraries' own output goes to `demo.log`.
Everything lands in one output folder. Each stage that lands adds its step here.
"""

from __future__ import annotations

import importlib
import json
import socket
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel

from bluepri import artifacts
from bluepri.config import (
    DemoConfig,
    EvalConfig,
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
from bluepri.demolog import heartbeat, quiet_terminal
from bluepri.errors import BluepriError
from bluepri.eval import DrawingStats, PaletteScore, blueprint_score, drawing_stats, evaluate
from bluepri.eval.results import EVAL_JSON
from bluepri.generate import GenerationRequest
from bluepri.imaging import LABEL_COLOUR, SHEET_BACKGROUND, contact_sheet, fit_to_cell
from bluepri.registry import AdapterRegistry
from bluepri.render import render
from bluepri.render.pipeline import quiet_data_context
from bluepri.runtime import ray_address
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
DEMO_LOG = "demo.log"  # under the output folder: the libraries' output
SCORES_JSON = "scores.json"
EVAL_DIR = "eval"
LIBRARIES_LOGGING_ON_IMPORT = ("ray.data", "diffusers", "transformers", "optuna")


class ImageScores(BaseModel):
    """Palette shares and drawing statistics of one group of images (means over images)."""

    images: int
    palette: PaletteScore
    drawing: DrawingStats


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
    # Blueprint palette and drawing statistics of "training_set", "base" and "adapter"
    # (the catalogue's renders without and with the champion), also in scores_file.
    scores: dict[str, ImageScores] = {}
    scores_file: str = ""
    log_file: str = ""  # what Ray, Tune and the model libraries said during the demo
    report: str = ""  # the evaluation's report.html: base vs champion, measured
    evaluation: str = ""  # its eval.json


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
    """Run every landed stage on the tiny models and the synthetic set; tell it as a story on
    the terminal, the libraries' own output in `<out>/demo.log`."""
    # Validate everything before the first step writes anything: the catalogue, and the
    # cluster RAY_ADDRESS names (a dead one fails in one line now, not after step 1).
    requests = catalogue_requests(config)
    ray_address()
    out = output_folder(config.out_dir).resolve()  # stages run in other working dirs
    started = time.perf_counter()
    log(f"bluepri demo: {config.models.base} + a blueprint LoRA, everything under {out}")
    configure_library_logging()
    with quiet_terminal(out / DEMO_LOG, log) as say, quiet_data_context():
        say(f"  (Ray's, Tune's and the model libraries' own output: {out / DEMO_LOG})")
        result = run_steps(config, requests, out, say)
        for line in closing_lines(result, time.perf_counter() - started):
            say(line)
    return result


def run_steps(
    config: DemoConfig, requests: list[GenerationRequest], out: Path, say: Callable[[str], None]
) -> DemoResult:
    """The six steps, each announced by one line; sub-steps' lines indented under it."""
    indented = indent(say)
    say(f"[1/7] synthesising {config.dataset_size} blueprint drawings (white lines on blue)")
    dataset_dir, dataset_sheet = synthesise_dataset(config, out)
    say(f"  {dataset_dir} (a sample: {dataset_sheet})")

    say("[2/7] preparing the training cache (Ray Data: validate, dedup, caption, encode)")
    with heartbeat(say, "preparing"):
        cache = prepare(demo_prepare_config(config, dataset_dir, out), log=indented)
    say(f"  cache: {cache.uri}")

    say(f"[3/7] training a LoRA adapter on Ray Train ({config.train_workers} workers)")
    with heartbeat(say, "training"):
        trained = train(demo_train_config(config, cache.uri, out), log=indented)
    say(
        f"  adapter: {trained.adapter}  held-out loss {trained.initial_val_loss:.4f} -> "
        f"{trained.final_val_loss:.4f}"
    )
    registry = AdapterRegistry(out / "registry")
    first = registry.put(trained.adapter, ADAPTER_NAME)  # a re-run gets the same version back
    if registry.champion(ADAPTER_NAME) is None:
        registry.promote(ADAPTER_NAME, first.version, reason="the demo's first training run")

    search = run_search(config, cache.uri, out, say)
    champion = registry.get(ADAPTER_NAME, "champion")
    say(f"  champion: {ADAPTER_NAME}/{registry.champion(ADAPTER_NAME)}")

    say("[5/7] serving the registry over HTTP (Ray Serve: Ingress -> Base -> Refiner)")
    served = serve_demo(config, out, registry, say)

    say(
        f"[6/7] rendering {len(requests)} catalogue prompts on Ray Data (base and refiner "
        "actor pools), with the base model alone and with the champion adapter"
    )
    rendered = render(demo_render_config(config, requests, out, registry), log=indented)
    pairs = rendered_pairs(rendered.out)
    sheet = out / "contact_sheet.png"
    side_by_side_sheet(
        [(Image.open(base), Image.open(lora)) for _, base, lora in pairs],
        [label for label, _, _ in pairs],
    ).save(sheet)
    scores = demo_scores(dataset_dir, pairs)
    (out / SCORES_JSON).write_text(
        json.dumps({k: v.model_dump() for k, v in scores.items()}, indent=2) + "\n"
    )
    for line in score_lines(scores):
        say(f"  {line}")

    say("[7/7] evaluating the base against the champion (held-out loss, blueprint score, CLIP "
        "score, FID/KID; one report)")  # fmt: skip
    with heartbeat(say, "evaluating"):
        evaluated = evaluate(demo_eval_config(config, cache.uri, out, search), log=lambda _: None)
    for line in evaluated.summary_lines()[1:]:
        say(f"  {line.strip()}")
    return DemoResult(
        out_dir=str(out),
        dataset_dir=dataset_dir,
        dataset_sheet=str(dataset_sheet),
        cache=cache,
        adapter=trained.adapter,
        search=search,
        champion=str(champion),
        images=[path for _, base, lora in pairs for path in (base, lora)],
        contact_sheet=str(sheet),
        gallery=rendered.gallery,
        served=served,
        scores=scores,
        scores_file=str(out / SCORES_JSON),
        log_file=str(out / DEMO_LOG),
        report=evaluated.report or "",
        evaluation=str(out / EVAL_DIR / EVAL_JSON),
    )


def synthesise_dataset(config: DemoConfig, out: Path) -> tuple[str, Path]:
    """The training set (the default style: white line work on blueprint blue) and a contact
    sheet of its first drawings."""
    dataset = synthesize(
        SynthConfig(out_dir=str(out / "dataset"), num_images=config.dataset_size, seed=config.seed)
    )
    sheet = out / "dataset_sheet.png"
    sample = sorted(Path(dataset.out_dir).glob("*.png"))[:12]
    contact_sheet([Image.open(p) for p in sample], [p.stem for p in sample], cell=160).save(sheet)
    return dataset.out_dir, sheet


def run_search(
    config: DemoConfig, cache_uri: str, out: Path, say: Callable[[str], None]
) -> TuneResult | None:
    """Step 4: the search on the same cache, promoting its winner if it beats the champion."""
    if not config.tune_trials:
        say("[4/7] searching: skipped (tune_trials is 0)")
        return None
    say(
        f"[4/7] searching learning rate, rank and snr_gamma: {config.tune_trials} trials on "
        "the same cache (Ray Tune + Optuna TPE + ASHA)"
    )
    search_config = demo_search_config(config, cache_uri, out)
    with heartbeat(say, "searching"):
        # A second `make demo` resumes the finished search instead of training it again.
        search = tune(search_config, resume=search_exists(search_config), log=lambda _: None)
    for line in summary_lines(search):
        say(f"  {line}")
    return search


def indent(say: Callable[[str], None]) -> Callable[[str], None]:
    """A stage's own lines, indented under the step that runs it."""
    return lambda line: say(f"  {line}")


def configure_library_logging() -> None:
    """Import the libraries that set up their loggers on import, before `quiet_terminal`
    saves those loggers: set up inside it, they would not be put back as they were."""
    for module in LIBRARIES_LOGGING_ON_IMPORT:
        importlib.import_module(module)


def closing_lines(result: DemoResult, seconds: float) -> list[str]:
    """Where to look once the demo is done."""
    return [
        f"done in {seconds / 60:.1f} min. Look at:",
        f"  {result.report}  the evaluation: base vs champion, measured, side by side",
        f"  {result.contact_sheet}  prompts in rows: base model | with the adapter",
        f"  {result.gallery}  every render, with its prompt and settings",
        f"  {result.dataset_sheet}  the training drawings",
        f"  {result.scores_file}  blueprint palette scores",
        f"  {result.log_file}  what Ray, Tune and the model libraries said",
    ]


# -- side by side: the base model and the adapter on the same prompts and seeds -----------

SHEET_PAD = 8
SHEET_LABEL_WIDTH = 220
SHEET_HEADER = 20
SHEET_TITLES = ("base model", "with the LoRA adapter")


def pair_cell_origin(row: int, column: int, cell: int) -> tuple[int, int]:
    """Top-left corner of the cell of `row` (a prompt) and `column` (0 base, 1 adapter)."""
    x = SHEET_PAD + SHEET_LABEL_WIDTH + SHEET_PAD + column * (cell + SHEET_PAD)
    return x, SHEET_HEADER + SHEET_PAD + row * (cell + SHEET_PAD)


def side_by_side_sheet(
    pairs: Sequence[tuple[Image.Image, Image.Image]],
    labels: Sequence[str],
    *,
    cell: int = 160,
    titles: tuple[str, str] = SHEET_TITLES,
) -> Image.Image:
    """One row per prompt: its label, then the two renders, each scaled to fit a cell and
    centred in it; the columns titled on top."""
    if not pairs:
        raise ValueError("a side-by-side sheet needs at least one pair")
    if len(labels) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(labels)} labels")
    x_end, y_end = pair_cell_origin(len(pairs), 2, cell)
    sheet = Image.new("RGB", (x_end, y_end), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for column, title in enumerate(titles):
        draw.text((pair_cell_origin(0, column, cell)[0], 4), title, fill=LABEL_COLOUR, font=font)
    lines_per_cell = max(1, cell // 12)
    for row, (pair, label) in enumerate(zip(pairs, labels, strict=True)):
        for column, image in enumerate(pair):
            x, y = pair_cell_origin(row, column, cell)
            thumb = fit_to_cell(image.convert("RGB"), cell)
            sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        y = pair_cell_origin(row, 0, cell)[1]
        for n, line in enumerate(textwrap.wrap(label, SHEET_LABEL_WIDTH // 6)[:lines_per_cell]):
            draw.text((SHEET_PAD, y + n * 12), line, fill=LABEL_COLOUR, font=font)
    return sheet


def rendered_pairs(render_out: str) -> list[tuple[str, str, str]]:
    """(label, base PNG, adapter PNG) per catalogue prompt whose two renders both landed."""
    rows = artifacts.read_render_manifest(render_out).to_pylist()
    done = {row["id"]: row for row in rows if row["status"] == artifacts.RENDERED}
    pairs = []
    for row_id, row in done.items():
        index, _, tag = row_id.rpartition("-")
        lora = done.get(f"{index}-lora")
        if tag != "base" or lora is None:
            continue
        style = f" / {row['prompt_2']}" if row["prompt_2"] else ""
        label = f"{int(index)}: {row['prompt']}{style}"
        path = Path(render_out)
        pairs.append((label, str(path / row["image_path"]), str(path / lora["image_path"])))
    return pairs


# -- scores: how much the renders look like blueprints ------------------------------------


def group_scores(paths: Sequence[str | Path]) -> ImageScores:
    images = [Image.open(path).convert("RGB") for path in paths]
    return ImageScores(
        images=len(images), palette=blueprint_score(images), drawing=drawing_stats(images)
    )


def demo_scores(dataset_dir: str, pairs: list[tuple[str, str, str]]) -> dict[str, ImageScores]:
    """The training drawings (what the adapter learns towards), the base model's renders and
    the adapter's renders of the same prompts and seeds."""
    scores = {"training_set": group_scores(sorted(Path(dataset_dir).glob("*.png")))}
    if pairs:
        scores["base"] = group_scores([base for _, base, _ in pairs])
        scores["adapter"] = group_scores([lora for _, _, lora in pairs])
    return scores


def score_lines(scores: dict[str, ImageScores]) -> list[str]:
    """The scores for people: base against adapter, the training set for reference."""
    if "base" not in scores:
        return ["no prompt rendered both with and without the adapter: nothing to compare"]
    base, adapter, reference = scores["base"], scores["adapter"], scores["training_set"]
    return [
        f"blueprint score: base {base.palette.blueprint:.2f}, adapter "
        f"{adapter.palette.blueprint:.2f} (share of pixels in the blueprint palette: blue "
        f"ground, light lines; the training drawings {reference.palette.blueprint:.2f})",
        f"paper score: base {base.palette.paper:.2f}, adapter {adapter.palette.paper:.2f} "
        "(share in the paper palette: white or cream ground, dark ink)",
        f"uniform background: base {base.drawing.uniform_background:.2f}, adapter "
        f"{adapter.drawing.uniform_background:.2f} (drawings > 0.5, noise < 0.2)",
    ]


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


def demo_prepare_config(config: DemoConfig, dataset_dir: str, out: Path) -> PrepareConfig:
    """The synthetic set, cached at the demo's size with its base model's encoders."""
    return PrepareConfig(
        source=dataset_dir,
        out=str(out / "cache"),
        resolution=config.size,
        center_crop=True,
        random_flip=True,
        base=config.models.base,
        vae=config.models.vae,
        captioner=config.captioner,
        val_fraction=0.25,  # enough held-out drawings to compare adapters on
    )


def demo_recipe(config: DemoConfig, cache_uri: str) -> dict:
    """The paper's recipe, short, on the demo cache: what the training run and trials share."""
    return {
        "pretrained_model_name_or_path": config.models.base,
        "cache": cache_uri,
        "train_batch_size": 4,
        "snr_gamma": 5.0,
        # Turning paper into blueprint is a change of the whole ground's colour: offset noise
        # lets the adapter learn it (the drawing base was pretrained with it too).
        "noise_offset": 0.1,
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


def demo_eval_config(
    config: DemoConfig, cache_uri: str, out: Path, search: TuneResult | None
) -> EvalConfig:
    """The `quick` protocol on the cache's held-out captions and drawings, at the demo's
    size and steps, scored with the tiny CLIP; the champion against the base."""
    return build_config(
        EvalConfig,
        {
            "out": str(out / EVAL_DIR),
            "cache": cache_uri,
            "adapters": [f"{ADAPTER_NAME}@champion"],
            "registry": str(out / "registry"),
            "models": config.models.model_dump(),
            "protocol": "quick",
            "steps": config.steps,
            "clip_model": "tiny:clip",
            "label": "demo",
            "search": search.experiment_path if search else None,
            "history": str(out / "eval-history.parquet"),
            "batch_size": 2,
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
