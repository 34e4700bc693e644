"""`evaluate`: the base model and adapters measured the same way every time.

    check the cache, the adapters (each for this base) and the prompt set; load CLIP
    copy the adapters into the evaluation's own registry (what was measured stays with it)
    render every prompt x model (x with/without refiner) on the render stages: one catalogue,
        the base actor pool loads the base once and switches adapters (its LRU)
    held-out loss of base and adapters on ONE loaded base (fixed noise, as training reports)
    blueprint score, CLIP score, FID/KID against the held-out real drawings, per run
    eval.json, metrics.parquet, the history, report.html and summary.png

Prompt i gets seed `protocol.seed + i` for every model, so each model starts from the same
latents and differences are the models', not the noise's.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bluepri import artifacts, storage
from bluepri.artifacts import RENDERED
from bluepri.config import EvalConfig, EvalProtocol, RenderConfig
from bluepri.errors import BluepriError
from bluepri.eval.results import (
    BASE_LABEL,
    EVAL_JSON,
    EVAL_METRICS,
    SCORES,
    EvalResult,
    ModelRun,
    ReferenceSet,
    Scores,
)

ADAPTERS_DIR = "adapters"  # the evaluation's own registry: copies of what was measured
RENDERS_DIR = "renders"
CATALOGUE = "catalogue.jsonl"
REFERENCE_MAX = 5000  # real drawings read for FID/KID at most
RECORDED_MODEL_KEYS = ("base", "refiner", "vae", "dtype", "device")


@dataclass
class EvalPlan:
    """What is generated: every model x refiner setting x prompt, at one size and protocol."""

    protocol: EvalProtocol
    prompts: list[str]
    seeds: list[int]
    adapters: list[EvalAdapter]
    refines: list[bool]
    width: int
    height: int

    @property
    def models(self) -> list[tuple[str, str]]:
        """(label, render adapter reference) of the base and each adapter."""
        return [(BASE_LABEL, "none"), *((a.label, a.label) for a in self.adapters)]


@dataclass
class EvalAdapter:
    """An adapter to measure: as the config named it, and its copy in the eval registry."""

    reference: str
    label: str  # name@version in the evaluation's registry
    folder: Path  # that copy, verified (a local copy when the evaluation is on a URI)
    sha256: str

    @property
    def stored_as(self) -> str:
        """Where the copy lies, relative to the evaluation folder."""
        name, version = self.label.split("@")
        return f"{ADAPTERS_DIR}/{name}/{version}"


def evaluate(config: EvalConfig, log: Callable[[str], None] = print) -> EvalResult:
    """Measure the base and `config.adapters` (see the module doc); write results + report."""
    started = time.perf_counter()
    out = storage.absolute(config.out)  # a local folder or a URI (shared storage)
    manifest = artifacts.read_manifest(config.cache)
    check_cache_base(config, manifest)
    protocol = config.resolved_protocol()
    prompts = prompt_set(config, protocol)
    checked = check_adapters(config)  # every refusal before anything heavy is loaded
    from bluepri.models.loading import load_clip

    clip = load_clip(config.clip_model)
    adapters = copy_adapters(checked, storage.join(out, ADAPTERS_DIR))
    width, height = image_size(config, manifest)
    plan = EvalPlan(
        protocol=protocol,
        prompts=prompts,
        seeds=[protocol.seed + i for i in range(len(prompts))],
        adapters=adapters,
        refines=refine_settings(config),
        width=width,
        height=height,
    )
    log(
        f"eval: protocol {protocol.name}: {len(prompts)} prompts x {1 + len(adapters)} models, "
        f"{plan.width}x{plan.height}, {protocol.steps} steps, guidance "
        f"{protocol.guidance_scale:g}"
    )
    images = render_runs(config, plan, out, log)
    log("eval: held-out loss of the base and each adapter (one loaded base)")
    losses = measure_heldout(config, adapters)
    from bluepri.eval.metrics import choose_features

    features = choose_features(config.fid_features, clip, config.clip_model)
    reference, real, notes = reference_features(config, manifest, plan, features)
    runs = score_runs(config, plan, out, images, losses, (clip, features, real), log)
    result = EvalResult(
        out=out,
        label=config.label or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        created=datetime.now(timezone.utc).isoformat(),
        protocol=protocol,
        models={
            **config.models.model_dump(include=set(RECORDED_MODEL_KEYS)),
            "scheduler": protocol.scheduler,
        },  # fmt: skip
        width=plan.width,
        height=plan.height,
        cache=str(config.cache),
        cache_fingerprint=manifest.fingerprint,
        prompts=plan.prompts,
        seeds=plan.seeds,
        reference=reference,
        clip_model=config.clip_model,
        fid_features=features.name if real is not None else None,
        runs=runs,
        notes=notes,
        search=config.search,
        history=config.history,
    )
    return write_outputs(result, config, out, started, log)


def score_runs(
    config: EvalConfig,
    plan: EvalPlan,
    out: str,
    images: dict[tuple[str, bool], list[str]],
    losses: dict[str, float],
    scorers: tuple[Any, Any, Any],
    log: Callable[[str], None],
) -> list[ModelRun]:
    """One ModelRun per model and refiner setting, with differences to the base's."""
    clip, features, real = scorers
    runs = []
    for label, adapter in [(BASE_LABEL, None), *((a.label, a) for a in plan.adapters)]:
        for refine in plan.refines:
            log(f"eval: scoring {label} ({'with' if refine else 'without'} refiner)")
            paths = images[(label, refine)]
            uris = [storage.join(out, p) for p in paths]
            scores = score_run(uris, plan.prompts, clip, features, real, config)
            scores.heldout_loss = losses[label]
            runs.append(
                ModelRun(
                    label=label,
                    adapter=adapter.reference if adapter else None,
                    sha256=adapter.sha256 if adapter else None,
                    refine=refine,
                    images=paths,
                    scores=scores,
                    folder=adapter.stored_as if adapter else None,
                )
            )
    add_differences(runs)
    return runs


