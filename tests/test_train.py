"""The training stage: the paper's command, vanilla loading, learning, crash recovery, errors.

Integration tests share one tiny cache (module scope) on the session's local Ray; the Min-SNR
test and the bad-configuration tests start no Ray at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bluepri.cli import main
from bluepri.config import PrepareConfig, SynthConfig, TrainConfig
from bluepri.data.prepare import prepare
from bluepri.data.synth import synthesize
from bluepri.train.losses import denoising_loss, min_snr_weights
from vanilla import load_in_vanilla_diffusers

RESOLUTION = 64
PAPER_PROMPT = "A set of detailed blueprints that show different views"


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train-synth")
    synthesize(SynthConfig(out_dir=str(folder), num_images=16, seed=5))
    return folder


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train-caches")


@pytest.fixture(scope="module")
def train_cache(ray_session, tiny_models, synth_set: Path, cache_root: Path):
    """The cache `bluepri train --train_data_dir` makes for the paper's flags (so the CLI
    test below finds it up to date instead of encoding the set a second time)."""
    config = PrepareConfig(
        source=str(synth_set),
        out=str(cache_root),
        resolution=RESOLUTION,
        center_crop=True,
        random_flip=True,
        base="tiny:base",
        captioner="tiny:blip",
        val_fraction=0.25,
    )
    info = prepare(config, log=lambda _: None)
    assert info.num_train >= 8 and info.num_val >= 2
    return info


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- 1 + 2: the paper's command, and its output in vanilla diffusers ---------------------------


@pytest.fixture(scope="module")
def paper_run(ray_session, tiny_models, train_cache, synth_set, cache_root, tmp_path_factory):
    """The paper's §6.1 command: tiny base, the synthetic set, 64 px, 2 epochs, 2 workers,
    CPU-friendly precision (bf16: fp16 needs a GPU), no hub push, reporting to every tracker
    (wandb offline: conftest sets WANDB_MODE before the session's Ray starts)."""
    output_dir = tmp_path_factory.mktemp("paper") / "BluepriAI"
    argv = [
        "train",
        "--pretrained_model_name_or_path=tiny:base",
        f"--train_data_dir={synth_set}",
        f"--validation_prompt={PAPER_PROMPT}",
        "--num_validation_images=8",
        "--validation_epochs=1",
        f"--output_dir={output_dir}",
        f"--resolution={RESOLUTION}",
        "--center_crop",
        "--random_flip",
        "--train_text_encoder",
        "--train_batch_size=1",
        "--num_train_epochs=2",
        "--checkpointing_steps=500",
        "--gradient_accumulation_steps=4",
        "--learning_rate=1e-04",
        "--lr_warmup_steps=0",
        "--report_to=all",
        "--dataloader_num_workers=2",
        "--allow_tf32",
        "--mixed_precision=bf16",
        # platform flags: workers, a cheap validation sampler, the shared test cache
        "--num_workers=2",
        "--validation_inference_steps=2",
        "--captioner=tiny:blip",
        "--val_fraction=0.25",
        f"--cache_root={cache_root}",
        "--seed=0",
    ]
    code = main(argv)
    return code, output_dir


def test_paper_command_runs_to_completion(paper_run, train_cache) -> None:
    code, output_dir = paper_run
    assert code == 0
    info = json.loads((output_dir / "adapter.json").read_text())
    weights = output_dir / "pytorch_lora_weights.safetensors"
    assert info["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["base"] == "tiny:base" and info["rank"] == 4 and info["alpha"] == 4
    assert info["trained_modules"] == ["unet", "text_encoder", "text_encoder_2"]
    assert info["cache"]["fingerprint"] == train_cache.fingerprint  # the data stage reused it
    assert info["training_config"]["gradient_accumulation_steps"] == 4
    plan = info["plan"]
    assert (
        info["metrics"]["global_step"] == plan["max_train_steps"] == 2 * plan["updates_per_epoch"]
    )
    keys = load_file(weights).keys()
    assert any(k.startswith("unet.") for k in keys)
    assert any(k.startswith("text_encoder.") for k in keys)
    assert any(k.startswith("text_encoder_2.") for k in keys)
    grids = sorted(p.name for p in (output_dir / "validation").glob("*.png"))
    assert grids == ["epoch-0001.png", "epoch-0002.png"]
    assert (output_dir / "loss_curve.png").stat().st_size > 1000
    assert "base_model: tiny:base" in (output_dir / "README.md").read_text()
    history = json.loads((output_dir / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history if "loss" in h] == list(
        range(1, plan["max_train_steps"] + 1)
    )


def wandb_history(logs: Path) -> tuple[dict[str, dict[int, float]], dict[int, int]]:
    """The one offline run's history, through wandb's own reader of its .wandb log
    (`wandb leet inspect --json`): {metric: {step: value}} and {step: images logged}."""
    (run,) = (logs / "wandb").glob("offline-run-*")  # one run: rank 0 only
    records = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    records = [json.loads(line) for line in records if line.strip()]
    assert [r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"] == [0]
    series: dict[str, dict[int, float]] = {}
    images: dict[int, int] = {}
    for record in records:
        if record["type"] != "history":
            continue
        item = record["history"]["item"]
        for key, value in item.items():
            if not key.startswith(("_", "validation.")):  # wandb's own keys; the images'
                series.setdefault(key, {})[item["_step"]] = value
        if "validation.filenames" in item:
            files = item["validation.filenames"]
            assert all((run / "files" / name).stat().st_size > 0 for name in files)
            images[item["_step"]] = len(files)
    return series, images


def mlflow_history(logs: Path) -> tuple[dict[str, dict[int, float]], dict[int, int]]:
    """The one run in the MLflow store under the logging folder, read with MlflowClient."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + str((logs / "mlflow.db").resolve()))
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments)  # one run: rank 0 only
    assert run.info.status == "FINISHED" and run.data.params["num_workers"] == "2"
    run_id = run.info.run_id
    series = {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)}
        for name in run.data.metrics
    }
    images: dict[int, int] = {}
    for artifact in client.list_artifacts(run_id, "images"):
        # images/<key>+step+<step>+timestamp+<ms>+<uuid>.png (and a .webp thumbnail)
        key, _, step, *_ = Path(artifact.path).name.split("+")
        if artifact.path.endswith(".png") and key.startswith("validation_"):
            assert artifact.file_size > 0
            images[int(step)] = images.get(int(step), 0) + 1
    return series, images


def tensorboard_history(logs: Path) -> tuple[dict[str, dict[int, float]], dict[int, int]]:
    """The one event file under the logging folder, through TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = logs.rglob("events.out.tfevents.*")  # one run: rank 0 only
    accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    series = {
        name: {e.step: e.value for e in accumulator.Scalars(name)}
        for name in accumulator.Tags()["scalars"]
    }
    # add_images writes one grid of RESOLUTION-pixel cells per step
    images = {
        e.step: (e.width // RESOLUTION) * (e.height // RESOLUTION)
        for e in accumulator.Images("validation")
    }
    return series, images


def test_trackers_hold_the_runs_metrics_step_for_step(paper_run) -> None:
    """The paper's 2-worker run reported to wandb (offline), MLflow and TensorBoard: each
    holds exactly one run with metrics.json's numbers at metrics.json's steps: train_loss
    and lr every optimiser step, val_loss at every validation (the base's at step 0 too),
    and the 8 validation images at each validation after training began."""
    code, output_dir = paper_run
    assert code == 0
    history = json.loads((output_dir / "metrics.json").read_text())["history"]
    steps = [h for h in history if "loss" in h]
    validations = {h["step"]: h["val_loss"] for h in history if h.get("val_loss") is not None}
    expected = {
        "train_loss": {h["step"]: h["loss"] for h in steps},
        "lr": {h["step"]: h["lr"] for h in steps},
        "val_loss": validations,
    }
    assert sorted(expected["train_loss"]) == list(range(1, len(steps) + 1))
    assert 0 in validations and len(validations) == 3  # before training, after each epoch
    image_steps = {step: 8 for step in validations if step > 0}  # no grid at step 0
    logs = output_dir / "logs"
    readers = {
        "wandb": wandb_history,
        "mlflow": mlflow_history,
        "tensorboard": tensorboard_history,
    }
    for tracker, read in readers.items():
        series, images = read(logs)
        assert sorted(series) == sorted(expected), tracker
        for name, values in expected.items():
            assert sorted(series[name]) == sorted(values), (tracker, name)
            for step, value in values.items():
                got = series[name][step]
                assert got == pytest.approx(value, rel=1e-6), (tracker, name, step, got, value)
        assert images == image_steps, tracker


def test_output_loads_in_vanilla_diffusers(paper_run, tiny_models) -> None:
    _, output_dir = paper_run
    report = load_in_vanilla_diffusers(tiny_models["base"], output_dir)
    assert report["bluepri_imported"] is False
    assert report["unet"] and report["text_encoder"] and report["text_encoder_2"]
    assert report["max_diff"] > 1e-6  # the trained adapter changes the picture


# -- 3 + 4: learning, and surviving a killed worker ---------------------------------------------


def reference_config(train_cache, output_dir: Path, **overrides) -> TrainConfig:
    values = dict(
        pretrained_model_name_or_path="tiny:base",
        cache=train_cache.uri,
        output_dir=str(output_dir),
        num_workers=2,
        train_batch_size=2,
        max_train_steps=24,
        learning_rate=5e-3,
        lr_warmup_steps=0,
        checkpointing_steps=4,
        validation_epochs=4,
        seed=7,
        max_failures=1,
    )
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def reference_run(ray_session, tiny_models, train_cache, tmp_path_factory):
    from bluepri.train import train

    config = reference_config(train_cache, tmp_path_factory.mktemp("reference") / "out")
    return train(config, log=lambda _: None)


def test_held_out_loss_goes_down(reference_run) -> None:
    result = reference_run
    history = json.loads(Path(result.metrics_history).read_text())["history"]
    val = [h for h in history if "val_loss" in h]
    # One fixed-noise measurement before training (step 0) and the later ones, same function.
    assert val[0] == {"step": 0, "epoch": 0, "val_loss": result.initial_val_loss}
    assert val[-1]["step"] == result.global_step == 24
    assert val[-1]["val_loss"] == result.final_val_loss
    assert result.best_val_loss == min(v["val_loss"] for v in val[1:])
    assert result.final_val_loss < result.initial_val_loss


def test_killed_worker_run_recovers_and_matches(
    reference_run, train_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bluepri.train import train

    marker = tmp_path / "killed"
    monkeypatch.setenv("BLUEPRI_TEST_CRASH_AT_STEP", "12")
    monkeypatch.setenv("BLUEPRI_TEST_CRASH_MARKER", str(marker))
    result = train(reference_config(train_cache, tmp_path / "out"), log=lambda _: None)

    assert marker.read_text().startswith("killed rank 1 at step 12")
    assert result.resumed_at == [12]  # restarted once, from the step-12 checkpoint
    assert result.global_step == reference_run.global_step == 24
    history = json.loads(Path(result.metrics_history).read_text())["history"]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 25))  # none twice
    reference = json.loads(Path(reference_run.metrics_history).read_text())["history"]
    assert history == reference
    weights = load_file(Path(result.adapter) / "pytorch_lora_weights.safetensors")
    expected = load_file(Path(reference_run.adapter) / "pytorch_lora_weights.safetensors")
    assert weights.keys() == expected.keys()
    assert max((weights[k] - expected[k]).abs().max().item() for k in weights) <= 1e-5


def test_resume_from_a_checkpoint_folder_matches(
    reference_run, train_cache, tmp_path: Path
) -> None:
    from bluepri.train import train

    checkpoint = Path(reference_run.run_dir) / "checkpoint-00000020"
    config = reference_config(
        train_cache, tmp_path / "out", resume_from_checkpoint=str(checkpoint), seed=None
    )
    result = train(config, log=lambda _: None)
    assert result.seed == reference_run.seed  # taken from the checkpoint
    assert result.resumed_at == [20] and result.global_step == 24
    weights = load_file(Path(result.adapter) / "pytorch_lora_weights.safetensors")
    expected = load_file(Path(reference_run.adapter) / "pytorch_lora_weights.safetensors")
    assert max((weights[k] - expected[k]).abs().max().item() for k in weights) <= 1e-5


def test_one_worker_in_this_process_matches_its_worker_group(
    ray_session, train_cache, tmp_path: Path
) -> None:
    """`in_process` changes where the loop runs, nothing else: the same adapter, the same
    history and checkpoints of the same names and files as on a Ray Train worker group (to
    float rounding, as two worker-group runs agree: see the crash-recovery test)."""
    from bluepri.train import train

    def run(name: str, in_process: bool):
        config = reference_config(
            train_cache,
            tmp_path / name,
            num_workers=1,
            max_failures=0,
            max_train_steps=8,
            in_process=in_process,
        )
        return train(config, log=lambda _: None)

    # One torch thread, as Ray gives a 1-CPU worker: the same float reductions on both sides.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = run("here", True)
    finally:
        torch.set_num_threads(threads)
    group = run("group", False)
    weights, expected = (
        load_file(Path(r.adapter) / "pytorch_lora_weights.safetensors") for r in (here, group)
    )
    assert weights.keys() == expected.keys()
    assert max((weights[k] - expected[k]).abs().max().item() for k in weights) <= 1e-5
    histories = [json.loads(Path(r.metrics_history).read_text())["history"] for r in (here, group)]
    assert [sorted(h) for h in histories[0]] == [sorted(h) for h in histories[1]]
    for mine, theirs in zip(*histories, strict=True):
        assert {k: pytest.approx(v, abs=1e-5) for k, v in mine.items()} == theirs
    assert Path(here.checkpoint).name == Path(group.checkpoint).name == "checkpoint-00000008-final"
    files = [sorted(p.name for p in Path(r.checkpoint).iterdir()) for r in (here, group)]
    assert files[0] == files[1]


# -- 5: Min-SNR ------------------------------------------------------------------------------


def test_min_snr_weights_match_the_formula() -> None:
    snr = torch.tensor([0.25, 1.0, 5.0, 20.0, 400.0])
    gamma = 5.0
    epsilon = min_snr_weights(snr, gamma, "epsilon")
    v_prediction = min_snr_weights(snr, gamma, "v_prediction")
    assert torch.allclose(epsilon, torch.tensor([1.0, 1.0, 1.0, 0.25, 5.0 / 400.0]))
    expected_v = torch.tensor([0.25 / 1.25, 1.0 / 2.0, 5.0 / 6.0, 5.0 / 21.0, 5.0 / 401.0])
    assert torch.allclose(v_prediction, expected_v)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_loss_matches_diffusers(prediction_type: str) -> None:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
    )
    generator = torch.Generator().manual_seed(0)
    timesteps = torch.tensor([0, 10, 250, 500, 999])
    pred = torch.randn(5, 4, 8, 8, generator=generator)
    target = torch.randn(5, 4, 8, 8, generator=generator)
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    weights = clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)
    expected = (((pred - target) ** 2).mean(dim=(1, 2, 3)) * weights).mean()
    loss = denoising_loss(pred, target, scheduler=scheduler, timesteps=timesteps, snr_gamma=5.0)
    assert torch.allclose(loss, expected)
    plain = denoising_loss(pred, target, scheduler=scheduler, timesteps=timesteps, snr_gamma=None)
    assert torch.allclose(plain, ((pred - target) ** 2).mean())


# -- data order -------------------------------------------------------------------------------


def test_epoch_order_is_a_sharded_permutation_that_keeps_buckets_apart() -> None:
    from bluepri.train.data import batches_per_epoch, epoch_batches

    buckets = [(64, 64)] * 9 + [(64, 96)] * 4
    order = dict(seed=3, world_size=2, batch_size=2)
    epoch0 = [epoch_batches(buckets, epoch=0, rank=r, **order) for r in range(2)]
    assert epoch0 == [epoch_batches(buckets, epoch=0, rank=r, **order) for r in range(2)]
    assert epoch0 != [epoch_batches(buckets, epoch=1, rank=r, **order) for r in range(2)]
    assert len(epoch0[0]) == len(epoch0[1]) == batches_per_epoch(buckets, 2, 2)
    seen = [i for rank_batches in epoch0 for batch in rank_batches for i in batch]
    assert set(seen) == set(range(len(buckets)))  # every row, padding repeats at most one
    assert len(seen) == 14  # 9 -> 10 and 4 -> 4 rows, padded to a multiple of 2 workers
    for rank_batches in epoch0:
        for batch in rank_batches:
            assert len({buckets[i] for i in batch}) == 1


# -- 6: bad configurations ----------------------------------------------------------------------


def empty_cache(root: Path) -> Path:
    folder = root / "empty-cache"
    folder.mkdir()
    manifest = {"fingerprint": "empty", "splits": {}, "config": {"base": "tiny:base"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resolution=100"], "multiple of 8"),
        (["--rank=0"], "rank"),
        (["--bogus_flag=1"], "unknown flag '--bogus_flag=1'"),
        (["--pretrained_model_name_or_path=tiny:refiner"], "two text encoders"),
        (["--cache={empty}"], "no training rows"),
        (["--mixed_precision=fp16"], "fp16 needs use_gpu"),
        (["--learning_rate=0"], "learning_rate"),
        (["--in_process", "--num_workers=2"], "in_process runs one worker with no retries"),
        (["--in_process", "--max_failures=1"], "in_process runs one worker with no retries"),
        (
            ["--report_to=wandb,comet"],
            "report_to: Value error, unknown tracker 'comet'; choose from wandb, mlflow, "
            "tensorboard (comma-separated), all or none",
        ),
    ],
)
def test_bad_configurations_fail_before_workers_start(
    flags: list[str],
    message: str,
    tiny_models,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = empty_cache(tmp_path)
    data = [] if any(f.startswith("--cache") for f in flags) else [f"--cache={empty}"]
    argv = [
        "train",
        "--pretrained_model_name_or_path=tiny:base",
        f"--output_dir={tmp_path / 'out'}",
        *data,
        *(f.replace("{empty}", str(empty)) for f in flags),
    ]
    code, _, err = run_cli(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("bluepri: error:") and message in lines[0], lines[0]
    assert not (tmp_path / "out" / "runs").exists()  # no Ray Train run was started


def test_missing_tracker_or_hub_fails_before_workers_start(
    tiny_models, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import importlib.util

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    base = [
        "train",
        "--pretrained_model_name_or_path=tiny:base",
        f"--cache={empty_cache(tmp_path)}",
        f"--output_dir={tmp_path / 'out'}",
    ]
    code, _, err = run_cli(capsys, [*base, "--push_to_hub", "--hub_model_id=me/bluepri"])
    assert code == 2 and err.count("\n") == 1 and "Hugging Face Hub" in err
    # The trackers are installed here (the dev extra): hide one, as on a machine without it.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "mlflow" else find_spec(name, *args),
    )
    code, _, err = run_cli(capsys, [*base, "--report_to=wandb,mlflow"])
    assert code == 2 and err.count("\n") == 1, err
    assert err.strip().endswith(
        "--report_to wandb,mlflow needs the mlflow package: pip install mlflow"
    ), err
    assert not (tmp_path / "out" / "runs").exists()  # no Ray Train run was started


@pytest.mark.parametrize(
    ("value", "trackers"),
    [
        ("none", []),
        (None, []),
        ("all", ["wandb", "mlflow", "tensorboard"]),
        ("tensorboard,wandb", ["tensorboard", "wandb"]),
        (" wandb , wandb,", ["wandb"]),
        (["mlflow"], ["mlflow"]),  # a YAML list
    ],
)
def test_report_to_takes_a_list_all_or_none(value, trackers: list[str]) -> None:
    from bluepri.train.report import require_tracker

    config = TrainConfig(cache="cache", report_to=value)
    assert config.report_to == trackers
    assert TrainConfig.model_validate(config.model_dump()).report_to == trackers  # round trip
    require_tracker(config.report_to)  # raises if one is not installed (dev extra)
    require_tracker(["wandb", "mlflow", "tensorboard"])  # every tracker, for the tests


# -- the Ray Job entry point ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_job_config_is_the_papers_run() -> None:
    from bluepri.config import DEFAULT_BASE, DEFAULT_VAE, load_yaml

    config = load_yaml(REPO / "jobs" / "configs" / "train.yaml", TrainConfig)
    assert config.pretrained_model_name_or_path == DEFAULT_BASE
    assert config.pretrained_vae_model_name_or_path == DEFAULT_VAE
    assert (config.resolution, config.train_batch_size, config.num_train_epochs) == (1024, 1, 10)
    assert (config.gradient_accumulation_steps, config.learning_rate) == (4, 1e-4)
    assert (config.checkpointing_steps, config.lr_warmup_steps) == (500, 0)
    assert config.train_text_encoder and config.center_crop and config.random_flip
    assert (config.mixed_precision, config.use_gpu) == ("fp16", True)


def test_job_entry_point_rejects_a_bad_override() -> None:
    done = subprocess.run(
        [sys.executable, "jobs/train.py", "jobs/configs/train.yaml", "resolution=100"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2
    assert len(lines) == 1 and "multiple of 8" in lines[0], done.stderr
