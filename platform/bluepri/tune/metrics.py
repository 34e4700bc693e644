"""The search's own metrics: trials by state and the best validation loss so far.

`TuneMetricsCallback` runs in the Tune driver (the process that calls `Tuner.fit`), the
only process that sees every trial, and sets telemetry's TUNE_* gauges there. The driver
is a Ray worker too, so its metrics reach its node's metrics endpoint like any other.
The best loss is part of the callback's saved state: a resumed search goes on from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ray.tune import Callback

from bluepri.telemetry import TRIAL_STATES, TuneMetrics


def trial_counts(statuses: Iterable[str]) -> dict[str, int]:
    """Trials per Tune state, every state present (a state that empties must read 0).

    A state a later Tune adds is counted under its own name: still one of a fixed few,
    and better seen than dropped.
    """
    counts = dict.fromkeys(TRIAL_STATES, 0)
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def lowest_loss(best: float | None, value: object) -> float | None:
    """The lower of `best` and a reported value; a missing or non-finite value is no loss."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return best
    return float(value) if best is None else min(best, float(value))


class TuneMetricsCallback(Callback):
    """Publishes the trials' states whenever one changes, and the best loss on a result."""

    def __init__(self, experiment: str, metric: str):
        self.experiment = experiment
        self.metric = metric  # the searched one (lower is better)
        self.best: float | None = None

    def publish(self, trials: list[Any]) -> None:
        metrics = TuneMetrics(self.experiment)
        metrics.trials(trial_counts(trial.status for trial in trials))
        if self.best is not None:
            metrics.best(self.best)

    def setup(self, **info: Any) -> None:
        if self.best is not None:  # restored: show the old best before the first result
            TuneMetrics(self.experiment).best(self.best)

    # New trials arrive PENDING from the search algorithm with no hook of their own, so the
    # end of each controller step publishes too (a handful of gauge sets: cheap).
    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.publish(trials)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        self.best = lowest_loss(self.best, result.get(self.metric))
        self.publish(trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.publish(trials)

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best}

    def set_state(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
