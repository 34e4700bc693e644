"""Search cost: `bluepri tune` (one shared cache, ASHA) versus the same trials run the way a
loop of training scripts runs them (each preparing its own data, each to full length).

1. search    `bluepri.tune.tune` over N trials: the data prepared ONCE, trials on Ray Tune
             with Optuna's TPE and ASHA stopping the weak ones at their validations.
2. baseline  the SAME N hyperparameter sets (read from the search's table), each a
             `bluepri.train.train` run from the image folder with its own cache folder (so
             it validates, captions and encodes the set again), no early stopping, and its
             own Ray Train worker group (a fresh process importing everything, as a loop of
             training scripts pays per run).

Prints both wall times, their ratio, both best held-out losses (the same fixed-noise
validation loss on the same validation split; every cache here is the same bytes) and the
search's fixed cost per trial: a trial's wall time (Tune's `time_total_s`) less its steps
and validations (`fixed_seconds`), split into each actor's first trial and the later trials
that Tune ran on a reused actor.

    python bench/tune.py                   # ~2.5 minutes on 2 CPU cores
    python bench/tune.py --trials 4 --epochs 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SPACE = {
    "learning_rate": {"kind": "loguniform", "low": 1e-4, "high": 3e-2},
    "rank": {"kind": "int", "low": 4, "high": 32, "log": True},
    "snr_gamma": {"kind": "choice", "choices": [None, 1.0, 5.0]},
}


def shared_train_values(args: argparse.Namespace, images: Path) -> dict:
    """What every trial trains with, apart from the searched parameters."""
    return {
        "pretrained_model_name_or_path": "tiny:base",
        "train_data_dir": str(images),
        "resolution": args.resolution,
        "center_crop": True,
        "val_fraction": 0.25,
        "captioner": "tiny:blip",
        "train_batch_size": 4,
        "num_workers": 1,
        "num_train_epochs": args.epochs,
        "validation_epochs": 1,
        "num_validation_images": 0,
        "checkpointing_steps": 10_000,
        "seed": 0,
    }


def run_search(args: argparse.Namespace, images: Path, folder: Path):
    from bluepri.config import SearchConfig, build_config
    from bluepri.tune import tune

    config = build_config(
        SearchConfig,
        {
            "experiment_name": "bench",
            "storage_path": str(folder / "search"),
            "num_trials": args.trials,
            "seed": 0,
            "space": SPACE,
            "promote": False,
            "train": shared_train_values(args, images),
        },
    )
    started = time.perf_counter()
    result = tune(config, log=lambda _: None)
    return result, time.perf_counter() - started


def run_baseline(args: argparse.Namespace, images: Path, folder: Path, rows: list[dict]):
    """Each trial's parameters as its own full-length training run that prepares its data."""
    from bluepri.config import TrainConfig, build_config
    from bluepri.train import train

    losses = []
    started = time.perf_counter()
    for index, row in enumerate(rows):
        params = {k[len("param_") :]: v for k, v in row.items() if k.startswith("param_")}
        run = folder / f"baseline-{index}"
        config = build_config(
            TrainConfig,
            {
                **shared_train_values(args, images),
                **params,
                "output_dir": str(run / "adapter"),
                "cache_root": str(run / "cache"),  # its own: the set is prepared again
                "in_process": False,  # its own worker process, as a script run has
            },
        )
        losses.append(train(config, log=lambda _: None).final_val_loss)
    return losses, time.perf_counter() - started


WORK_PHASES = (
    "first_step",
    "steps",
    "validation_loss",
    "validation_images",
    "validation_report",
    "checkpoints",
)


def trial_reports(experiment: Path) -> dict[str, dict]:
    """Each trial's last Tune report (`result.json`): its pid, steps, validations, seconds."""
    import json

    last = {}
    for path in experiment.glob("*/result.json"):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            report = json.loads(lines[-1])
            last[report["trial_id"]] = report
    return last