# -- checks and inputs ---------------------------------------------------------------------------


def check_cache_base(config: EvalConfig, manifest: artifacts.CacheManifest) -> None:
    """The held-out rows hold latents and embeddings of the cache's base: measuring another
    base on them would compare nothing."""
    cache_base = manifest.models.get("base")
    if cache_base and cache_base != config.models.base:
        raise BluepriError(
            f"cache {config.cache} was prepared for base {cache_base}, not {config.models.base}; "
            "evaluate on a cache prepared with the same base"
        )
    if manifest.num_val == 0:
        raise BluepriError(f"cache {config.cache} has no held-out (val) rows to evaluate on")


def prompt_set(config: EvalConfig, protocol: EvalProtocol) -> list[str]:
    """The prompts: the catalogue's `prompt` column, or the cache's held-out captions."""
    if config.prompts:
        from bluepri.render.catalogue import open_catalogue

        prompts = []
        for row in open_catalogue(config.prompts).rows():
            prompt = row.values.get("prompt") if row.error is None else None
            if isinstance(prompt, str) and prompt.strip():
                prompts.append(prompt.strip())
            if len(prompts) == protocol.max_prompts:
                break
        where = f"prompt set {config.prompts}"
    else:
        captions = artifacts.read_split_rows(config.cache, "val").captions
        prompts = [c for c in captions if c and c.strip()][: protocol.max_prompts]
        where = f"cache {config.cache}'s held-out captions"
    if not prompts:
        raise BluepriError(f"{where}: no prompts to evaluate on")
    return prompts


@dataclass
class CheckedAdapter:
    """An adapter the config names, found, verified and trained for this base."""

    reference: str
    name: str  # its name and version in the evaluation's registry
    version: str
    source: Path  # its verified folder (a registry's copy, or the folder named)
    sha256: str


