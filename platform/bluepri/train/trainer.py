"""`train`: the public entry point, running the loop on a Ray Train `TorchTrainer`.

On the driver, before any worker starts: validate everything that can be wrong (base model,
trackers, optional packages, hub access, the cache, the resume target), prepare the cache if
needed, and fix the plan (epochs, steps, learning rates, seed). Then Ray Train runs
`train_loop_per_worker` on `num_workers` workers, restarting the group from the latest
checkpoint on a worker failure (`FailureConfig(max_failures)`). A one-worker run with no
retries and no cluster named runs the same loop in this process instead (`in_process`,
`session.InProcessSession`): no Ray and no worker group to start for a short local run.

Runs live under `<storage_path>/<experiment_name>` (default `<output_dir>/runs/train-<time>`):
Ray keeps the checkpoints there and, for a run name it has seen, hands the latest back on
start, which is how `--resume_from_checkpoint latest` continues a run.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bluepri import storage
from bluepri.artifacts import LOSS_CURVE, METRICS_JSON, read_adapter_info, read_index, read_manifest
from bluepri.config import PrepareConfig, TrainConfig, build_config
from bluepri.errors import BluepriError, first_line
from bluepri.models.loading import resolve_ref
from bluepri.timings import PhaseClock
from bluepri.train.checkpoint import STATE, latest_checkpoint
from bluepri.train.data import TrainPlan, batches_per_epoch
from bluepri.train.loop import RESUME_KEYS, WORKER_TIME
from bluepri.train.models import text_encoder_rates
from bluepri.train.report import require_tracker

# Fault injection for the acceptance test (read on the driver, handed to the workers).
CRASH_STEP_ENV = "BLUEPRI_TEST_CRASH_AT_STEP"
CRASH_MARKER_ENV = "BLUEPRI_TEST_CRASH_MARKER"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


class TrainResult(BaseModel):
    """What a training run produced and how it went."""

    output_dir: str
    adapter: str  # the adapter folder (pytorch_lora_weights.safetensors + adapter.json)
    weights_sha256: str
    global_step: int
    epochs: int
    initial_val_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    metrics_history: str  # metrics.json: every step's loss and every validation
    loss_curve: str
    checkpoint: str | None  # the run's latest checkpoint
    run_dir: str
    resumed_at: list[int]  # steps the run restarted from (after a crash or a resume)
    samples_per_s: float | None  # training throughput over all workers (steps only)
    cache_uri: str
    cache_fingerprint: str
    seed: int
    timings: dict[str, float] = {}  # seconds per phase of the run (`bluepri.timings`)


def train(
    config: TrainConfig,
    *,
    log: Callable[[str], None] = print,
    callbacks: list[Any] | None = None,
    in_tune_trial: bool = False,
) -> TrainResult:
    """Fine-tune LoRA adapters on SDXL as `config` says; returns where the adapter is.

    `callbacks` are extra Ray Train callbacks (e.g. Tune's `TuneReportCallback` when a Tune
    trial runs this function on a worker group). `in_tune_trial`: run the one worker in this
    very process, a Tune trial's actor, reporting validations to Tune (`session`).
    """
    clock = PhaseClock()
    config = with_resolved_paths(config)
    check_base_model(config.pretrained_model_name_or_path)
    if config.pretrained_vae_model_name_or_path:
        resolve_ref(config.pretrained_vae_model_name_or_path, "vae")
    require_tracker(config.report_to)
    if config.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise BluepriError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes")
    if config.push_to_hub:
        check_hub_access()
    if in_tune_trial and not config.fits_in_process:
        raise BluepriError("a run inside a Tune trial has one worker and no retries of its own")
    run_name, resume_from, resume_state = resolve_run(config, log)
    if config.seed is None:
        seed = resume_state["plan"]["seed"] if resume_state else secrets.randbelow(2**31)
        config = build_config(TrainConfig, {**config.model_dump(), "seed": seed})

    clock.lap("checks")
    in_process = in_tune_trial or runs_in_process(config)
    if not in_process:
        from bluepri.runtime import ensure_ray

        ensure_ray()  # first: the data stage runs on it too, and its start is timed on its own
        clock.lap("ray")
    cache_uri = cache_for(config, log)  # the data stage starts Ray if it has work to do
    clock.lap("data")
    plan = make_plan(config, cache_uri)
    if resume_state:
        check_same_plan(resume_state, plan)
    log(
        f"training {plan.max_train_steps} steps ({plan.num_epochs} epochs x "
        f"{plan.updates_per_epoch} steps) on {plan.num_train} rows with {plan.world_size} "
        f"worker(s); run {run_name}"
    )

    clock.lap("checks")
    fit_started = time.time()
    if in_process:
        summary, checkpoint = fit_in_process(config, plan, run_name, resume_from, in_tune_trial)
    else:
        summary, checkpoint = fit(config, plan, run_name, resume_from, callbacks)
    clock.lap("fit")
    timings = run_timings(clock, summary.get(WORKER_TIME), fit_started, time.time())
    record_timings(config.output_dir, timings)
    info = read_adapter_info(config.output_dir)
    if config.push_to_hub:
        push_to_hub(config.output_dir, config.hub_model_id, log)
    metrics = info.metrics
    return TrainResult(
        output_dir=config.output_dir,
        adapter=config.output_dir,
        weights_sha256=info.weights.sha256,
        global_step=summary.get("global_step", metrics["global_step"]),
        epochs=summary.get("epochs", metrics["epochs"]),
        initial_val_loss=metrics["initial_val_loss"],
        final_val_loss=metrics["final_val_loss"],
        best_val_loss=metrics["best_val_loss"],
        metrics_history=storage.join(config.output_dir, METRICS_JSON),
        loss_curve=storage.join(config.output_dir, LOSS_CURVE),
        checkpoint=checkpoint,
        run_dir=storage.join(config.storage_path, run_name),
        resumed_at=metrics["resumed_at"],
        samples_per_s=metrics["samples_per_s"],
        cache_uri=plan.cache_uri,
        cache_fingerprint=plan.cache_fingerprint,
        seed=plan.seed,
        timings=timings,
    )


def run_timings(
    clock: PhaseClock, worker: dict[str, Any] | None, fit_started: float, fit_ended: float
) -> dict[str, float]:
    """The driver's phases, with `fit` split into the worker group's start (Ray Train's
    controller, the workers' processes, the torch process group), rank 0's own phases, and
    the group's shutdown. A run that restarted after a crash counts the last attempt's
    phases; the time of the earlier ones stays in the start."""
    timings = clock.as_dict()
    fit = timings.pop("fit", 0.0)
    if worker:
        phases = worker.get("phases", {})
        start = max(0.0, worker["started"] - fit_started)
        shutdown = max(0.0, fit_ended - worker["ended"])
        timings["worker_group_start"] = round(start, 3)
        timings.update(phases)
        timings["worker_group_stop"] = round(shutdown, 3)
        # What the clocks could not split (e.g. clock skew between nodes), kept visible.
        rest = fit - start - shutdown - sum(phases.values())
        timings["fit_other"] = round(rest, 3)
    else:
        timings["fit"] = fit
    timings["total"] = round(sum(clock.seconds.values()), 3)
    return timings


def record_timings(output_dir: str, timings: dict[str, float]) -> None:
    """Add the run's timings to its metrics.json (written by rank 0 before the driver knew
    them)."""
    uri = storage.join(output_dir, METRICS_JSON)
    if storage.is_file(uri):
        metrics = json.loads(storage.read_bytes(uri))
        storage.write_bytes(uri, json.dumps({**metrics, "timings": timings}, indent=1).encode())


def loop_config(
    config: TrainConfig, plan: TrainPlan, run_name: str, resume_from: str | None
) -> dict[str, Any]:
    """What every worker's loop is handed (plain values: it crosses to Ray's workers)."""
    return {
        "config": config.model_dump(),
        "plan": plan.model_dump(),
        "run_name": run_name,
        "resume_from": resume_from,
        "crash": crash_injection(),
    }


def fit(
    config: TrainConfig,
    plan: TrainPlan,
    run_name: str,
    resume_from: str | None,
    callbacks: list[Any] | None,
) -> tuple[dict[str, Any], str | None]:
    """Run the loop on a TorchTrainer; a failed run raises with Ray's error attached.
    Returns rank 0's summary and the run's latest checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from bluepri.train.loop import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(config, plan, run_name, resume_from),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=config.storage_path,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoints_total_limit),
            callbacks=callbacks,
        ),
    )
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
        return result.return_value or {}, result.checkpoint.path if result.checkpoint else None
    except Exception as err:
        raise run_failed(run_name, err) from err
    finally:
        release_controller(previous_sigint)


