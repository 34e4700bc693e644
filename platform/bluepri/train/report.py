"""Where training metrics go: experiment trackers, and a loss-curve PNG in the output.

Trackers (`--report_to wandb|mlflow|tensorboard`) live on rank 0 only, as accelerate's do;
their packages are optional imports, checked on the driver before any worker starts.
wandb honours WANDB_MODE=offline; mlflow writes a local file store unless
MLFLOW_TRACKING_URI says otherwise.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

from bluepri.errors import BluepriError

TRACKER_PACKAGES = {
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
    "tensorboard": ("tensorboard", "pip install tensorboard"),
}


def require_tracker(report_to: str) -> None:
    """Fail early, with the install command, when the chosen tracker is not installed."""
    if report_to == "none":
        return
    module, install = TRACKER_PACKAGES[report_to]
    if importlib.util.find_spec(module) is None:
        raise BluepriError(f"--report_to {report_to} needs the {module} package: {install}")


class Tracker:
    """No tracker: the interface the others fill in."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_images(self, name: str, images: list[Image.Image], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, project: str, run_name: str, config: dict[str, Any], folder: Path):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_name, config=config, dir=str(folder))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_images(self, name: str, images: list[Image.Image], step: int) -> None:
        self.run.log({name: [self.wandb.Image(image) for image in images]}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    def __init__(self, project: str, run_name: str, config: dict[str, Any], folder: Path):
        import mlflow

        self.mlflow = mlflow
        if "MLFLOW_TRACKING_URI" not in os.environ:
            mlflow.set_tracking_uri((folder / "mlruns").resolve().as_uri())
        mlflow.set_experiment(project)
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:250] for k, v in config.items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def log_images(self, name: str, images: list[Image.Image], step: int) -> None:
        for index, image in enumerate(images):
            self.mlflow.log_image(image, f"{name}/step{step:08d}_{index}.png")

    def close(self) -> None:
        self.mlflow.end_run()


class TensorboardTracker(Tracker):
    def __init__(self, project: str, run_name: str, config: dict[str, Any], folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / project / run_name))
        self.writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in config.items()))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_images(self, name: str, images: list[Image.Image], step: int) -> None:
        import numpy as np

        stacked = np.stack([np.asarray(image.convert("RGB")) for image in images])
        self.writer.add_images(name, stacked, step, dataformats="NHWC")

    def close(self) -> None:
        self.writer.close()


TRACKERS = {"wandb": WandbTracker, "mlflow": MlflowTracker, "tensorboard": TensorboardTracker}


def open_tracker(
    report_to: str, *, project: str, run_name: str, config: dict[str, Any], folder: Path
) -> Tracker:
    if report_to == "none":
        return Tracker()
    folder.mkdir(parents=True, exist_ok=True)
    return TRACKERS[report_to](project, run_name, config, folder)


def loss_curve_png(history: list[dict[str, Any]]) -> bytes:
    """Training loss per optimiser step and held-out loss at each validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
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
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