def check_adapters(config: EvalConfig) -> list[CheckedAdapter]:
    """Each adapter known, verified and for this base; one clear error for the first that is
    not, before anything is loaded or copied."""
    from bluepri.generate.adapters import is_adapter_reference, parse_adapter_reference
    from bluepri.registry import AdapterRegistry, default_root

    user_registry = None
    checked = []
    for reference in config.adapters:
        folder = Path(reference).expanduser()
        if folder.is_dir():
            if not artifacts.has_adapter(str(folder)):
                raise BluepriError(f"adapter folder {reference!r} has no {artifacts.ADAPTER_JSON}")
            info = artifacts.read_adapter_info(str(folder))
            name, version, source = "local-" + info.weights.sha256[:12], "v0001", folder
        elif is_adapter_reference(reference):
            if user_registry is None:
                user_registry = AdapterRegistry(config.registry or default_root())
            name, wanted = parse_adapter_reference(reference)
            version = user_registry.resolve_version(name, wanted)
            source = user_registry.get(name, version)  # verifies the weights
            info = artifacts.read_adapter_info(str(source))
        else:
            raise BluepriError(
                f"unknown adapter {reference!r}: neither an adapter folder nor a registry "
                "reference (name, name@version, name@champion)"
            )
        if info.base != config.models.base:
            raise BluepriError(
                f"adapter {reference} was trained for base {info.base}, not {config.models.base}"
            )
        checked.append(CheckedAdapter(reference, name, version, source, info.weights.sha256))
    labels = [f"{a.name}@{a.version}" for a in checked]
    if len(set(labels)) != len(labels):
        raise BluepriError(f"the same adapter is named twice: {', '.join(labels)}")
    return checked


def copy_adapters(checked: list[CheckedAdapter], root: str) -> list[EvalAdapter]:
    """The checked adapters copied into the evaluation's own registry (what was measured
    stays with the results, and the render stages load them from there)."""
    from bluepri.registry import AdapterRegistry

    local = AdapterRegistry(root)
    return [
        EvalAdapter(a.reference, f"{a.name}@{a.version}", stored_copy(local, a), a.sha256)
        for a in checked
    ]


def stored_copy(local: Any, adapter: CheckedAdapter) -> Path:
    """The adapter's copy in the evaluation's registry: put there, or already there from an
    earlier run of this evaluation (the same weights, verified; other weights: refused). A
    copy a killed run left half-written is removed first: this registry is the
    evaluation's alone, and `put` never overwrites a version folder."""
    name, version = adapter.name, adapter.version
    if name not in local.names() or version not in local.versions(name):
        partial = storage.join(local.uri, name, version)
        if storage.is_dir(partial):
            storage.delete_dir(partial)
        local.put(str(adapter.source), name, version)
    copy = local.get(name, version)  # verifies the stored weights
    if artifacts.read_adapter_info(str(copy)).weights.sha256 != adapter.sha256:
        raise BluepriError(
            f"{copy} holds other weights than {adapter.source}: use a new eval folder"
        )
    return copy


def image_size(config: EvalConfig, manifest: artifacts.CacheManifest) -> tuple[int, int]:
    """The generated size: the config's, else the cache's training resolution, square."""
    width = config.width or int(manifest.config.get("resolution") or 1024)
    return width, config.height or width


def refine_settings(config: EvalConfig) -> list[bool]:
    """Without the refiner always; with it too when a refiner is configured and asked for."""
    return [False, True] if config.models.refiner and config.refiner_variants else [False]


# -- generation on the render stages --------------------------------------------------------------


