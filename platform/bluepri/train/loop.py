"""The per-worker training loop, top to bottom like diffusers' `train_text_to_image_lora_sdxl.py`.

Ray Train runs `train_loop_per_worker` on every worker. Differences from the diffusers script,
each for a reason:
- latents and (frozen) text embeddings come from the prepared cache, not a VAE/CLIP pass;
- noise, timesteps and latent draws come from a generator seeded by (seed, step, micro-batch,
  rank), and the data order is a pure function of (seed, epoch, rank), so a run restarted from
  a checkpoint continues exactly where it stopped (no replayed epoch, no skipped sample);
- gradients of the LoRA weights are averaged with one flat all-reduce per optimiser step
  instead of DDP: LoRA gradients are small, accumulation needs no `no_sync`, and parameters
  that get no gradient (text encoder 1's last layer: SDXL reads its penultimate layer) do
  not trip DDP's unused-parameter check;
- validation is shared by all ranks (see validation.py), so no rank waits on rank 0.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bluepri import storage
from bluepri.artifacts import ADAPTER_JSON, LOSS_CURVE, METRICS_JSON, VALIDATION_DIR
from bluepri.config import ModelsConfig, TrainConfig
from bluepri.denoising import (
    collate,
    derived_generator,
    fixed_noise_loss,
    prediction_target,
    read_split,
    unet_prediction,
)
from bluepri.errors import BluepriError
from bluepri.telemetry import train_metrics
from bluepri.timings import PhaseClock
from bluepri.train.artifact import publish_folder, write_adapter
from bluepri.train.checkpoint import (
    TrainState,
    checkpoint_name,
    load_checkpoint,
    save_checkpoint,
)
from bluepri.train.data import TrainPlan, accumulation_groups, epoch_batches
from bluepri.train.losses import denoising_loss, sample_latents, sample_noise, sample_timesteps
from bluepri.train.models import (
    TrainingModels,
    add_adapters,
    build_grad_scaler,
    build_lr_scheduler,
    build_optimizer,
    load_models,
    set_tf32,
)
from bluepri.train.report import Tracker, loss_curve_png, open_tracker
from bluepri.train.session import VALIDATION, RayTrainSession, WorkerSession
from bluepri.train.validation import png_bytes, validation_images

# The summary key of rank 0's phases and wall-clock start/end (`bluepri.timings`).
WORKER_TIME = "worker_time"

# Plan fields a checkpoint must share with the run resuming it: they fix the data order.
RESUME_KEYS = (
    "cache_fingerprint",
    "world_size",
    "train_batch_size",
    "gradient_accumulation_steps",
    "batches_per_epoch",
    "seed",
)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train's entry on each worker of the group."""
    return run_worker(loop_config, RayTrainSession())