def run_failed(run_name: str, err: BaseException) -> RuntimeError:
    """The one line a failed run ends with, worker group or in-process."""
    return RuntimeError(f"training run {run_name} failed: {first_line(err)}")


def runs_in_process(config: TrainConfig) -> bool:
    """`in_process`, or when unset: one worker, no retries and no cluster named."""
    if config.in_process is not None:
        return config.in_process
    from bluepri.runtime import cluster_named

    return config.fits_in_process and not cluster_named()


def fit_in_process(
    config: TrainConfig,
    plan: TrainPlan,
    run_name: str,
    resume_from: str | None,
    in_tune_trial: bool,
) -> tuple[dict[str, Any], str | None]:
    """Run the loop's one worker here. A failure fails the run (a trial: Tune restarts it
    from the run's latest checkpoint under its `FailureConfig`)."""
    from bluepri.train.loop import run_worker
    from bluepri.train.session import InProcessSession

    run_dir = storage.join(config.storage_path, run_name)
    session = InProcessSession(
        run_dir,
        use_gpu=config.use_gpu,
        keep=config.checkpoints_total_limit,
        to_tune=in_tune_trial,
    )
    try:
        summary = run_worker(loop_config(config, plan, run_name, resume_from), session) or {}
    except BluepriError:
        raise
    except Exception as err:  # as the worker-group path reports it
        raise run_failed(run_name, err) from err
    finally:
        gc.collect()  # the models go before whatever this process loads next
    return summary, latest_checkpoint(run_dir)