def render_runs(
    config: EvalConfig, plan: EvalPlan, out: str, log: Callable[[str], None]
) -> dict[tuple[str, bool], list[str]]:
    """Every (model, refine) x prompt rendered by `bluepri.render` into out/renders; image
    paths (relative to `out`) per run, in prompt order. A rerun renders only what is missing."""
    from bluepri.render import render

    protocol = plan.protocol
    rows = {}
    for label, adapter in plan.models:
        for refine in plan.refines:
            for index, (prompt, seed) in enumerate(zip(plan.prompts, plan.seeds, strict=True)):
                row_id = f"{label.replace('@', '-')}-{'r' if refine else 'b'}-{index:05d}"
                record = {"id": row_id, "prompt": prompt, "seed": seed, "adapter": adapter,
                          "refine": refine}  # fmt: skip
                rows[row_id] = (label, refine, index, record)
    catalogue = storage.join(out, CATALOGUE)
    storage.write_bytes(catalogue, "".join(json.dumps(r[3]) + "\n" for r in rows.values()).encode())
    render_config = RenderConfig(
        catalogue=catalogue,
        out=storage.join(out, RENDERS_DIR),
        models=config.models.model_copy(update={"scheduler": protocol.scheduler}),
        registry=storage.join(out, ADAPTERS_DIR),
        adapter="none",
        width=plan.width,
        height=plan.height,
        steps=protocol.steps,
        guidance_scale=protocol.guidance_scale,
        high_noise_frac=protocol.high_noise_frac,
        refine=False,
        max_side=max(2048, plan.width, plan.height),
        max_steps=max(150, protocol.steps),
        base_actors=config.base_actors,
        refiner_actors=config.refiner_actors,
        base_batch_size=config.batch_size,
        refiner_batch_size=config.batch_size,
        contact_sheet_images=0,
    )
    result = render(render_config, log=log)
    if not result.ok:
        raise BluepriError(
            f"eval: {sum(result.failed.values())} images failed to render "
            f"({', '.join(f'{k} {v}' for k, v in result.failed.items())}); see {result.manifest}"
        )
    manifest = artifacts.read_render_manifest(storage.join(out, RENDERS_DIR)).to_pylist()
    paths: dict[tuple[str, bool], list[str | None]] = {
        (label, refine): [None] * len(plan.prompts)
        for label, _ in plan.models
        for refine in plan.refines
    }
    for record in manifest:
        if record["id"] in rows and record["status"] == RENDERED:
            label, refine, index, _ = rows[record["id"]]
            paths[(label, refine)][index] = f"{RENDERS_DIR}/{record['image_path']}"
    missing = [key for key, found in paths.items() if any(p is None for p in found)]
    if missing:
        raise BluepriError(f"eval: the render manifest lacks images of {missing[0][0]}")
    return paths  # type: ignore[return-value]


# -- measuring -----------------------------------------------------------------------------------


def measure_heldout(config: EvalConfig, adapters: list[EvalAdapter]) -> dict[str, float]:
    from bluepri.eval.heldout import heldout_losses

    losses = heldout_losses(
        config.cache,
        config.models.base,
        [None, *(a.folder for a in adapters)],
        vae_ref=config.models.vae,
        dtype=config.models.dtype,
        device=config.models.device,
    )
    return dict(zip([BASE_LABEL, *(a.label for a in adapters)], losses, strict=True))


def reference_features(
    config: EvalConfig, manifest: artifacts.CacheManifest, plan: EvalPlan, features: Any
) -> tuple[ReferenceSet | None, Any, list[str]]:
    """The held-out real drawings' features (read as a stream, fitted to the generated size),
    what was read, and a note when FID/KID cannot be measured."""
    from bluepri.eval.metrics import image_features
    from bluepri.eval.reference import fitted_drawings, reference_source

    found = reference_source(config, manifest)
    if found is None:
        note = "the cache's source is not an image folder; set reference_images"
        return None, None, [f"FID/KID not measured: no real drawings ({note})"]
    root, keys = found
    skipped: Counter = Counter()
    drawings = fitted_drawings(root, keys[:REFERENCE_MAX], plan.width, plan.height, skipped)
    try:
        real = image_features(drawings, features)
    except BluepriError:  # none could be read
        real = None
    reference = ReferenceSet(source=root, count=0 if real is None else len(real),
                             skipped=dict(skipped))  # fmt: skip
    notes = [f"reference drawings skipped: {dict(skipped)}"] if skipped else []
    if reference.count < 2:
        notes.append(f"FID/KID not measured: fewer than 2 real drawings in {root}")
        return reference, None, notes
    return reference, real, notes