def run_worker(loop_config: dict[str, Any], session: WorkerSession) -> dict[str, Any] | None:
    """The loop, on one worker of a Ray Train group or in a Tune trial (`session`)."""
    clock = PhaseClock()  # where this worker's time goes (rank 0's lands in the summary)
    loop_started = time.time()
    config = TrainConfig.model_validate(loop_config["config"])
    plan = TrainPlan.model_validate(loop_config["plan"])
    rank, world_size, device = session.rank, session.world_size, session.device
    set_tf32(config.allow_tf32)

    # 1. Models: SDXL frozen in the weight dtype, LoRA adapters trained in float32.
    models = load_models(config, device)
    add_adapters(models, config, plan.seed, (plan.text_encoder_lr, plan.text_encoder_2_lr))
    broadcast_from_rank0(models.parameters())
    rates = {
        "unet": plan.learning_rate,
        "text_encoder": plan.text_encoder_lr,
        "text_encoder_2": plan.text_encoder_2_lr,
    }
    optimizer = build_optimizer(models, config, rates)
    lr_scheduler = build_lr_scheduler(optimizer, config, plan.max_train_steps)
    grad_scaler = build_grad_scaler(config, device)
    params = models.parameters()
    run = WorkerRun(rank, models, optimizer, lr_scheduler, grad_scaler, session)
    worker_metrics = train_metrics(loop_config["run_name"], rank)  # dashboards/training.json
    clock.lap("model_load")

    # 2. Data: the cache's rows, in memory; the order comes from (seed, epoch, rank).
    train_rows = read_split(plan.cache_uri, "train")
    val_rows = read_split(plan.cache_uri, "val")
    clock.lap("data_read")

    # 3. Resume: after a crash Ray hands back the run's latest checkpoint; otherwise the
    #    one named by --resume_from_checkpoint, if any.
    checkpoint = session.resume_checkpoint() or loop_config.get("resume_from")
    if checkpoint is not None:
        from ray.train import Checkpoint

        with Checkpoint(checkpoint).as_directory() as folder:
            state = load_checkpoint(
                Path(folder),
                parameters=models.named_parameters(),
                optimizer=optimizer,
                lr_scheduler=lr_scheduler,
                grad_scaler=grad_scaler,
            )
        check_resumable(state, plan)
        # A finished run resumed with a larger --max_train_steps trains on from its end.
        state.finished = state.finished and state.global_step >= plan.max_train_steps
        state.resumed_at.append(state.global_step)
    else:
        state = TrainState(plan=plan.model_dump())

    clock.lap("resume")
    tracker = Tracker()
    if rank == 0:
        tracker = open_tracker(
            config.report_to,
            project=config.experiment_name or "bluepri-train",
            run_name=loop_config["run_name"],
            config=loop_config["config"],
            folder=Path(config.output_dir) / config.logging_dir,
            start_step=state.global_step,
        )

    def predict(noisy: torch.Tensor, timesteps: torch.Tensor, batch: dict[str, Any]):
        return unet_prediction(models, noisy, timesteps, batch)

    # One fixed-noise measurement for the "before" number and every validation after it.
    measure_val_loss = partial(
        fixed_noise_loss,
        val_rows,
        predict=predict,
        noise_scheduler=models.noise_scheduler,
        rank=rank,
        world_size=world_size,
        device=device,
    )
    clock.lap("tracker_open")
    if state.global_step == 0 and state.initial_val_loss is None:
        state.initial_val_loss = measure_val_loss()
        state.history.append({"step": 0, "epoch": 0, "val_loss": state.initial_val_loss})
        if state.initial_val_loss is not None:  # the curves start at the base model
            tracker.log({"val_loss": state.initial_val_loss}, step=0)
    clock.lap("validation_loss")

    # 4. Train.
    window = ThroughputWindow()
    steps_taken = 0  # by this attempt: its first step pays the warm-up
    if not state.finished:  # a run that crashed after its final checkpoint only publishes
        for epoch in range(state.epoch, plan.num_epochs):
            state.epoch = epoch
            batches = epoch_batches(
                train_rows.buckets,
                seed=plan.seed,
                epoch=epoch,
                world_size=world_size,
                rank=rank,
                batch_size=plan.train_batch_size,
            )
            loader = iter(
                torch.utils.data.DataLoader(
                    train_rows,
                    batch_sampler=batches[state.next_batch :],
                    num_workers=config.dataloader_num_workers,
                    collate_fn=collate,
                )
            )
            for group in accumulation_groups(
                len(batches), plan.gradient_accumulation_steps, start=state.next_batch
            ):
                started = time.perf_counter()
                micro_batches = [next(loader) for _ in group]
                loss_sum = torch.zeros((), device=device)
                for micro, batch in enumerate(micro_batches):
                    # Every draw of this micro-batch from one generator keyed by where it is.
                    generator = derived_generator(
                        plan.seed, "train", state.global_step, micro, rank
                    )
                    with models.autocast():
                        loss = training_loss(models, batch, generator, config)
                    grad_scaler.scale(loss / len(micro_batches)).backward()
                    loss_sum += loss.detach().float()
                step_loss = all_reduce_gradients(params, loss_sum / len(micro_batches), world_size)
                grad_scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                grad_scaler.step(optimizer)
                grad_scaler.update()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                state.global_step += 1
                state.next_batch = group.stop
                lr = lr_scheduler.get_last_lr()[0]
                local_samples = sum(len(b["caption"]) for b in micro_batches)
                samples = local_samples * world_size
                seconds = time.perf_counter() - started
                clock.add("first_step" if steps_taken == 0 else "steps", seconds)
                steps_taken += 1
                worker_metrics.step(step_loss, lr, local_samples, seconds)
                window.add(step_loss, samples, seconds)
                state.samples_seen += samples
                state.train_seconds += seconds
                state.history.append(
                    {"step": state.global_step, "epoch": epoch, "loss": step_loss, "lr": lr}
                )
                tracker.log({"train_loss": step_loss, "lr": lr}, step=state.global_step)

                if state.global_step % config.checkpointing_steps == 0:
                    with clock.phase("checkpoints"):
                        report_checkpoint(checkpoint_name(state.global_step), state, window, run)
                    crash_for_test(loop_config.get("crash"), state.global_step, session)
                if state.global_step >= plan.max_train_steps:
                    break

            # End of epoch: held-out loss and sample images every --validation_epochs.
            done = state.global_step >= plan.max_train_steps or epoch + 1 == plan.num_epochs
            if (epoch + 1) % config.validation_epochs == 0 or done:
                with clock.phase("validation_loss"):
                    val_loss = measure_val_loss()
                state.history.append(
                    {"step": state.global_step, "epoch": epoch + 1, "val_loss": val_loss}
                )
                if val_loss is not None:
                    tracker.log({"val_loss": val_loss}, step=state.global_step)
                    if rank == 0:  # the same number on every rank: one series per run
                        worker_metrics.validation(val_loss)
                with clock.phase("validation_images"):
                    sample_grid(
                        models, config, plan, epoch + 1, state.global_step, rank, world_size,
                        tracker,
                    )  # fmt: skip
                with clock.phase("validation_report"):  # a barrier across the workers
                    report_validation(state, window, run)
            if state.next_batch == len(batches):  # the position moves on to the next epoch
                state.epoch, state.next_batch = epoch + 1, 0
            if done:
                break
        state.finished = True

        # The final state, so `--resume_from_checkpoint latest` can train on from here.
        with clock.phase("checkpoints"):
            report_checkpoint(checkpoint_name(state.global_step) + "-final", state, window, run)
    else:
        # Restarted after its end (e.g. a search driver killed between a trial's last report
        # and Tune recording it): report the last validation again, or Tune keeps an older one.
        report_validation(state, window, run)
    clock.lap("loop_other")  # the loop less its timed parts: data loading, epoch set-up

    # 5. The adapter artifact, from rank 0 (every rank holds the same weights).
    summary = summarise(state, plan, models)
    tracker.close()  # flushed and ended before the artifact says the run is done
    if rank == 0:
        publish_artifact(models, config, plan, loop_config["config"], state, summary)
    barrier()
    clock.lap("artifact")
    # The driver adds its own phases and writes them all to metrics.json (`trainer.py`).
    worker_time = {"phases": clock.as_dict(), "started": loop_started, "ended": time.time()}
    return {**summary, WORKER_TIME: worker_time} if rank == 0 else None