def fixed_seconds(rows: list[dict], experiment: Path) -> list[tuple[str, bool, float]]:
    """(trial, first on its actor, fixed seconds) for every trial: its wall time (Tune's
    `time_total_s`, trial start to its last report) less its work. A finished trial's work
    is what its `metrics.json` timings book to steps, validations and checkpoints; a trial
    ASHA stopped has no timings, so its work is estimated at the finished trials' cost per
    step and per validation (an ASHA-stopped trial here does 3-12 steps)."""
    import json

    from bluepri import artifacts

    reports = trial_reports(experiment)
    per_step, per_validation = [], []
    for row in rows:
        if row["adapter"]:
            metrics = Path(row["adapter"]) / artifacts.METRICS_JSON
            timings = json.loads(metrics.read_text())["timings"]
            per_step.append((timings["first_step"] + timings["steps"]) / row["steps"])
            per_validation.append(timings["validation_loss"] / (row["validations"] + 1))
    step_s = sum(per_step) / len(per_step)
    validation_s = sum(per_validation) / len(per_validation)
    seen_pids, fixed = set(), []
    for row in sorted(rows, key=lambda r: r["started"] or 0):
        report = reports[row["trial_id"]]
        first = report["pid"] not in seen_pids
        seen_pids.add(report["pid"])
        work = report["step"] * step_s + (report["validation"] + 1) * validation_s
        fixed.append((row["trial_id"], first, report["time_total_s"] - work))
    return fixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6, help="validations per full trial")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import ray

    from bluepri.config import SynthConfig
    from bluepri.data.synth import synthesize
    from bluepri.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    with tempfile.TemporaryDirectory(prefix="bluepri-bench-tune-") as scratch:
        folder = Path(scratch)
        images = Path(
            synthesize(
                SynthConfig(out_dir=str(folder / "set"), num_images=args.images, seed=3)
            ).out_dir
        )
        search, search_s = run_search(args, images, folder)
        rows = pq.read_table(search.results_parquet).to_pylist()
        fixed = fixed_seconds(rows, Path(search.experiment_path))
        baseline_losses, baseline_s = run_baseline(args, images, folder, rows)
    ray.shutdown()

    finished = [loss for loss in baseline_losses if loss is not None]
    print(
        f"tiny SDXL, {args.resolution}px, {args.images} images, {args.trials} trials x "
        f"{args.epochs} epochs, 1 worker per trial, 2 CPUs"
    )
    print(f"{'run':<52}{'wall s':>9}{'best val loss':>15}")
    print(
        f"{'baseline: each trial prepares + runs full length':<52}{baseline_s:>9.0f}"
        f"{min(finished):>15.5f}"
    )
    print(f"{'bluepri tune: shared cache + ASHA':<52}{search_s:>9.0f}{search.best_val_loss:>15.5f}")
    print(
        f"search speed-up vs baseline: {baseline_s / search_s:.2f}x  "
        f"({search.completed} trials ran to the end, {search.stopped_early} stopped by ASHA)"
    )
    warm = [seconds for _, first, seconds in fixed if not first]
    cold = [seconds for _, first, seconds in fixed if first]
    print(
        f"search fixed cost per trial: mean {sum(s for *_, s in fixed) / len(fixed):.2f} s; "
        f"first trial on an actor {', '.join(f'{s:.2f}' for s in cold)} s; later trials on "
        f"a reused actor mean {sum(warm) / max(1, len(warm)):.2f} s, max "
        f"{max(warm, default=0):.2f} s"
    )
    print("per trial (search: state, validations, last val loss | baseline: full-length loss)")
    for row, full in zip(rows, baseline_losses, strict=True):
        params = f"lr={row['param_learning_rate']:.2e} rank={row['param_rank']} " + (
            f"snr_gamma={row['param_snr_gamma']}"
        )
        print(
            f"  {params:<44}{row['state']:>14}{row['validations']:>3}"
            f"{row['final_val_loss']:>10.5f} | {full:.5f}"
        )


if __name__ == "__main__":
    main()
