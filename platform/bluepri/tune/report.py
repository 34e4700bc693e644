"""Train -> Tune reporting: only validations reach Tune, so ASHA's rungs are validations."""

from __future__ import annotations

from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from bluepri.train import carries_validation


class ValidationReportCallback(TuneReportCallback):
    """Ray's TuneReportCallback, skipping the per-step reports that carry no validation loss.

    The train loop also reports loss and samples/s between validations; ASHA compares
    trials on `val_loss` at equal validation numbers, so those must not count as rungs.
    """

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics or not carries_validation(metrics[0]):
            return
        super().after_report(run_context, metrics, checkpoint)