def release_controller(previous_sigint: Any) -> None:
    """Let Ray Train's controller actor go once `fit` has returned.

    On the main thread `TorchTrainer.fit` installs a SIGINT handler that holds the controller's
    actor handle; left in place, the controller (and the placement group of its worker group,
    i.e. the training CPUs/GPUs) outlives the run, and the next Ray Data job or Tune trial in
    the same Ray waits for resources forever. Restoring the handler drops the last handle.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, previous_sigint)
    gc.collect()


# -- preflight ----------------------------------------------------------------------------------


def with_resolved_paths(config: TrainConfig) -> TrainConfig:
    """Absolute local paths (workers do not share the driver's working directory)."""
    absolute = storage.absolute

    output_dir = absolute(config.output_dir)
    values = config.model_dump()
    values["output_dir"] = output_dir
    values["storage_path"] = absolute(config.storage_path or storage.join(output_dir, "runs"))
    values["cache_root"] = absolute(config.cache_root or storage.join(output_dir, "cache"))
    if config.cache:
        values["cache"] = absolute(config.cache)
    if config.train_data_dir:
        values["train_data_dir"] = absolute(config.train_data_dir)
    if config.resume_from_checkpoint and config.resume_from_checkpoint != "latest":
        values["resume_from_checkpoint"] = absolute(config.resume_from_checkpoint)
    if not storage.is_uri(output_dir) and Path(output_dir).is_file():
        raise BluepriError(f"output_dir {config.output_dir!r} is a file, not a folder")
    return build_config(TrainConfig, values)


def check_base_model(ref: str) -> None:
    """The base must be an SDXL base (two text encoders, a UNet and a VAE), checked from its
    model_index.json alone, so a 7 GB model is not loaded just to be refused."""
    resolved = resolve_ref(ref, "base")
    if resolved.is_local:
        index = json.loads((Path(resolved.source) / "model_index.json").read_text())
    else:
        from diffusers import DiffusionPipeline

        try:
            index = DiffusionPipeline.load_config(resolved.source)
        except Exception:
            raise BluepriError(
                f"cannot read base model {ref!r}: not in the local hub cache and the hub is "
                "unreachable; download it to a folder and pass that path"
            ) from None
    missing = [
        name
        for name in ("text_encoder", "text_encoder_2", "unet", "vae")
        if not isinstance(index.get(name), list) or index[name][0] is None
    ]
    if "text_encoder" in missing or "text_encoder_2" in missing:
        raise BluepriError(f"{ref!r} is not an SDXL base: it lacks SDXL's two text encoders")
    if missing:
        raise BluepriError(f"{ref!r} is not an SDXL base: it lacks {', '.join(missing)}")


def check_hub_access() -> None:
    if importlib.util.find_spec("huggingface_hub") is None:
        raise BluepriError("--push_to_hub needs huggingface_hub: pip install huggingface_hub")
    from huggingface_hub import HfApi

    try:
        HfApi().whoami()
    except Exception as err:
        first = first_line(err)
        raise BluepriError(
            f"--push_to_hub: cannot use the Hugging Face Hub ({first[:160]}); log in with "
            "`hf auth login` and check the network, or drop --push_to_hub"
        ) from None


def push_to_hub(folder: str, repo_id: str | None, log: Callable[[str], None]) -> None:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="bluepri train")
    except Exception as err:
        first = first_line(err)
        raise BluepriError(
            f"training finished but the upload to {repo_id!r} failed ({first[:160]}); "
            f"the adapter is in {folder}"
        ) from None
    log(f"pushed {folder} to https://huggingface.co/{repo_id}")


