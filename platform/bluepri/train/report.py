"""Where training metrics go: experiment trackers, and a loss-curve PNG in the output.

`--report_to` names any of wandb, mlflow and tensorboard (comma-separated, or `all`); the
trackers live on rank 0 only, as accelerate's do, and each gets the same numbers at the same
optimiser steps: `train_loss` and `lr` every step, `val_loss` at every validation (the
base model's at step 0 included), the validation images at each validation's step. Their
packages are optional imports, checked on the driver before any worker starts.

Where they write, by default under `<output_dir>/<logging_dir>`:
- wandb: `wandb/<run>/`; its own variables apply (WANDB_MODE=offline: no account, no
  network; `wandb sync` uploads later; WANDB_SILENT=true quietens it).
- mlflow: a SQLite store `mlflow.db` with artifacts in `mlartifacts/` (MLflow's file store
  is in maintenance mode): `mlflow ui --backend-store-uri sqlite:///<logs>/mlflow.db`.
  MLFLOW_TRACKING_URI, when set, names another store or server.
- tensorboard: event files in `<experiment>/<run name>/`: `tensorboard --logdir <logs>`.
On a remote cluster these variables must reach the workers (a job's runtime_env).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from bluepri.errors import BluepriError

# tracker -> (the module it imports, the package that provides it)
TRACKER_PACKAGES = {
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("tensorboard", "tensorboard"),
}


def require_tracker(report_to: Sequence[str]) -> None:
    """Fail early, with the install command, when a chosen tracker is not installed."""
    missing = [
        name for name in report_to if importlib.util.find_spec(TRACKER_PACKAGES[name][0]) is None
    ]
    if missing:
        packages = [TRACKER_PACKAGES[name][1] for name in missing]
        raise BluepriError(
            f"--report_to {','.join(report_to)} needs the {' and '.join(packages)} "
            f"package{'s' if len(packages) > 1 else ''}: pip install {' '.join(packages)}"
        )


class Tracker:
    """No tracker: the interface the others fill in."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_images(self, name: str, images: list[Image.Image], step: int) -> None:
        pass

    def close(self) -> None:
        """Flush everything and end the run (before the artifact is published)."""


class WandbTracker(Tracker):
    def __init__(
        self, project: str, run_name: str, config: dict[str, Any], folder: Path, start_step: int
    ):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_name, config=config, dir=str(folder))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_images(self, name: str, images: list[Image.Image], step: int) -> None:
        self.run.log({name: [self.wandb.Image(image) for image in images]}, step=step)

    def close(self) -> None:
        self.run.finish()  # waits until wandb-core has written (or sent) every record


def local_mlflow_uri(folder: Path) -> str:
    return "sqlite:///" + str((folder / "mlflow.db").resolve())


class MlflowTracker(Tracker):
    """One MLflow run through `MlflowClient` (no fluent global state), logging synchronously."""

    def __init__(
        self, project: str, run_name: str, config: dict[str, Any], folder: Path, start_step: int
    ):
        from mlflow import MlflowClient
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        remote = os.environ.get("MLFLOW_TRACKING_URI")
        self.client = MlflowClient(tracking_uri=remote or local_mlflow_uri(folder))
        experiment = self.client.get_experiment_by_name(project)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = None if remote else (folder / "mlartifacts").resolve().as_uri()
            try:
                experiment_id = self.client.create_experiment(project, artifact_location=artifacts)
            except MlflowException:  # created meanwhile by another run
                experiment_id = self.client.get_experiment_by_name(project).experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in config.items()]
        for at in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[at : at + 100], synchronous=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_images(self, name: str, images: list[Image.Image], step: int) -> None:
        # One key per image (seed): MLflow's image view steps each through the run.
        for index, image in enumerate(images):
            self.client.log_image(
                self.run_id, image, key=f"{name}_{index}", step=step, synchronous=True
            )

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TensorboardTracker(Tracker):
    def __init__(
        self,
        project: str,
        run_name: str,
        config: dict[str, Any],
        folder: Path,
        start_step: int,
    ):
        from torch.utils.tensorboard import SummaryWriter

        # A run restarted from a checkpoint hides the events it is about to write again.
        self.writer = SummaryWriter(
            log_dir=str(folder / project / run_name), purge_step=start_step or None
        )
        self.writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in config.items()))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_images(self, name: str, images: list[Image.Image], step: int) -> None:
        import numpy as np

        stacked = np.stack([np.asarray(image.convert("RGB")) for image in images])
        self.writer.add_images(name, stacked, step, dataformats="NHWC")

    def close(self) -> None:
        self.writer.close()  # flushes the event file


class Trackers(Tracker):
    """Several trackers as one: each call goes to all of them."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, metrics: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def log_images(self, name: str, images: list[Image.Image], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_images(name, images, step)

    def close(self) -> None:
        errors = []
        for tracker in self.trackers:  # one failing close still lets the others flush
            try:
                tracker.close()
            except Exception as err:
                errors.append(err)
        if errors:
            raise errors[0]


TRACKERS = {"wandb": WandbTracker, "mlflow": MlflowTracker, "tensorboard": TensorboardTracker}


def open_tracker(
    report_to: Sequence[str],
    *,
    project: str,
    run_name: str,
    config: dict[str, Any],
    folder: Path,
    start_step: int = 0,
) -> Tracker:
    """The trackers `report_to` names, as one (none: a tracker that does nothing)."""
    if not report_to:
        return Tracker()
    folder.mkdir(parents=True, exist_ok=True)
    opened: list[Tracker] = []
    try:
        for name in report_to:
            opened.append(TRACKERS[name](project, run_name, config, folder, start_step))
    except BaseException:
        for tracker in opened:  # the ones already open end before the error goes up
            with contextlib.suppress(Exception):
                tracker.close()
        raise
    return opened[0] if len(opened) == 1 else Trackers(opened)


def loss_curve_png(history: list[dict[str, Any]]) -> bytes:
    """Training loss per optimiser step and held-out loss at each validation, as a PNG."""
    from bluepri.imaging import figure_png, new_figure

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    figure = new_figure(7, 4)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", lw=1)
    if val:
        axes.plot(
            *zip(*val, strict=True), label="val loss (fixed noise)", color="tab:orange", marker="o"
        )
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure_png(figure)
