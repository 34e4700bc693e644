"""`tune`: many training runs on ONE prepared cache, searched by Optuna (TPE) and pruned by
ASHA on the held-out validation loss.

Each Tune trial runs the train stage with the trial's hyperparameters. A one-worker trial
trains inside its Tune trial actor, which Tune reuses for the next trial (`reuse_actors`), so
only the first trial on an actor pays the process start and the imports. A trial with more
workers is a small driver of a Ray Train `TorchTrainer` (the Ray 2.x Train-in-Tune way),
whose reports reach Tune through `TuneReportCallback`. Either way only reports that carry a
validation loss reach Tune, so ASHA's rungs are validations.

A trial trains with `--resume_from_checkpoint latest` under its own run folder: after the
search driver dies, `tune --resume` restores the Tuner (finished trials are kept, Optuna's
state with them) and a restarted trial continues from its last training checkpoint rather
than training again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from bluepri import storage
from bluepri.artifacts import parse_json_object
from bluepri.config import ParamSpec, SearchConfig, TrainConfig, build_config
from bluepri.errors import BluepriError
from bluepri.runtime import ensure_ray, require_state_api
from bluepri.train import VALIDATION

METRIC, MODE = "val_loss", "min"
TRIALS = "trials"
SEARCH_JSON = "search.json"  # the search's own config, so `--resume <experiment>` needs no other
TRIAL_DRIVER_CPU = 0.01


class TuneResult(BaseModel):
    """What the search found and where it wrote it."""

    experiment_path: str
    cache_uri: str
    num_trials: int
    completed: int
    stopped_early: int
    errored: int
    best_trial: str | None
    best_params: dict[str, Any]
    best_val_loss: float | None
    best_adapter: str | None
    results_parquet: str
    results_csv: str
    plots: list[str]
    seconds: float
    promotion: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None  # the champion's evaluation (report, scores)


def ray_space(space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Our validated space as Ray Tune sampling domains (OptunaSearch converts them)."""
    from ray import tune

    def domain(spec: ParamSpec):
        if spec.kind == "choice":
            return tune.choice(spec.choices)
        if spec.kind == "loguniform":
            return tune.loguniform(spec.low, spec.high)
        if spec.kind == "uniform":
            return tune.uniform(spec.low, spec.high)
        if spec.log:
            return tune.lograndint(int(spec.low), int(spec.high) + 1)
        return tune.randint(int(spec.low), int(spec.high) + 1)

    return {name: domain(spec) for name, spec in space.items()}


def base_train_config(config: SearchConfig, cache_uri: str) -> TrainConfig:
    """The trials' shared training config on the shared cache, as an absolute path: a trial
    runs in its own working directory."""
    return build_config(TrainConfig, {**config.train, "cache": storage.absolute(cache_uri)})


def shared_cache(config: SearchConfig, train: TrainConfig, log: Callable[[str], None]) -> str:
    """The ONE cache every trial reads: given, or prepared once here (a no-op when current),
    exactly as the train stage would prepare it for `train`, the trials' shared config."""
    if train.cache:
        return train.cache
    if not (train.train_data_dir or train.dataset_name):
        raise BluepriError("tune needs train.cache or train.train_data_dir / train.dataset_name")
    from bluepri.data.prepare import prepare
    from bluepri.train import prepare_config_for

    if not train.cache_root:
        cache_root = storage.join(experiment_path(config), "cache")
        train = train.model_copy(update={"cache_root": cache_root})
    return prepare(prepare_config_for(train, **config.prepare), log=log).uri


def experiment_path(config: SearchConfig) -> str:
    return storage.join(storage.absolute(config.storage_path), config.experiment_name)


def saved_search(experiment: str) -> SearchConfig:
    """The config a search was started with, read back from its experiment folder."""
    experiment = storage.absolute(experiment).rstrip("/")
    saved = storage.join(experiment, SEARCH_JSON)
    if not storage.is_file(saved):
        raise BluepriError(f"{experiment} is not a bluepri search (no {SEARCH_JSON})")
    values = parse_json_object(storage.read_bytes(saved), saved)
    parent, name = experiment.rsplit("/", 1)
    # Where the folder is now wins over where it was (it may have been moved or synced).
    return build_config(SearchConfig, {**values, "storage_path": parent, "experiment_name": name})