def crash_injection() -> dict[str, Any] | None:
    if CRASH_STEP_ENV not in os.environ:
        return None
    return {"step": int(os.environ[CRASH_STEP_ENV]), "marker": os.environ[CRASH_MARKER_ENV]}


# -- runs and resuming ------------------------------------------------------------------------


def new_run_name() -> str:
    return f"train-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_has_checkpoints(run_dir: str) -> bool:
    return storage.is_file(storage.join(run_dir, RAY_SNAPSHOT)) or bool(latest_checkpoint(run_dir))


def newest_run(storage_path: str) -> str | None:
    """The most recent run folder (by name: they start with their creation time)."""
    runs = [
        name
        for name in storage.list_dirs(storage_path)
        if latest_checkpoint(storage.join(storage_path, name))
    ]
    return max(runs, key=lambda name: (name.startswith("train-"), name), default=None)


def resolve_run(
    config: TrainConfig, log: Callable[[str], None]
) -> tuple[str, str | None, dict[str, Any] | None]:
    """(run name, checkpoint to start from, that checkpoint's state) for this invocation."""
    resume = config.resume_from_checkpoint
    storage_path = config.storage_path or ""
    if resume == "latest":
        name = config.experiment_name or newest_run(storage_path)
        found = latest_checkpoint(storage.join(storage_path, name)) if name else None
        if found is None:
            log("no checkpoint to resume from ('latest'): starting a new run")
            return config.experiment_name or new_run_name(), None, None
        log(f"resuming run {name} from {found}")
        # Same run name: Ray hands its latest checkpoint back; `found` is the fallback.
        return name, found, read_checkpoint_state(found)
    name = config.experiment_name or new_run_name()
    if run_has_checkpoints(storage.join(storage_path, name)):
        raise BluepriError(
            f"run {name!r} in {storage_path} already holds checkpoints; pass "
            "--resume_from_checkpoint latest to continue it, or another --experiment_name"
        )
    if resume is None:
        return name, None, None
    return name, resume, read_checkpoint_state(resume)


def read_checkpoint_state(folder: str) -> dict[str, Any]:
    path = storage.join(folder, STATE)
    if not storage.is_file(path):
        raise BluepriError(f"{folder!r} is not a bluepri training checkpoint (no {STATE})")
    return storage.read_json(path)


def check_same_plan(state: dict[str, Any], plan: TrainPlan) -> None:
    """A checkpoint only continues a run with the same data order (same cache, workers,
    batch size, accumulation and seed)."""
    current = plan.model_dump()
    changed = [k for k in RESUME_KEYS if state["plan"].get(k) != current[k]]
    if changed:
        raise BluepriError(
            "cannot resume: the checkpoint was trained with another "
            + ", ".join(f"{k} ({state['plan'].get(k)}, now {current[k]})" for k in changed)
        )