def score_run(
    uris: list[str], prompts: list[str], clip: Any, features: Any, real: Any, config: EvalConfig
) -> Scores:
    """A run's scores, its images read FEATURE_BATCH at a time (a 5,000-prompt run never
    sits in memory): palette shares, CLIP score, then FID/KID on the features."""
    from bluepri.eval.metrics import FEATURE_BATCH, batched, clip_score, image_features, same_size
    from bluepri.eval.palette import blueprint_score

    # Per batch of images: its size, palette shares, CLIP score and features; the run's
    # scores are the batches' means weighted by their sizes (= the means over images).
    weights, palettes, clips, parts, sizes = [], [], [], [], set()
    for chunk in batched(list(zip(uris, prompts, strict=True)), FEATURE_BATCH):
        images = [read_image(uri) for uri, _ in chunk]
        sizes.add(same_size(images, "generated images"))
        weights.append(len(images))
        palettes.append(blueprint_score(images))
        clips.append(clip_score(images, [prompt for _, prompt in chunk], clip))
        if real is not None:
            parts.append(image_features(images, features))
    if len(sizes) > 1:
        raise BluepriError(f"generated images must share one size, got {sorted(sizes)}")
    scores = Scores(
        blueprint_score=weighted_mean([p.blueprint for p in palettes], weights),
        paper_score=weighted_mean([p.paper for p in palettes], weights),
        clip_score=weighted_mean(clips, weights),
    )
    if real is not None:
        import torch

        from bluepri.eval.metrics import fid_kid

        measured = fid_kid(real, torch.cat(parts), config.kid_subset_size)
        scores.fid, scores.kid_mean, scores.kid_std = (
            measured.fid,
            measured.kid_mean,
            measured.kid_std,
        )
    return scores


def weighted_mean(values: list[float], weights: list[int]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def read_image(uri: str) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB")


def add_differences(runs: list[ModelRun]) -> None:
    """Each run's scores minus the base's at the same refiner setting."""
    bases = {run.refine: run for run in runs if run.label == BASE_LABEL}
    for run in runs:
        base = bases[run.refine]
        for name in SCORES:
            mine, theirs = getattr(run.scores, name), getattr(base.scores, name)
            run.differences[name] = (
                None if mine is None or theirs is None or run is base else mine - theirs
            )


# -- outputs ----------------------------------------------------------------------------------


def write_outputs(
    result: EvalResult, config: EvalConfig, out: str, started: float, log: Callable[[str], None]
) -> EvalResult:
    """metrics.parquet, the history, the report and summary figure, then eval.json (last: a
    folder with eval.json is a finished evaluation)."""

    from bluepri.eval.history import append_history, history_rows, parquet_bytes, to_table
    from bluepri.eval.report import write_report

    metrics = to_table(history_rows(result))  # the history's schema: typed, even all-null
    storage.write_bytes(storage.join(out, EVAL_METRICS), parquet_bytes(metrics))
    history = None
    if config.history:
        history = append_history(config.history, result)
        log(f"eval: history {config.history} now holds {history.num_rows} rows")
    report, summary = write_report(result, out, history=history, search_dir=config.search)
    result.report, result.summary_png = report, summary
    result.seconds = round(time.perf_counter() - started, 3)
    storage.write_json(storage.join(out, EVAL_JSON), result.model_dump(mode="json"))
    for line in result.summary_lines():
        log(line)
    return result