# -- one step -----------------------------------------------------------------------------


def training_loss(
    models: TrainingModels, batch: dict[str, Any], generator: torch.Generator, config: TrainConfig
) -> torch.Tensor:
    """The diffusion loss of one micro-batch (diffusers' script, step for step)."""
    device = models.device
    # A fresh draw from the cached posterior, as `latent_dist.sample()` would give.
    latents = sample_latents(
        batch["latents"].to(device), batch["latents_std"].to(device), generator
    ).to(models.weight_dtype)
    noise = sample_noise(latents, generator, config.noise_offset)
    timesteps = sample_timesteps(
        latents.shape[0], models.noise_scheduler.config.num_train_timesteps, generator, device
    )
    noisy_latents = models.noise_scheduler.add_noise(latents, noise, timesteps)
    model_pred = unet_prediction(models, noisy_latents, timesteps, batch)
    target = prediction_target(models.noise_scheduler, latents, noise, timesteps)
    return denoising_loss(
        model_pred,
        target,
        scheduler=models.noise_scheduler,
        timesteps=timesteps,
        snr_gamma=config.snr_gamma,
    )


# -- distributed helpers ----------------------------------------------------------------------


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_from_rank0(params: list[torch.nn.Parameter]) -> None:
    """Start every rank from rank 0's adapter weights (seeding makes them equal already;
    this makes it a guarantee rather than a coincidence of identical RNG streams)."""
    if distributed():
        with torch.no_grad():
            for param in params:
                dist.broadcast(param.data, src=0)