def check_saved_search(path: str, config: SearchConfig) -> None:
    """Resuming unpickles Tune's saved state from `path`: restore only a folder that holds
    this very search's config, never an arbitrary folder with a `tuner.pkl` in it."""
    saved = saved_search(path)
    placement = {"storage_path", "experiment_name"}
    if saved.model_dump(exclude=placement) != config.model_dump(exclude=placement):
        raise BluepriError(
            f"{path} holds another search (its {SEARCH_JSON} differs from this config); "
            f"continue it with `bluepri tune --resume {path}` or pick a new experiment_name"
        )


def trial_adapter(trials_root: str, trial_id: str) -> str:
    """Where a trial writes its adapter artifact (only a trial that runs to the end does)."""
    return storage.join(trials_root, trial_id, "adapter")


def search_exists(config: SearchConfig) -> bool:
    """Whether a search of this name was started here (then only `resume` may continue it)."""
    return storage.exists(storage.join(experiment_path(config), "tuner.pkl"))


def trial_train_values(
    base: dict[str, Any], params: dict[str, Any], trials_root: str, trial_id: str
) -> dict:
    """One trial's TrainConfig values: shared values + its hyperparameters + its folders."""
    values = {**base, **params}
    if "rank" in values:
        values["rank"] = int(values["rank"])
    values.update(
        output_dir=trial_adapter(trials_root, trial_id),
        storage_path=storage.join(trials_root, trial_id, "runs"),
        experiment_name="train",
        resume_from_checkpoint="latest",  # a restarted trial continues, never retrains
        report_to="none",
        push_to_hub=False,
    )
    return values


def make_trial_fn(base: dict[str, Any], trials_root: str, in_process: bool):
    """The Tune function trainable: run the train stage with this trial's parameters, in this
    process or on a worker group of its own."""

    def run_trial(params: dict[str, Any]) -> None:
        import ray.tune

        from bluepri.train import train
        from bluepri.tune.report import ValidationReportCallback

        trial_id = ray.tune.get_context().get_trial_id()
        values = trial_train_values(base, params, trials_root, trial_id)
        if in_process:
            train(build_config(TrainConfig, values), log=lambda _: None, in_tune_trial=True)
        else:  # a worker group of its own, whatever the run's size
            config = build_config(TrainConfig, {**values, "in_process": False})
            train(config, log=lambda _: None, callbacks=[ValidationReportCallback()])

    return run_trial


def trials_in_process(config: SearchConfig, train: TrainConfig) -> bool:
    """Whether trials train inside their (reused) Tune actors: one-worker trials, unless the
    search asks for a worker group per trial."""
    return config.trials_in_process and train.fits_in_process


