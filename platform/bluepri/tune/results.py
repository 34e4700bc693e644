"""The search's outcome: one table (parquet + CSV), Optuna's plots, a one-screen summary."""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bluepri import storage
from bluepri.artifacts import has_adapter
from bluepri.config import SearchConfig
from bluepri.train import VALIDATION

COMPLETED, STOPPED_EARLY, ERRORED = "completed", "stopped_early", "error"


def trial_row(result: Any, trials_root: str, max_validations: int) -> dict[str, Any]:
    """One trial: its parameters, losses, steps, state and time."""
    metrics = result.metrics or {}
    history = result.metrics_dataframe
    val = [] if history is None or "val_loss" not in history else history["val_loss"].dropna()
    trial_id = metrics.get("trial_id") or result.path.rsplit("/", 1)[-1]
    from bluepri.tune.search import trial_adapter

    adapter = trial_adapter(trials_root, trial_id)
    finished = has_adapter(adapter)
    validations = int(metrics.get(VALIDATION, 0))
    if result.error is not None:
        state = ERRORED
    elif finished and validations >= max_validations:
        state = COMPLETED
    else:
        state = STOPPED_EARLY
    return {
        "trial_id": trial_id,
        "started": started_at(history),
        "state": state,
        **{f"param_{k}": v for k, v in sorted((result.config or {}).items())},
        "final_val_loss": metrics.get("val_loss"),
        "best_val_loss": float(min(val)) if len(val) else None,
        "initial_val_loss": metrics.get("initial_val_loss"),
        "validations": validations,
        "steps": metrics.get("step"),
        "seconds": metrics.get("time_total_s"),
        "adapter": adapter if finished else None,
    }


def started_at(history) -> float | None:
    """When the trial started (unix seconds): its first report's time less that report's work."""
    if history is None or history.empty or "timestamp" not in history:
        return None
    return float(history["timestamp"].iloc[0] - history["time_this_iter_s"].iloc[0])


def write_table(rows: list[dict[str, Any]], path: str) -> tuple[str, str]:
    """results.parquet + results.csv side by side."""
    table = pa.Table.from_pylist(rows)
    parquet_uri, csv_uri = storage.join(path, "results.parquet"), storage.join(path, "results.csv")
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(parquet_uri, sink.getvalue())
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    storage.write_bytes(csv_uri, sink.getvalue())
    return parquet_uri, csv_uri


def optuna_study(rows: list[dict[str, Any]], config: SearchConfig):
    """An Optuna study rebuilt from the table (public API), for Optuna's own plots."""
    import optuna

    study = optuna.create_study(direction="minimize")
    distributions = {name: optuna_distribution(spec) for name, spec in config.space.items()}
    for row in rows:  # in start order: the history plot's x axis
        value = row["final_val_loss"]
        if value is None or not math.isfinite(value):
            continue
        params = {name: row.get(f"param_{name}") for name in config.space}
        # An ASHA-stopped trial's loss is from an earlier validation, not comparable with a
        # finished one's: it enters as PRUNED (Optuna's plots then leave it out).
        finished = row["state"] == COMPLETED
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=value if finished else None,
                intermediate_values={row["validations"]: value},
                state=optuna.trial.TrialState.COMPLETE
                if finished
                else optuna.trial.TrialState.PRUNED,
            )
        )
    return study


def optuna_distribution(spec):
    import optuna.distributions as d

    if spec.kind == "choice":
        return d.CategoricalDistribution(spec.choices)
    if spec.kind == "int":
        return d.IntDistribution(int(spec.low), int(spec.high), log=spec.log)
    return d.FloatDistribution(spec.low, spec.high, log=spec.kind == "loguniform")


def write_plots(rows: list[dict[str, Any]], config: SearchConfig, path: str) -> list[str]:
    """Optimisation history and parameter importances (when there is enough to say)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    study = optuna_study(rows, config)
    plots = [("optimization_history.png", optuna_plots.plot_optimization_history)]
    finished = [t for t in study.trials if t.state.is_finished() and t.value is not None]
    if len(finished) >= 2:
        plots.append(("param_importances.png", optuna_plots.plot_param_importances))
    written = []
    if not finished:
        return written
    for name, plot in plots:
        try:
            with warnings.catch_warnings():  # Optuna's matplotlib plots are "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except (ValueError, RuntimeError):  # e.g. importances when every value is equal
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        storage.write_bytes(storage.join(path, name), buffer.getvalue())
        written.append(storage.join(path, name))
    return written


def summarise(
    grid,
    config: SearchConfig,
    path: str,
    trials_root: str,
    cache_uri: str,
    *,
    validations: int,
    seconds: float,
):
    """The TuneResult, with the table and plots written beside the experiment.

    `validations` is a full-length trial's count: a trial with fewer was stopped by ASHA.
    """
    from bluepri.tune.search import TuneResult

    rows = sorted(
        (trial_row(result, trials_root, validations) for result in grid),
        key=lambda r: (r["started"] is None, r["started"] or 0.0, r["trial_id"]),
    )
    parquet_uri, csv_uri = write_table(rows, path)
    plots = write_plots(rows, config, path)
    finished = [r for r in rows if r["state"] == COMPLETED and r["final_val_loss"] is not None]
    best = min(finished, key=lambda r: r["final_val_loss"]) if finished else None
    return TuneResult(
        experiment_path=path,
        cache_uri=cache_uri,
        num_trials=len(rows),
        completed=sum(r["state"] == COMPLETED for r in rows),
        stopped_early=sum(r["state"] == STOPPED_EARLY for r in rows),
        errored=sum(r["state"] == ERRORED for r in rows),
        best_trial=best["trial_id"] if best else None,
        best_params={k[6:]: v for k, v in best.items() if k.startswith("param_")} if best else {},
        best_val_loss=best["final_val_loss"] if best else None,
        best_adapter=best["adapter"] if best else None,
        results_parquet=parquet_uri,
        results_csv=csv_uri,
        plots=plots,
        seconds=seconds,
    )


def summary_lines(result) -> list[str]:
    """The one-screen summary printed at the end of a search."""
    lines = [
        f"search {result.experiment_path}: {result.num_trials} trials in {result.seconds:.0f}s "
        f"({result.completed} completed, {result.stopped_early} stopped early by ASHA, "
        f"{result.errored} errored)",
    ]
    if result.best_trial:
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in result.best_params.items()
        )
        lines.append(f"best: {result.best_trial} val_loss={result.best_val_loss:.5f} ({params})")
        lines.append(f"adapter: {result.best_adapter}")
    if result.promotion:
        lines.append(
            f"promotion: {result.promotion.get('decision')} — {result.promotion.get('reason')}"
        )
    if result.evaluation:
        lines.append(f"evaluation: {result.evaluation.get('report')}")
    lines.append(f"table: {result.results_csv}")
    lines += [f"plot: {p}" for p in result.plots]
    return lines