def all_reduce_gradients(
    params: list[torch.nn.Parameter], loss: torch.Tensor, world_size: int
) -> float:
    """Average the LoRA gradients (and the logged loss) over ranks in one all-reduce.

    Which parameters have a gradient is the same on every rank (same graph), so the flat
    buffers line up; parameters without one stay without one, as AdamW expects.
    """
    with_grad = [p for p in params if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1).float() for p in with_grad] + [loss.reshape(1).float()])
    if distributed():
        dist.all_reduce(flat)
        flat /= world_size
    offset = 0
    for param in with_grad:
        count = param.numel()
        param.grad.copy_(flat[offset : offset + count].view_as(param.grad))
        offset += count
    return float(flat[-1])


def barrier() -> None:
    if distributed():
        dist.barrier()


# -- checkpoints, reports, validation images ---------------------------------------------------


class ThroughputWindow:
    """Loss and samples/s since the last report (training time only, not validation)."""

    def __init__(self) -> None:
        self.loss_sum, self.steps, self.samples, self.seconds = 0.0, 0, 0, 0.0
        self.last: dict[str, float | None] = {"loss": None, "samples_per_s": None}

    def add(self, loss: float, samples: int, seconds: float) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.samples += samples
        self.seconds += seconds

    def metrics(self, state: TrainState, lr: float) -> dict[str, Any]:
        val = [h["val_loss"] for h in state.history if h.get("val_loss") is not None]
        if self.steps:  # with no step since the last report, repeat its numbers
            self.last = {
                "loss": self.loss_sum / self.steps,
                "samples_per_s": self.samples / self.seconds if self.seconds else None,
            }
        self.loss_sum, self.steps, self.samples, self.seconds = 0.0, 0, 0, 0.0
        return {
            "step": state.global_step,
            "epoch": state.epoch,
            **self.last,
            "lr": lr,
            "val_loss": val[-1] if val else None,
            "initial_val_loss": state.initial_val_loss,
        }


@dataclass
class WorkerRun:
    """What checkpointing needs from one worker: its rank, models and optimisation state."""

    rank: int
    models: TrainingModels
    optimizer: Any
    lr_scheduler: Any
    grad_scaler: Any
    session: WorkerSession


def validations_done(state: TrainState) -> int:
    """Validations after training steps so far (the step-0 baseline does not count)."""
    return sum(1 for entry in state.history if "val_loss" in entry and entry["step"] > 0)


def report_validation(state: TrainState, window: ThroughputWindow, run: WorkerRun) -> None:
    """Report the run's latest validation, numbered (`validation` counts the reports that
    carry a fresh one: Tune's ASHA rungs; from the history, so a resumed run numbers on)."""
    metrics = window.metrics(state, run.lr_scheduler.get_last_lr()[0])
    run.session.report({**metrics, VALIDATION: validations_done(state)})


def report_checkpoint(
    name: str, state: TrainState, window: ThroughputWindow, run: WorkerRun
) -> None:
    """Rank 0 writes the checkpoint; every rank reports (in a group, a barrier)."""
    metrics = window.metrics(state, run.lr_scheduler.get_last_lr()[0])
    with tempfile.TemporaryDirectory(prefix="bluepri-ckpt-") as scratch:
        folder = None
        if run.rank == 0:
            folder = save_checkpoint(
                Path(scratch) / name,
                parameters=run.models.named_parameters(),
                optimizer=run.optimizer,
                lr_scheduler=run.lr_scheduler,
                grad_scaler=run.grad_scaler,
                state=state,
            )
        run.session.report(metrics, folder, name)