def fitted_concurrency(config: SearchConfig, train: TrainConfig) -> int:
    """As many trials at once as the cluster has CPUs (or GPUs) for their workers."""
    if config.max_concurrent_trials:
        return config.max_concurrent_trials
    import ray

    resources = ray.cluster_resources()
    if train.use_gpu:
        return max(1, int(resources.get("GPU", 0) // train.num_workers))
    # Each trial: its workers' CPUs plus the driver's token share (which must fit too, or the
    # last trial's worker group waits forever for a CPU that the drivers hold); a trial that
    # trains in its own actor is its one worker.
    in_process = trials_in_process(config, train)
    per_trial = 1 if in_process else train.num_workers + TRIAL_DRIVER_CPU
    return max(1, int(resources.get("CPU", 1) // per_trial))


def build_tuner(config: SearchConfig, base: TrainConfig, trials_root: str, validations: int):
    """A fresh Tuner: OptunaSearch (seeded TPE) + ASHA on the validation loss; the search's
    metrics (trials by state, best loss) from the driver. `Tuner.restore` brings the same
    callbacks back: the RunConfig is part of the saved Tuner."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from bluepri.tune.metrics import TuneMetricsCallback

    search = OptunaSearch(
        metric=METRIC, mode=MODE, sampler=optuna.samplers.TPESampler(seed=config.seed)
    )
    return tune.Tuner(
        trainable_with_resources(config, base, trials_root),
        param_space=ray_space(config.space),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=asha(config, validations),
            num_samples=config.num_trials,
            max_concurrent_trials=fitted_concurrency(config, base),
            # A trial that trains in its actor leaves it warm for the next (the Ray Train
            # drivers of multi-worker trials gain nothing from it).
            reuse_actors=trials_in_process(config, base),
        ),
        run_config=tune.RunConfig(
            name=config.experiment_name,
            storage_path=experiment_path(config).rsplit("/", 1)[0],
            failure_config=tune.FailureConfig(max_failures=1),
            callbacks=[TuneMetricsCallback(config.experiment_name, METRIC)],
        ),
    )


def asha(config: SearchConfig, validations: int):
    """ASHA over validation numbers, its rungs all BEFORE a trial's last validation.

    A stopped trial's actor is torn down mid-run, so a stop at (or after) the last validation
    would throw away a finished run before its adapter is written. Hence the rungs end at
    `validations - 1` and a trial that gets there runs to its end (`stop_last_trials=False`).
    With one validation per trial there is nothing to compare early: no scheduler.
    """
    from ray.tune.schedulers import ASHAScheduler

    if not config.early_stopping or validations < 2:
        return None
    last_rung = validations - 1
    # The validation number, not Tune's training_iteration: a trial restarted after the
    # driver died resumes its run mid-way and must land on the same rungs.
    return ASHAScheduler(
        time_attr=VALIDATION,
        metric=METRIC,
        mode=MODE,
        max_t=last_rung,
        grace_period=min(config.grace_period, last_rung),
        reduction_factor=config.reduction_factor,
        stop_last_trials=False,
    )


def validations_per_trial(base: TrainConfig, cache_uri: str) -> int:
    """How many validations (Tune reports, ASHA's time axis) a full-length trial makes: one
    every `validation_epochs` and one at the end, over the epochs the train stage plans."""
    from bluepri.train import make_plan

    epochs = make_plan(base, cache_uri).num_epochs
    return max(1, math.ceil(epochs / base.validation_epochs))


def trainable_with_resources(config: SearchConfig, base: TrainConfig, trials_root: str):
    """A trial that trains in its actor holds its worker's CPU (or GPU); a trial driver holds
    almost no CPU, its Ray Train workers request their own.

    (Tune refuses an empty request, so a token fraction stands for "just a driver".)
    """
    from ray import tune

    in_process = trials_in_process(config, base)
    trial_fn = make_trial_fn(base.model_dump(), trials_root, in_process)
    if not in_process:
        return tune.with_resources(trial_fn, {"cpu": TRIAL_DRIVER_CPU})
    return tune.with_resources(trial_fn, {"cpu": 1, "gpu": 1 if base.use_gpu else 0})


def tune(
    config: SearchConfig, *, resume: bool = False, log: Callable[[str], None] = print
) -> TuneResult:
    """Run (or resume) the search; write the results table and plots; promote the winner."""
    from ray import tune as ray_tune

    from bluepri.tune.promote import evaluate_champion, promote_best
    from bluepri.tune.results import summarise

    started = time.perf_counter()
    path = experiment_path(config)
    if resume:
        check_saved_search(path, config)
        if not ray_tune.Tuner.can_restore(path):
            raise BluepriError(f"no search to resume at {path}")
    if not resume and search_exists(config):
        raise BluepriError(f"search {path} exists; pass --resume to continue it or a new name")
    train = build_config(TrainConfig, config.train)  # a bad one fails before any work
    ensure_ray()
    require_state_api()
    cache_uri = shared_cache(config, train, log)
    base = base_train_config(config, cache_uri)
    validations = validations_per_trial(base, cache_uri)  # also checks the cache fits the base
    trials_root = storage.join(path, TRIALS)
    if resume:
        log(f"resuming search {path}")
        tuner = ray_tune.Tuner.restore(
            path,
            trainable=trainable_with_resources(config, base, trials_root),
            resume_unfinished=True,
            resume_errored=True,
        )
    else:
        log(f"searching {config.num_trials} trials over {', '.join(config.space)} on {cache_uri}")
        storage.write_json(storage.join(path, SEARCH_JSON), config.model_dump(mode="json"))
        tuner = build_tuner(config, base, trials_root, validations)
    grid = tuner.fit()
    result = summarise(
        grid,
        config,
        path,
        trials_root,
        cache_uri,
        validations=validations,
        seconds=time.perf_counter() - started,
    )
    if result.num_trials and result.errored == result.num_trials:
        first = str(grid.errors[0]).strip().splitlines() if grid.errors else []
        raise RuntimeError(
            f"every trial of search {path} failed; the last error line of the first: "
            + (first[-1] if first else "unknown")
        )
    if config.promote and result.best_adapter:
        result.promotion = promote_best(config, result, base, log)
        if config.evaluation is not None:
            log("evaluating the champion against the base")
            result.evaluation = evaluate_champion(config, base, cache_uri, path, log)
    return result