# -- data and plan ----------------------------------------------------------------------------


def cache_for(config: TrainConfig, log: Callable[[str], None]) -> str:
    """The prepared cache to train on: `--cache`, or the data stage's output for the source."""
    if config.cache:
        read_manifest(config.cache)  # a clear error before anything else
        return config.cache
    from bluepri.data.prepare import prepare

    return prepare(prepare_config_for(config), log=log).uri


def prepare_config_for(config: TrainConfig, **extra: Any) -> PrepareConfig:
    """The data stage's config for a training config's source (`extra`: PrepareConfig-only
    knobs such as stage_cpus, or overrides)."""
    return build_config(
        PrepareConfig,
        {
            "source": config.train_data_dir or config.dataset_name,
            "out": config.cache_root,
            "image_column": config.image_column,
            "caption_column": config.caption_column,
            "resolution": config.resolution or 1024,
            "center_crop": config.center_crop,
            "random_flip": config.random_flip,
            "base": config.pretrained_model_name_or_path,
            "vae": config.pretrained_vae_model_name_or_path,
            "captioner": config.captioner,
            "val_fraction": config.val_fraction,
            # The cache's seed stays 0: a new training seed must not mean a new cache.
            **extra,
        },
    )


def make_plan(config: TrainConfig, cache_uri: str) -> TrainPlan:
    """Steps, epochs and learning rates, as diffusers' script derives them."""
    manifest = read_manifest(cache_uri)
    prepared = manifest.config
    if manifest.num_train == 0:
        raise BluepriError(f"cache {cache_uri!r} has no training rows")
    if prepared.get("base") != config.pretrained_model_name_or_path:
        raise BluepriError(
            f"cache {cache_uri!r} was encoded with {prepared.get('base')!r}, not "
            f"{config.pretrained_model_name_or_path!r}; prepare a cache for this base"
        )
    if prepared.get("vae") != config.pretrained_vae_model_name_or_path:
        raise BluepriError(
            f"cache {cache_uri!r} was encoded with VAE {prepared.get('vae')!r}; pass the same "
            "--pretrained_vae_model_name_or_path or prepare a new cache"
        )
    resolution = prepared.get("resolution")
    if config.resolution is not None and resolution != config.resolution:
        raise BluepriError(
            f"cache {cache_uri!r} holds resolution {resolution}, not {config.resolution}"
        )
    index = read_index(cache_uri)
    train_buckets = index.split_buckets("train")
    if not train_buckets:
        raise BluepriError(f"cache {cache_uri!r} has no training rows")
    world = config.num_workers
    per_epoch = batches_per_epoch(train_buckets, world, config.train_batch_size)
    updates_per_epoch = math.ceil(per_epoch / config.gradient_accumulation_steps)
    if config.max_train_steps:
        max_steps = config.max_train_steps
        epochs = math.ceil(max_steps / updates_per_epoch)
    else:
        epochs = config.num_train_epochs
        max_steps = epochs * updates_per_epoch
    learning_rate = config.learning_rate
    if config.scale_lr:  # diffusers: lr x accumulation x batch size x processes
        learning_rate *= config.gradient_accumulation_steps * config.train_batch_size * world
    te1, te2 = text_encoder_rates(config, learning_rate)
    return TrainPlan(
        cache_uri=cache_uri,
        cache_fingerprint=manifest.fingerprint,
        resolution=resolution,
        num_train=len(train_buckets),
        num_val=len(index.split_buckets("val")),
        has_text_embeds="prompt_embeds" in index.columns,
        world_size=world,
        train_batch_size=config.train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        batches_per_epoch=per_epoch,
        updates_per_epoch=updates_per_epoch,
        max_train_steps=max_steps,
        num_epochs=epochs,
        seed=config.seed,
        learning_rate=learning_rate,
        text_encoder_lr=te1,
        text_encoder_2_lr=te2,
    )