def crash_for_test(crash: dict[str, Any] | None, step: int, session: WorkerSession) -> None:
    """Fault injection for the acceptance test: the last rank kills itself once, at `step`.

    The marker file makes it happen on the first attempt only, so the restarted group runs on.
    """
    if not crash or step != crash["step"] or session.rank != session.world_size - 1:
        return
    marker = Path(crash["marker"])
    if marker.exists():
        return
    # Die only once the checkpoint just reported is registered, so the restart is from this
    # step (a real crash this close to a report may fall back one checkpoint).
    session.wait_for_checkpoints()
    marker.write_text(f"killed rank {session.rank} at step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def sample_grid(
    models: TrainingModels,
    config: TrainConfig,
    plan: TrainPlan,
    epoch: int,
    step: int,
    rank: int,
    world_size: int,
    tracker: Tracker,
) -> None:
    """`--num_validation_images` of `--validation_prompt` through THE generation path."""
    if not config.validation_prompt or config.num_validation_images == 0:
        return
    from bluepri.generate import GenerationRequest, Pipelines, generate
    from bluepri.imaging import contact_sheet

    pipes = Pipelines(
        base=models.pipe,
        refiner=None,
        models=ModelsConfig(
            base=config.pretrained_model_name_or_path,
            refiner=None,
            vae=config.pretrained_vae_model_name_or_path,
            device=str(models.device),
            # One image per call: batch invariance would buy nothing here but its per-op
            # cost (demo recipe on CPU: 0.44 -> 0.28 s a validation without it, measured).
            batch_invariant=False,
        ),
    )

    def make_image(index: int):
        request = GenerationRequest(
            prompt=config.validation_prompt,
            width=plan.resolution,
            height=plan.resolution,
            num_inference_steps=config.validation_inference_steps,
            seed=plan.seed + index,
            refine=False,
        )
        with models.autocast():
            return generate(pipes, request).image

    models.unet.eval()
    images = validation_images(
        make_image, config.num_validation_images, rank=rank, world_size=world_size
    )
    models.unet.train()
    if rank == 0:
        labels = [f"epoch {epoch} seed {plan.seed + i}" for i in range(len(images))]
        grid = contact_sheet(images, labels, cell=max(128, plan.resolution))
        storage.write_bytes(
            storage.join(config.output_dir, VALIDATION_DIR, f"epoch-{epoch:04d}.png"),
            png_bytes(grid),
        )
        tracker.log_images("validation", images, step=step)


def summarise(state: TrainState, plan: TrainPlan, models: TrainingModels) -> dict[str, Any]:
    val = [h["val_loss"] for h in state.history if h.get("val_loss") is not None and h["step"] > 0]
    return {
        "global_step": state.global_step,
        "epochs": state.epoch + (1 if state.next_batch else 0),  # a cut-short epoch counts
        "initial_val_loss": state.initial_val_loss,
        "final_val_loss": val[-1] if val else None,
        "best_val_loss": min(val) if val else None,
        "resumed_at": state.resumed_at,
        "samples_per_s": state.samples_seen / state.train_seconds if state.train_seconds else None,
        "prediction_type": models.noise_scheduler.config.prediction_type,
        "history": state.history,
    }


def publish_artifact(
    models: TrainingModels,
    config: TrainConfig,
    plan: TrainPlan,
    config_dump: dict[str, Any],
    state: TrainState,
    summary: dict[str, Any],
) -> None:
    import json

    metrics = {k: v for k, v in summary.items() if k != "history"}
    with tempfile.TemporaryDirectory(prefix="bluepri-adapter-") as scratch:
        folder = Path(scratch)
        write_adapter(
            folder,
            unet=models.unet,
            text_encoder=models.trainable.get("text_encoder"),
            text_encoder_2=models.trainable.get("text_encoder_2"),
            config=config_dump,
            plan=plan.model_dump(),
            metrics=metrics,
        )
        (folder / METRICS_JSON).write_text(
            json.dumps({**metrics, "history": state.history}, indent=1)
        )
        (folder / LOSS_CURVE).write_bytes(loss_curve_png(state.history))
        if not already_published(folder, config.output_dir):
            publish_folder(folder, config.output_dir, last=ADAPTER_JSON)


def already_published(folder: Path, output_dir: str) -> bool:
    """Whether `output_dir` holds this very adapter (same weights) already: a finished run
    restarted after publishing (a trial Tune had not yet recorded) leaves it untouched."""
    from bluepri.artifacts import has_adapter, read_adapter_info

    if not has_adapter(output_dir):
        return False
    try:
        published = read_adapter_info(output_dir).weights.sha256
    except BluepriError:
        return False  # unreadable: publish over it
    return published == read_adapter_info(str(folder)).weights.sha256


def check_resumable(state: TrainState, plan: TrainPlan) -> None:
    current = plan.model_dump()
    changed = [k for k in RESUME_KEYS if state.plan.get(k) != current[k]]
    if changed:
        raise BluepriError(
            "cannot resume: the checkpoint was trained with other "
            + ", ".join(f"{k} ({state.plan.get(k)} vs {current[k]})" for k in changed)
        )
