"""The `bluepri` command: one sub-command per stage, each parsing flags into a config and
calling that stage's entry point. Bad input ends in one `bluepri: error: ...` line and exit 2.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import typer

from bluepri.config import (
    DemoConfig,
    EvalConfig,
    ModelsConfig,
    PrepareConfig,
    PretrainConfig,
    RenderConfig,
    SearchConfig,
    ServeConfig,
    SynthConfig,
    TrainConfig,
    apply_overrides,
    build_config,
    combine_overrides,
    load_yaml,
    parse_overrides,
)
from bluepri.errors import BluepriError

app = typer.Typer(
    help="SDXL + LoRA for blueprint synthesis on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Model references and the tiny offline models.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: synthetic blueprints, preparation.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


@app.callback()
def choose_cluster(
    address: str = typer.Option(
        None,
        "--address",
        envvar="RAY_ADDRESS",
        help="Ray cluster (GCS host:port) to run on; default: a local Ray of this command's own.",
    ),
) -> None:
    """SDXL + LoRA for blueprint synthesis on Ray."""
    from bluepri.runtime import ADDRESS_ENV

    # Ray reads RAY_ADDRESS itself: a flag given sets it for this process and its workers.
    if address:
        os.environ[ADDRESS_ENV] = address


def config_from(model: type, config_file: Path | None, values: dict[str, Any]):
    """Flags (non-None) over an optional YAML file, validated into `model`."""
    if config_file is not None:
        return load_yaml(config_file, model, values)
    return build_config(model, {k: v for k, v in values.items() if v is not None})


@models_app.command("build-tiny")
def models_build_tiny(
    out: Path = typer.Option(None, help="Folder to write into (default: $BLUEPRI_HOME/tiny)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    name: str = typer.Option("all", help="base, refiner, blip or all."),
) -> None:
    """Build the tiny random-weight SDXL base, refiner and BLIP model folders."""
    from bluepri.models.loading import bluepri_home
    from bluepri.models.tiny import TINY_NAMES, build_tiny
    from bluepri.storage import output_folder

    names = TINY_NAMES if name == "all" else (name,)
    if any(n not in TINY_NAMES for n in names):
        raise BluepriError(f"unknown tiny model {name!r}; expected {', '.join(TINY_NAMES)} or all")
    root = output_folder(out if out is not None else bluepri_home() / "tiny")
    for n in names:
        folder = build_tiny(n, root / f"{n}-seed{seed}", seed=seed)
        typer.echo(f"tiny:{n} -> {folder}")


PRETRAIN_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def pretrain_help(name: str) -> str:
    return PretrainConfig.model_fields[name].description or ""


@models_app.command("pretrain-tiny", context_settings=PRETRAIN_CONTEXT)
def models_pretrain_tiny(
    ctx: typer.Context,
    out: str = typer.Option(None, help=pretrain_help("out")),
    device: str = typer.Option(None, help="cpu or cuda."),
    seed: int = typer.Option(None, help=pretrain_help("seed")),
    threads: int = typer.Option(None, help=pretrain_help("threads")),
    workers: int = typer.Option(None, help=pretrain_help("workers")),
    resolution: int = typer.Option(None, help=pretrain_help("resolution")),
    pool_size: int = typer.Option(None, "--pool-size", help=pretrain_help("pool_size")),
    vae_steps: int = typer.Option(None, "--vae-steps", help=pretrain_help("vae_steps")),
    base_steps: int = typer.Option(None, "--base-steps", help=pretrain_help("base_steps")),
    refiner_steps: int = typer.Option(None, "--refiner-steps", help=pretrain_help("refiner_steps")),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size of all three stages."),
    fp16: bool = typer.Option(None, "--fp16/--fp32", help=pretrain_help("fp16")),
    preview: bool = typer.Option(None, "--preview/--no-preview", help=pretrain_help("preview")),
    config: Path = typer.Option(None, help="YAML with PretrainConfig keys."),
) -> None:
    """Pretrain tiny:drawing-base and tiny:drawing-refiner (VAE, base UNet, refiner UNet) on
    synthetic drawings; writes both pipeline folders and RECIPE.json under --out.

    Any other PretrainConfig key as KEY=VALUE, e.g. `base_lr=2e-4 base_batch_size=256`.
    """
    flags = {k: v for k, v in locals().items() if k not in ("ctx", "config", "batch_size")}
    if batch_size is not None:
        for stage in ("vae", "base", "refiner"):
            flags[f"{stage}_batch_size"] = batch_size
    values = combine_overrides(flags, parse_overrides(PretrainConfig, ctx.args))
    if config is None:
        values = apply_overrides({}, values)
    cfg = config_from(PretrainConfig, config, values)
    from bluepri.models.pretrain import pretrain_tiny  # heavy imports only once it is valid

    result = pretrain_tiny(cfg, log=typer.echo)
    for name, stage in result.stages.items():
        typer.echo(f"{name}: {stage.steps} steps, final loss {stage.final_loss:.5f}")
    typer.echo(result.recipe)


@data_app.command("synth")
def data_synth(
    out: str = typer.Option(..., help="Output folder (an HF imagefolder)."),
    num_images: int = typer.Option(None, "--num-images", help="How many drawings."),
    seed: int = typer.Option(None, help="Random seed."),
    uncaptioned_fraction: float = typer.Option(None, help="Fraction left for the captioner."),
    style: str = typer.Option(None, help="blueprint, or paper (dark ink on white paper)."),
    config: Path = typer.Option(None, help="YAML file with the same keys."),
) -> None:
    """Write a procedurally generated blueprint set (PNGs + metadata.jsonl)."""
    from bluepri.data.synth import synthesize

    cfg = config_from(
        SynthConfig,
        config,
        {
            "out_dir": out,
            "num_images": num_images,
            "seed": seed,
            "uncaptioned_fraction": uncaptioned_fraction,
            "style": style,
        },
    )
    result = synthesize(cfg)
    typer.echo(
        f"{result.num_images} drawings ({result.num_captioned} captioned) "
        f"across {len(result.families)} families"
    )
    typer.echo(result.out_dir)


@data_app.command("prepare")
def data_prepare(
    source: str = typer.Option(None, help="imagefolder, image folder, parquet or hub dataset."),
    out: str = typer.Option(None, help="Cache root (local path or URI)."),
    resolution: int = typer.Option(None, "--resolution"),
    center_crop: bool = typer.Option(None, "--center_crop/--random_crop"),
    random_flip: bool = typer.Option(None, "--random_flip/--no_random_flip"),
    image_column: str = typer.Option(None, "--image_column"),
    caption_column: str = typer.Option(None, "--caption_column"),
    base: str = typer.Option(None, help="Model whose VAE and text encoders encode the cache."),
    vae: str = typer.Option(None, help="Replacement VAE, e.g. madebyollin/sdxl-vae-fp16-fix."),
    captioner: str = typer.Option(None, help="BLIP model for missing captions."),
    recaption: bool = typer.Option(None, "--recaption/--keep_captions"),
    caption_prefix: str = typer.Option(None, "--caption_prefix"),
    caption_suffix: str = typer.Option(None, "--caption_suffix"),
    buckets: bool = typer.Option(None, "--buckets/--square"),
    augment: bool = typer.Option(None, "--augment/--no_augment"),
    val_fraction: float = typer.Option(None, "--val_fraction"),
    dedup_threshold: int = typer.Option(None, "--dedup_threshold"),
    num_encode_actors: int = typer.Option(None, "--num_encode_actors"),
    model_stage: str = typer.Option(
        None, "--model_stage", help="auto, driver or actors: where the models run."
    ),
    encode_batch_size: int = typer.Option(None, "--encode_batch_size"),
    device: str = typer.Option(None),
    dtype: str = typer.Option(None),
    config: Path = typer.Option(None, help="YAML file with the same keys."),
) -> None:
    """Decode, validate, dedup, caption and encode a dataset into a training cache."""
    values = {k: v for k, v in locals().items() if k != "config"}
    cfg = config_from(PrepareConfig, config, values)
    from bluepri.data.prepare import prepare

    info = prepare(cfg, log=typer.echo)
    typer.echo(info.uri)


@app.command("generate")
def generate_one(
    prompt: str = typer.Option(..., help="Prompt for text encoder 1 (subject)."),
    out: Path = typer.Option(..., help="PNG file to write."),
    prompt_2: str = typer.Option(None, help="Prompt for text encoder 2 (style)."),
    negative_prompt: str = typer.Option(None, help="What to steer away from."),
    base: str = typer.Option("tiny:base", help="Base model ref."),
    refiner: str = typer.Option("tiny:refiner", help="Refiner model ref ('' for none)."),
    adapter: str = typer.Option(None, help="LoRA adapter folder."),
    width: int = typer.Option(None),
    height: int = typer.Option(None),
    steps: int = typer.Option(30),
    guidance: float = typer.Option(5.0),
    seed: int = typer.Option(0),
    high_noise_frac: float = typer.Option(0.8),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
) -> None:
    """Generate one image through the shared generation path."""
    from bluepri.generate import GenerationRequest, generate, load_pipelines

    if out.exists() and out.is_dir():
        raise BluepriError(f"output path {str(out)!r} is a folder; name a .png file")
    request = build_config(
        GenerationRequest,
        {
            "prompt": prompt,
            "prompt_2": prompt_2,
            "negative_prompt": negative_prompt,
            "width": width,
            "height": height,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "seed": seed,
            "refine": bool(refiner),
            "high_noise_frac": high_noise_frac,
            "adapter": adapter,
        },
    )
    models = build_config(
        ModelsConfig, {"base": base, "refiner": refiner or None, "device": device, "dtype": dtype}
    )
    result = generate(load_pipelines(models), request)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(out)
    typer.echo(str(out))


@app.command("demo")
def demo(
    out: str = typer.Option(None, help="Output folder (default demo-out)."),
    num_images: int = typer.Option(None, "--num-images", help="Catalogue images to render."),
    dataset_size: int = typer.Option(None, help="Synthetic blueprints to make."),
    steps: int = typer.Option(None, help="Denoising steps per image."),
    size: int = typer.Option(None, help="Image height in pixels (multiple of 8)."),
    seed: int = typer.Option(None),
    tune_trials: int = typer.Option(None, "--tune-trials", help="Search trials (0: no search)."),
    config: Path = typer.Option(None, help="YAML file with the same keys."),
) -> None:
    """Run the platform end to end on tiny models and synthetic blueprints."""
    cfg = config_from(
        DemoConfig,
        config,
        {
            "out_dir": out,
            "num_images": num_images,
            "dataset_size": dataset_size,
            "steps": steps,
            "size": size,
            "seed": seed,
            "tune_trials": tune_trials,
        },
    )
    from bluepri.demo import run_demo  # heavy imports only once the config is valid

    result = run_demo(cfg, log=typer.echo)  # its closing lines name what to look at
    typer.echo(result.out_dir)


@app.command("serve")
def serve_command(
    config: Path = typer.Option(None, help="YAML with ServeConfig keys (limits, replicas, ...)."),
    registry: str = typer.Option(None, "--registry", help="Adapter registry root (path or URI)."),
    adapter_name: str = typer.Option(
        None, "--adapter-name", help="Adapter whose champion answers requests naming none."
    ),
    host: str = typer.Option(None, help="HTTP host (default 127.0.0.1: loopback only)."),
    port: int = typer.Option(None, help="HTTP port (default 8000)."),
    tiny: bool = typer.Option(False, "--tiny", help="Serve the tiny offline models."),
    write_config: Path = typer.Option(
        None, "--write-config", help="Write a Ray Serve config file (serve deploy) and exit."
    ),
) -> None:
    """Serve SDXL + LoRA adapters over HTTP on Ray Serve (local Ray, or RAY_ADDRESS)."""
    values: dict[str, Any] = {
        "registry": registry,
        "adapter_name": adapter_name,
        "host": host,
        "port": port,
        "models": ModelsConfig.tiny().model_dump() if tiny else None,
    }
    cfg = config_from(ServeConfig, config, values)
    from bluepri.serve import deploy  # heavy imports only once the config is valid

    if write_config is not None:
        typer.echo(deploy.write_serve_config(cfg, write_config))
        return
    url = deploy.start(cfg)
    typer.echo(f"serving {url} (API docs {url}/docs); Ctrl-C stops")
    try:
        threading.Event().wait()  # until Ctrl-C
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        deploy.stop(cfg)


TRAIN_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("train", context_settings=TRAIN_CONTEXT)
def train_command(
    ctx: typer.Context,
    pretrained_model_name_or_path: str = typer.Option(
        None, "--pretrained_model_name_or_path", help="SDXL base: hub id, folder or tiny:base."
    ),
    pretrained_vae_model_name_or_path: str = typer.Option(
        None, "--pretrained_vae_model_name_or_path", help="e.g. madebyollin/sdxl-vae-fp16-fix."
    ),
    dataset_name: str = typer.Option(None, "--dataset_name", help="Hub dataset to prepare."),
    train_data_dir: str = typer.Option(None, "--train_data_dir", help="Image folder to prepare."),
    cache: str = typer.Option(None, "--cache", help="A prepared cache (skips the data stage)."),
    cache_root: str = typer.Option(None, "--cache_root", help="Where the data stage writes."),
    image_column: str = typer.Option(None, "--image_column"),
    caption_column: str = typer.Option(None, "--caption_column"),
    captioner: str = typer.Option(None, "--captioner", help="BLIP model for missing captions."),
    val_fraction: float = typer.Option(None, "--val_fraction", help="Held-out share of rows."),
    resolution: int = typer.Option(None, "--resolution"),
    center_crop: bool = typer.Option(None, "--center_crop/--random_crop"),
    random_flip: bool = typer.Option(None, "--random_flip/--no_random_flip"),
    dataloader_num_workers: int = typer.Option(None, "--dataloader_num_workers"),
    rank: int = typer.Option(None, "--rank", help="LoRA rank."),
    lora_alpha: float = typer.Option(None, "--lora_alpha", help="LoRA alpha (default: rank)."),
    lora_targets: str = typer.Option(None, "--lora_targets", help="Comma-separated modules."),
    train_text_encoder: bool = typer.Option(None, "--train_text_encoder/--freeze_text_encoder"),
    text_encoder_lr: float = typer.Option(None, "--text_encoder_lr", help="0 keeps it frozen."),
    text_encoder_2_lr: float = typer.Option(None, "--text_encoder_2_lr"),
    train_batch_size: int = typer.Option(None, "--train_batch_size"),
    num_train_epochs: int = typer.Option(None, "--num_train_epochs"),
    max_train_steps: int = typer.Option(None, "--max_train_steps"),
    gradient_accumulation_steps: int = typer.Option(None, "--gradient_accumulation_steps"),
    gradient_checkpointing: bool = typer.Option(
        None, "--gradient_checkpointing/--no_gradient_checkpointing"
    ),
    learning_rate: float = typer.Option(None, "--learning_rate"),
    scale_lr: bool = typer.Option(None, "--scale_lr/--no_scale_lr"),
    lr_scheduler: str = typer.Option(None, "--lr_scheduler"),
    lr_warmup_steps: int = typer.Option(None, "--lr_warmup_steps"),
    snr_gamma: float = typer.Option(None, "--snr_gamma", help="Min-SNR gamma (e.g. 5.0)."),
    noise_offset: float = typer.Option(None, "--noise_offset"),
    prediction_type: str = typer.Option(None, "--prediction_type", help="epsilon|v_prediction"),
    use_8bit_adam: bool = typer.Option(None, "--use_8bit_adam/--no_8bit_adam"),
    adam_beta1: float = typer.Option(None, "--adam_beta1"),
    adam_beta2: float = typer.Option(None, "--adam_beta2"),
    adam_weight_decay: float = typer.Option(None, "--adam_weight_decay"),
    adam_epsilon: float = typer.Option(None, "--adam_epsilon"),
    max_grad_norm: float = typer.Option(None, "--max_grad_norm"),
    mixed_precision: str = typer.Option(None, "--mixed_precision", help="no, fp16 or bf16."),
    allow_tf32: bool = typer.Option(None, "--allow_tf32/--no_tf32"),
    seed: int = typer.Option(None, "--seed"),
    checkpointing_steps: int = typer.Option(None, "--checkpointing_steps"),
    checkpoints_total_limit: int = typer.Option(None, "--checkpoints_total_limit"),
    resume_from_checkpoint: str = typer.Option(
        None, "--resume_from_checkpoint", help="'latest' or a checkpoint folder."
    ),
    validation_prompt: str = typer.Option(None, "--validation_prompt"),
    num_validation_images: int = typer.Option(None, "--num_validation_images"),
    validation_epochs: int = typer.Option(None, "--validation_epochs"),
    validation_inference_steps: int = typer.Option(None, "--validation_inference_steps"),
    report_to: str = typer.Option(
        None, "--report_to", help="wandb, mlflow, tensorboard (comma-separated), all or none."
    ),
    logging_dir: str = typer.Option(None, "--logging_dir"),
    output_dir: str = typer.Option(None, "--output_dir"),
    push_to_hub: bool = typer.Option(None, "--push_to_hub/--no_push_to_hub"),
    hub_model_id: str = typer.Option(None, "--hub_model_id"),
    num_workers: int = typer.Option(None, "--num_workers", help="Ray Train workers."),
    use_gpu: bool = typer.Option(None, "--use_gpu/--cpu", help="One GPU per worker."),
    storage_path: str = typer.Option(None, "--storage_path", help="Ray run storage (URI ok)."),
    max_failures: int = typer.Option(None, "--max_failures", help="Worker-group restarts."),
    experiment_name: str = typer.Option(None, "--experiment_name", help="Ray run name."),
    in_process: bool = typer.Option(
        None,
        "--in_process/--worker_group",
        help="Train here, or on a Ray Train worker group (default: here for one local worker).",
    ),
    config: Path = typer.Option(None, "--config", help="YAML file with the same keys."),
) -> None:
    """Fine-tune LoRA on SDXL with Ray Train (the paper's train_text_to_image_lora_sdxl flags)."""
    if ctx.args:
        raise BluepriError(f"unknown flag {ctx.args[0]!r}; see `bluepri train --help`")
    values = {k: v for k, v in locals().items() if k not in ("ctx", "config")}
    if lora_targets is not None:
        values["lora_targets"] = [t.strip() for t in lora_targets.split(",") if t.strip()]
    cfg = config_from(TrainConfig, config, values)
    from bluepri.train import train  # heavy imports only once the config is valid

    result = train(cfg, log=typer.echo)
    from bluepri.timings import timing_lines

    typer.echo("where the time went:")
    for line in timing_lines(result.timings):
        typer.echo(line)
    typer.echo(
        f"{result.global_step} steps; held-out loss {result.initial_val_loss} -> "
        f"{result.final_val_loss}"
    )
    typer.echo(result.adapter)


adapters_app = typer.Typer(
    help="Adapter registry: put, list, show, verify, promote, roll back, export.",
    no_args_is_help=True,
)
app.add_typer(adapters_app, name="adapters")
REGISTRY_HELP = "Registry root, a path or URI (default: $BLUEPRI_HOME/registry)."


def open_registry(root: str | None):
    from bluepri.registry import AdapterRegistry

    return AdapterRegistry(root)


@adapters_app.command("list")
def adapters_list(
    name: str = typer.Argument(None, help="Only this adapter's versions."),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
) -> None:
    """Stored versions: champion mark, created, rank, held-out loss, sha256."""
    store = open_registry(registry)
    listing = store.scan(name)
    report_problems(listing.problems)
    if not listing.records:
        typer.echo(f"no adapters in {store.uri}")
        return
    champions = {n: store.champion(n) for n in {r.name for r in listing.records}}
    for record in listing.records:
        mark = "*" if champions[record.name] == record.version else " "
        loss = record.adapter.metric("final_val_loss")
        typer.echo(
            f"{mark} {record.name}/{record.version}  {record.adapter.created or '-'}  "
            f"rank {record.adapter.rank}  val_loss {loss if loss is not None else '-'}  "
            f"sha256 {record.sha256[:12]}"
        )


def report_problems(problems: list) -> None:
    """Broken registry entries were skipped: say which, on stderr, and go on."""
    for problem in problems:
        typer.echo(f"bluepri: skipped {problem.where}: {problem.message}", err=True)


@adapters_app.command("show")
def adapters_show(
    name: str = typer.Argument(..., help="Adapter name."),
    version: str = typer.Argument("champion", help="Version, 'champion' or 'latest'."),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
) -> None:
    """A version's adapter.json, files and champion status, as JSON."""
    import json

    typer.echo(json.dumps(open_registry(registry).show(name, version), indent=2, default=str))


@adapters_app.command("put")
def adapters_put(
    folder: str = typer.Argument(..., help="Adapter artifact folder (path or URI)."),
    name: str = typer.Option(..., "--name", help="Adapter name to store it under."),
    version: str = typer.Option(None, "--version", help="Version id (default: next v0001...)."),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
) -> None:
    """Copy an adapter artifact into the registry as a new, immutable version."""
    record = open_registry(registry).put(folder, name, version)
    typer.echo(f"{record.name}/{record.version} sha256 {record.sha256[:12]} -> {record.uri}")


@adapters_app.command("verify")
def adapters_verify(
    name: str = typer.Argument(..., help="Adapter name."),
    version: str = typer.Argument(None, help="One version (default: every version)."),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
) -> None:
    """Check sha256 and file types of one or every version; exit 2 if any fails."""
    store = open_registry(registry)
    versions = [version] if version else store.versions(name)
    failed = 0
    for each in versions:
        try:
            record = store.verify(name, each)
            typer.echo(f"ok {name}/{record.version} sha256 {record.sha256[:12]}")
        except BluepriError as err:
            failed += 1
            typer.echo(f"FAILED {name}/{each}: {err}")
    if failed:
        raise BluepriError(f"{failed} of {len(versions)} versions of {name!r} failed verification")


@adapters_app.command("promote")
def adapters_promote(
    name: str = typer.Argument(..., help="Adapter name."),
    version: str = typer.Argument(..., help="Version to make champion (or 'latest')."),
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
) -> None:
    """Make a verified version the champion."""
    decision = open_registry(registry).promote(name, version, reason)
    typer.echo(f"{name}: champion {decision.champion_before} -> {decision.champion_after}")


@adapters_app.command("rollback")
def adapters_rollback(
    name: str = typer.Argument(..., help="Adapter name."),
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
) -> None:
    """Make the previous champion champion again."""
    decision = open_registry(registry).rollback(name, reason)
    typer.echo(f"{name}: champion {decision.champion_before} -> {decision.champion_after}")


@adapters_app.command("history")
def adapters_history(
    name: str = typer.Argument(..., help="Adapter name."),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
) -> None:
    """Every put, promote, reject and rollback, oldest first."""
    history = open_registry(registry).read_history(name)
    report_problems(history.problems)
    for event in history.events:
        details = event.get("reason") or event.get("sha256", "")[:12]
        typer.echo(f"{event.get('at')}  {event.get('action'):8}  {event.get('version')}  {details}")


@adapters_app.command("export")
def adapters_export(
    name: str = typer.Argument(..., help="Adapter name."),
    version: str = typer.Argument("champion", help="Version, 'champion' or 'latest'."),
    out: str = typer.Option(..., "--out", help="Folder to write into (path or URI)."),
    format: str = typer.Option("kohya", "--format", help="kohya (ComfyUI/A1111) or diffusers."),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
) -> None:
    """Write a verified copy in kohya (one .safetensors) or diffusers (a folder) format."""
    typer.echo(open_registry(registry).export(name, version, out, format=format))


# Commands that take any of their config's keys as KEY=VALUE after the flags.
OVERRIDES_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def config_with_overrides(model: type, ctx: typer.Context, flags: dict, config: Path | None):
    """Flags, then KEY=VALUE overrides, over an optional YAML file, validated into `model`."""
    values = combine_overrides(flags, parse_overrides(model, ctx.args))
    if config is None:
        values = apply_overrides({}, values)  # no file: UNSET keys are simply left out
    return config_from(model, config, values)


@app.command("render", context_settings=OVERRIDES_CONTEXT)
def render_command(
    ctx: typer.Context,
    catalogue: str = typer.Option(None, help="Catalogue: CSV, JSONL or parquet (path or URI)."),
    out: str = typer.Option(None, help="Render folder: images/, manifest.parquet, gallery.html."),
    adapter: str = typer.Option(
        None, help="Adapter of rows naming none: name (its champion), name@version or none."
    ),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
    tiny: bool = typer.Option(False, "--tiny", help="Render with the tiny offline models."),
    config: Path = typer.Option(None, help="YAML with RenderConfig keys."),
) -> None:
    """Render a catalogue on Ray Data: base and refiner actor pools, PNGs with metadata, a
    parquet manifest, contact sheets and an HTML gallery. A rerun skips what is done.

    Any RenderConfig key as KEY=VALUE, e.g. `steps=4 width=512 base_actors=2
    refiner_actors=1`. Exit code 1 when any row failed (see the manifest's error column).
    """
    flags = {
        "catalogue": catalogue,
        "out": out,
        "adapter": adapter,
        "registry": registry,
        "models": ModelsConfig.tiny().model_dump() if tiny else None,
    }
    cfg = config_with_overrides(RenderConfig, ctx, flags, config)
    from bluepri.render import render  # heavy imports only once the config is valid

    result = render(cfg, log=typer.echo)
    for line in result.summary_lines():
        typer.echo(line)
    if not result.ok:
        raise typer.Exit(1)


@app.command("eval", context_settings=OVERRIDES_CONTEXT)
def eval_command(
    ctx: typer.Context,
    cache: str = typer.Option(None, help="Prepared cache: held-out rows, captions, drawings."),
    out: str = typer.Option(None, help="Evaluation folder: eval.json, report.html, renders/."),
    adapter: list[str] = typer.Option(
        None, "--adapter", help="Registry reference or adapter folder; repeat for several."
    ),
    registry: str = typer.Option(None, "--registry", envvar="BLUEPRI_REGISTRY", help=REGISTRY_HELP),
    protocol: str = typer.Option(None, help="quick (a few dozen prompts) or mlperf-like."),
    tiny: bool = typer.Option(
        False, "--tiny", help="The tiny offline models (drawing base and refiner, tiny:clip)."
    ),
    config: Path = typer.Option(None, help="YAML with EvalConfig keys."),
) -> None:
    """Measure the base model and adapters on one held-out split and prompt set, fixed seeds:
    held-out loss, blueprint score, CLIP score, FID/KID; writes report.html and summary.png.

    Any EvalConfig key as KEY=VALUE, e.g. `max_prompts=8 steps=10 history=evals.parquet`.
    """
    flags = {
        "cache": cache,
        "out": out,
        "adapters": adapter or None,
        "registry": registry,
        "protocol": protocol,
        "models": ModelsConfig.drawing().model_dump() if tiny else None,
        "clip_model": "tiny:clip" if tiny else None,
    }
    cfg = config_with_overrides(EvalConfig, ctx, flags, config)
    from bluepri.eval import evaluate  # heavy imports only once the config is valid

    evaluate(cfg, log=typer.echo)


@app.command("tune")
def tune_command(
    config: Path = typer.Option(None, help="YAML with SearchConfig keys (space, train, ...)."),
    experiment_name: str = typer.Option(None, "--experiment_name"),
    storage_path: str = typer.Option(None, "--storage_path"),
    num_trials: int = typer.Option(None, "--num_trials"),
    max_concurrent_trials: int = typer.Option(None, "--max_concurrent_trials"),
    seed: int = typer.Option(None, "--seed"),
    registry: str = typer.Option(None, "--registry", help="Adapter registry root."),
    resume: str = typer.Option(
        None,
        "--resume",
        help="Experiment folder of a search whose driver died: continue it. The folder must "
        "be trusted: Ray Tune unpickles its saved state (bluepri refuses folders without "
        "their search.json).",
    ),
    promote: bool = typer.Option(None, "--promote/--no_promote"),
) -> None:
    """Search learning rate, rank and snr_gamma (Ray Tune + Optuna + ASHA); promote the best."""
    from bluepri.tune import tune
    from bluepri.tune.results import summary_lines
    from bluepri.tune.search import saved_search

    values = {
        "experiment_name": experiment_name,
        "storage_path": storage_path,
        "num_trials": num_trials,
        "max_concurrent_trials": max_concurrent_trials,
        "seed": seed,
        "registry": registry,
        "promote": promote,
    }
    cfg = saved_search(resume) if resume else config_from(SearchConfig, config, values)
    result = tune(cfg, resume=bool(resume), log=typer.echo)
    for line in summary_lines(result):
        typer.echo(line)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one `bluepri: error:` line on stderr and exit code 2.

    Usage errors (unknown flag, missing option) are typer's own, also exit code 2.
    """
    # transformers warns about torchvision (which we deliberately do not install) on import.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app(args=argv)  # standalone mode: ends in SystemExit with the command's exit code
    except BluepriError as err:
        print(f"bluepri: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
