"""The search stage: an 8-trial ASHA search, a killed-and-resumed driver, promotion both ways,
and bad search configs refused before any trial starts.

Every search runs on the session's local Ray (2 CPUs) over ONE tiny cache built once here.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from bluepri.cli import main
from bluepri.config import DEFAULT_BASE, PrepareConfig, SearchConfig, SynthConfig, build_config
from bluepri.data.prepare import prepare
from bluepri.data.synth import synthesize
from bluepri.registry import AdapterRegistry
from bluepri.train.checkpoint import latest_checkpoint
from bluepri.tune import TuneResult, tune
from bluepri.tune.promote import promote_best
from bluepri.tune.search import base_train_config, saved_search
from polling import wait_until
from vanilla import load_in_vanilla_diffusers

RESOLUTION = 64
SPACE = {
    "learning_rate": {"kind": "loguniform", "low": 1e-4, "high": 3e-2},
    "rank": {"kind": "int", "low": 4, "high": 32, "log": True},
    "snr_gamma": {"kind": "choice", "choices": [None, 1.0, 5.0]},
}


@pytest.fixture(scope="module")
def tune_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tune-synth")
    synthesize(SynthConfig(out_dir=str(folder), num_images=12, seed=11))
    return folder


@pytest.fixture(scope="module")
def tune_cache(ray_session, tiny_models, tune_set: Path, tmp_path_factory):
    """The ONE prepared cache every search below shares."""
    config = PrepareConfig(
        source=str(tune_set),
        out=str(tmp_path_factory.mktemp("tune-cache")),
        resolution=RESOLUTION,
        center_crop=True,
        base="tiny:base",
        captioner="tiny:blip",
        val_fraction=0.25,
    )
    return prepare(config, log=lambda _: None)


def search_values(root: Path, cache_uri: str, **overrides) -> dict:
    """A small search: 1-worker trials of a few 3-step epochs at 64 px."""
    train = {
        "pretrained_model_name_or_path": "tiny:base",
        "cache": cache_uri,
        "resolution": RESOLUTION,
        "train_batch_size": 4,
        "num_workers": 1,
        "num_train_epochs": overrides.pop("epochs", 6),
        "validation_epochs": 1,
        "num_validation_images": 0,
        "checkpointing_steps": 3,
        "seed": 0,
    }
    return {
        "experiment_name": "search",
        "storage_path": str(root / "experiments"),
        "num_trials": 8,
        "seed": 0,
        "space": SPACE,
        "registry": str(root / "registry"),
        "train": train,
        **overrides,
    }


def live_placement_groups(ray) -> list[dict]:
    from ray.util import placement_group_table

    return [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 1: an 8-trial search with ASHA, its table and plots, its winner in vanilla diffusers -----


@pytest.fixture(scope="module")
def search(ray_session, tune_cache, tmp_path_factory) -> tuple[TuneResult, SearchConfig, list]:
    root = tmp_path_factory.mktemp("tune-search")
    config = build_config(SearchConfig, search_values(root, tune_cache.uri))
    lines: list[str] = []
    return tune(config, log=lines.append), config, lines


def test_eight_trials_share_one_cache_and_asha_stops_some(search, tune_cache) -> None:
    result, config, lines = search
    rows = pq.read_table(result.results_parquet).to_pylist()
    assert result.num_trials == len(rows) == 8
    assert len({r["trial_id"] for r in rows}) == 8
    assert result.errored == 0
    stopped = [r for r in rows if r["state"] == "stopped_early"]
    completed = [r for r in rows if r["state"] == "completed"]
    assert stopped and completed and len(stopped) + len(completed) == 8
    # ASHA stopped those before their 6th validation; completed ones ran all 18 steps.
    assert all(r["validations"] < 6 and r["adapter"] is None for r in stopped)
    assert all(r["validations"] == 6 and r["steps"] == 18 for r in completed)
    assert result.stopped_early == len(stopped) and result.completed == len(completed)

    # Every trial read the one cache; nothing re-prepared it.
    for row in completed:
        info = json.loads((Path(row["adapter"]) / "adapter.json").read_text())
        assert info["cache"]["fingerprint"] == tune_cache.fingerprint
    assert not any("prepar" in line for line in lines)
    # Each trial's parameters are inside the configured space.
    for row in rows:
        assert 1e-4 <= row["param_learning_rate"] <= 3e-2 and 4 <= row["param_rank"] <= 32
        assert row["param_snr_gamma"] in (None, 1.0, 5.0)

    best = min(completed, key=lambda r: r["final_val_loss"])
    assert result.best_trial == best["trial_id"] and result.best_adapter == best["adapter"]
    assert result.best_val_loss == pytest.approx(best["final_val_loss"])

    # The CSV says the same, and both Optuna plots are real PNGs.
    csv = Path(result.results_csv).read_text().splitlines()
    assert len(csv) == 9 and csv[0].startswith('"trial_id","started","state"')
    assert sorted(Path(p).name for p in result.plots) == [
        "optimization_history.png",
        "param_importances.png",
    ]
    for plot in result.plots:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_search_gives_back_every_trials_workers(search, ray_session) -> None:
    """ASHA-stopped trials die mid-run; Ray Train's cleaner must free their placement groups
    (else the next trial waits forever)."""
    wait_until(lambda: not live_placement_groups(ray_session), 60, "placement groups removed")


def test_winner_loads_in_vanilla_diffusers(search, tiny_models) -> None:
    result, _, _ = search
    report = load_in_vanilla_diffusers(tiny_models["base"], result.best_adapter)
    assert report["bluepri_imported"] is False
    assert report["unet"]
    assert report["max_diff"] > 1e-6


def test_search_promotes_its_winner_as_first_champion(search) -> None:
    result, config, _ = search
    registry = AdapterRegistry(config.registry)
    promotion = result.promotion
    assert promotion["decision"] == "promote" and promotion["champion_before"] is None
    assert registry.champion("blueprints") == promotion["candidate"] == "v0001"
    stored = registry.get("blueprints", "v0001") / "pytorch_lora_weights.safetensors"
    assert sha256(stored) == sha256(Path(result.best_adapter) / stored.name)


# -- 3: promotion both ways, on re-measured losses ---------------------------------------------


def test_promotion_both_ways_is_decided_on_remeasured_losses(search, tmp_path: Path) -> None:
    """Two finished trials' adapters, A and B, each offered against the other as champion in
    two fresh registries: exactly one offer wins, the worse never replaces the better, and
    both decisions are recorded with both numbers."""
    result, config, _ = search
    rows = pq.read_table(result.results_parquet).to_pylist()
    a, b = [r for r in rows if r["state"] == "completed"][:2]
    base = base_train_config(config, result.cache_uri)
    outcomes = {}
    for first, second in ((a, b), (b, a)):
        root = tmp_path / f"registry-{first['trial_id']}"
        offer = config.model_copy(update={"registry": str(root)})
        for row in (first, second):
            candidate = result.model_copy(
                update={"best_adapter": row["adapter"], "best_trial": row["trial_id"]}
            )
            decision = promote_best(offer, candidate, base, log=lambda _: None)
        outcomes[second["trial_id"]] = decision
        history = AdapterRegistry(root).history("blueprints")
        decisions = [h for h in history if h["action"] in ("promote", "reject")]
        assert [d["action"] for d in decisions][0] == "promote"  # the first offer: no champion
        last = decisions[-1]
        assert last["metrics"]["candidate"] == pytest.approx(decision["candidate_val_loss"])
        assert last["metrics"]["champion"] == pytest.approx(decision["champion_val_loss"])

    loss_a = outcomes[b["trial_id"]]["champion_val_loss"]  # A measured as champion
    loss_b = outcomes[a["trial_id"]]["champion_val_loss"]
    assert loss_a != loss_b
    better, worse = (a, b) if loss_a < loss_b else (b, a)
    assert outcomes[better["trial_id"]]["decision"] == "promote"  # better replaces worse
    assert outcomes[better["trial_id"]]["champion_after"] == "v0002"
    assert outcomes[worse["trial_id"]]["decision"] == "reject"  # worse does not
    assert outcomes[worse["trial_id"]]["champion_after"] == "v0001"
    # Re-measured now, and the same number both times for the same adapter.
    assert outcomes[better["trial_id"]]["candidate_val_loss"] == pytest.approx(min(loss_a, loss_b))


# -- 2: kill the driver mid-search, resume, nothing trained twice ------------------------------


def trial_dirs(experiment: Path) -> dict[str, Path]:
    return (
        {p.name: p for p in (experiment / "trials").iterdir()}
        if (experiment / "trials").is_dir()
        else {}
    )


def finished_and_interrupted(experiment: Path):
    """(finished trial ids, a trial with a checkpoint that Tune's saved state knows), or None."""
    trials = trial_dirs(experiment)
    finished = {t for t, d in trials.items() if (d / "adapter" / "adapter.json").is_file()}
    states = " ".join(p.read_text() for p in experiment.glob("experiment_state-*.json"))
    running = [
        t
        for t, d in trials.items()
        if t not in finished and t in states and latest_checkpoint(str(d / "runs" / "train"))
    ]
    return (finished, running[0]) if finished and running else None


def test_killed_driver_resumes_and_trains_nothing_twice(
    ray_session, tune_cache, tmp_path: Path
) -> None:
    # Trials long enough to be caught mid-run: 12 epochs of 3 steps (9 training rows, batch 4).
    epochs, steps = 12, 36
    values = search_values(
        tmp_path, tune_cache.uri, num_trials=3, early_stopping=False, epochs=epochs, promote=False
    )
    config_file = tmp_path / "search.yaml"
    config_file.write_text(yaml.safe_dump(values))
    experiment = tmp_path / "experiments" / "search"
    # Tune saves its experiment state every 10 s or more by default; a trial that trains in its
    # own actor is over sooner, so the state would never show one mid-run.
    env = {**ray_env(ray_session), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-c", "import sys; from bluepri.cli import main; sys.exit(main())"]
        + ["tune", "--config", str(config_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        finished, interrupted = wait_until(
            lambda: finished_and_interrupted(experiment), 300, "a finished + a checkpointed trial"
        )
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    before = {
        t: sha256(experiment / "trials" / t / "adapter" / "pytorch_lora_weights.safetensors")
        for t in finished
    }
    params_before = {
        t: json.loads((experiment / "trials" / t / "adapter" / "adapter.json").read_text())
        for t in finished
    }

    result = tune(saved_search(str(experiment)), resume=True, log=lambda _: None)

    rows = pq.read_table(result.results_parquet).to_pylist()
    assert result.num_trials == 3 and result.completed == 3 and result.errored == 0
    ids = {r["trial_id"] for r in rows}
    assert finished <= ids and interrupted in ids
    for trial in finished:  # finished before the kill: untouched, not trained again
        adapter = experiment / "trials" / trial / "adapter"
        assert sha256(adapter / "pytorch_lora_weights.safetensors") == before[trial]
        assert json.loads((adapter / "adapter.json").read_text()) == params_before[trial]
    for row in rows:  # every trial: exactly its steps, each step once
        adapter = Path(row["adapter"])
        info = json.loads((adapter / "adapter.json").read_text())
        history = json.loads((adapter / "metrics.json").read_text())["history"]
        trained = [h["step"] for h in history if "loss" in h]
        assert info["metrics"]["global_step"] == steps and trained == list(range(1, steps + 1))
        if row["trial_id"] == interrupted:  # continued from its checkpoint, not from zero
            assert info["metrics"]["resumed_at"] and info["metrics"]["resumed_at"][0] > 0
    # Optuna's state came back: the restored trials kept their parameters.
    for trial in finished:
        row = next(r for r in rows if r["trial_id"] == trial)
        assert row["param_learning_rate"] == pytest.approx(
            params_before[trial]["training_config"]["learning_rate"]
        )


# -- the nightly job: prepare (a no-op here) -> tune -> promote, a summary a scheduler reads ----


def ray_env(ray_session) -> dict[str, str]:
    """A child process's environment that joins the session's Ray."""
    return {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "TRANSFORMERS_VERBOSITY": "error",
    }


def test_nightly_job_reuses_the_cache_and_reports_its_decision(
    ray_session, tune_set: Path, tune_cache, tmp_path: Path
) -> None:
    values = search_values(tmp_path, tune_cache.uri, num_trials=1, early_stopping=False, epochs=2)
    train = values["train"]
    del train["cache"]  # from the image folder, as at night: the data stage decides
    train.update(
        train_data_dir=str(tune_set),
        cache_root=str(Path(tune_cache.uri).parent),
        center_crop=True,
        captioner="tiny:blip",
        val_fraction=0.25,
    )
    config_file = tmp_path / "nightly.yaml"
    config_file.write_text(yaml.safe_dump(values))
    manifest = Path(tune_cache.manifest_uri)
    written = manifest.stat().st_mtime_ns
    done = subprocess.run(
        [sys.executable, "jobs/nightly_tune.py", str(config_file), "--experiment_name", "night"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env=ray_env(ray_session),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "ok" and summary["completed"] == 1
    assert summary["cache_uri"] == tune_cache.uri and "is up to date" in done.stdout
    assert manifest.stat().st_mtime_ns == written  # the data did not change: nothing rebuilt
    assert summary["promotion"]["decision"] == "promote"  # an empty registry: first champion
    assert AdapterRegistry(tmp_path / "registry").champion("blueprints") == "v0001"


# -- 5: bad search configs: one line, nothing started ----------------------------------------

BAD_SEARCHES = [
    ({"space": {}}, "search space is empty"),
    ({"space": {"learning_rate": {"kind": "loguniform", "low": 1e-2, "high": 1e-4}}}, "low"),
    ({"space": {"momentum": {"kind": "uniform", "low": 0.1, "high": 0.9}}}, "unknown parameter"),
    ({"num_trials": -2}, "num_trials"),
    ({"space": {"rank": {"kind": "loguniform", "low": 4, "high": 64}}}, "rank cannot be"),
    ({"train": {"learning_rate": -1}}, "learning_rate"),
]


@pytest.mark.parametrize(("change", "message"), BAD_SEARCHES)
def test_bad_search_configs_fail_before_any_trial(
    change, message, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = search_values(tmp_path, str(tmp_path / "no-cache"))
    values.update(change)
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(values))
    code = main(["tune", "--config", str(config_file)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("bluepri: error:") and len(err.splitlines()) == 1
    assert message in err
    assert not (tmp_path / "experiments").exists()  # nothing started


def test_resume_of_a_folder_that_is_no_search_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(["tune", "--resume", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is not a bluepri search" in err


def test_nightly_job_exit_code_for_a_bad_config(tmp_path: Path) -> None:
    values = search_values(tmp_path, str(tmp_path / "no-cache"), num_trials=0)
    config_file = tmp_path / "nightly.yaml"
    config_file.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [sys.executable, "jobs/nightly_tune.py", str(config_file)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 2
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "bad_config" and "num_trials" in summary["error"]


def test_nightly_config_searches_the_papers_knobs_on_real_sdxl() -> None:
    from bluepri.config import load_yaml

    repo = Path(__file__).resolve().parents[1]
    config = load_yaml(repo / "jobs" / "configs" / "nightly_tune.yaml", SearchConfig)
    assert config.space["learning_rate"].kind == "loguniform"
    assert (config.space["rank"].low, config.space["rank"].high) == (4, 128)
    assert None in config.space["snr_gamma"].choices  # Min-SNR off is a candidate
    assert config.train["pretrained_model_name_or_path"] == DEFAULT_BASE
    assert config.early_stopping and config.promote


def test_concurrency_is_fitted_to_the_clusters_cpus(ray_session, tmp_path: Path) -> None:
    """2 CPUs: two 1-worker trials at once when they train in their own actors; one at a
    time when each starts a worker group (its driver's 0.01 CPU must fit beside it)."""
    from bluepri.config import TrainConfig
    from bluepri.tune.search import fitted_concurrency

    config = build_config(SearchConfig, search_values(tmp_path, str(tmp_path)))
    one_worker = TrainConfig(pretrained_model_name_or_path="tiny:base", cache=".", num_workers=1)
    assert ray_session.cluster_resources()["CPU"] == 2
    assert fitted_concurrency(config, one_worker) == 2
    groups = config.model_copy(update={"trials_in_process": False})
    assert fitted_concurrency(groups, one_worker) == 1
    two_workers = one_worker.model_copy(update={"num_workers": 2})
    assert fitted_concurrency(config, two_workers) == 1  # never 0: a trial must be able to run
    pinned = config.model_copy(update={"max_concurrent_trials": 3})
    assert fitted_concurrency(pinned, one_worker) == 3
