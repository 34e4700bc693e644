"""The tiny drawing models' pretraining recipe, run short on CPU: every stage learns, the
folders load in vanilla diffusers and draw, RECIPE.json accounts for every byte, the same
seed gives the same weights, and the `tiny:drawing-*` refs say what is missing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bluepri.config import PretrainConfig
from bluepri.errors import BluepriError
from bluepri.models.loading import drawing_folder, resolve_ref, verify_drawing_weights
from bluepri.models.pretrain import PretrainResult, pretrain_tiny
from bluepri.models.tiny import DRAWING_NAMES, DRAWING_ROOT, RECIPE_NAME, build_tiny

# A few dozen steps per stage on 64 px drawings: ~10 s of CPU, enough for losses to fall.
SHORT = {
    "threads": 1,
    "workers": 1,
    "resolution": 64,
    "pool_size": 8,
    "vae_steps": 30,
    "vae_batch_size": 4,
    "base_steps": 30,
    "base_batch_size": 4,
    "refiner_steps": 30,
    "refiner_batch_size": 4,
    "log_every": 5,
    "warmup_steps": 5,
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[PretrainResult, list[str]]:
    out = tmp_path_factory.mktemp("drawing")
    lines: list[str] = []
    result = pretrain_tiny(PretrainConfig(out=str(out), **SHORT), log=lines.append)
    return result, lines


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_stage_lowers_its_loss_and_reports_progress(pretrained) -> None:
    result, lines = pretrained
    assert set(result.stages) == {"vae", "base", "refiner"}
    for name, stage in result.stages.items():
        losses = [loss for _, loss in stage.history]
        assert [step for step, _ in stage.history] == [5, 10, 15, 20, 25, 30]
        first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
        assert last < first * 0.95, (name, losses)
        assert any(line.startswith(f"{name}: step 30/30 loss") for line in lines)
    assert sum(line.startswith("pretrain-tiny: stage") for line in lines) == 3
    assert result.scaling_factor > 0


def test_folders_load_in_vanilla_diffusers_and_draw(pretrained) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    result, _ = pretrained
    base = StableDiffusionXLPipeline.from_pretrained(result.base, dtype=torch.float32)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(result.refiner, dtype=torch.float32)
    assert base.unet.dtype == torch.float32 and refiner.unet.dtype == torch.float32
    assert base.vae.config.scaling_factor == pytest.approx(result.scaling_factor)
    with safe_open(Path(result.base) / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_slice(next(iter(f.keys()))).get_dtype() == "F16"  # exported in fp16
    generator = torch.Generator().manual_seed(0)
    prompt = "a drawing of a spur gear with twenty teeth"
    image = base(prompt, num_inference_steps=2, height=64, width=64, generator=generator).images[0]
    assert image.size == (64, 64) and np.asarray(image).std() > 0
    refined = refiner(prompt, image=image, num_inference_steps=2, strength=0.5).images[0]
    assert refined.size == (64, 64)
    assert Path(result.preview).is_file()


def test_text_encoders_are_tiny_base_s_own(pretrained, tmp_path: Path) -> None:
    result, _ = pretrained
    tiny_base = build_tiny("base", tmp_path / "base", seed=0)
    for part in ("text_encoder", "text_encoder_2"):
        shipped = Path(result.base) / part / "model.safetensors"
        assert sha256(shipped) == sha256(tiny_base / part / "model.safetensors")
    shared = Path(result.refiner) / "text_encoder_2" / "model.safetensors"
    assert sha256(shared) == sha256(tiny_base / "text_encoder_2" / "model.safetensors")


def test_recipe_records_the_run_and_every_file(pretrained) -> None:
    result, _ = pretrained
    out = Path(result.out)
    recipe = json.loads((out / RECIPE_NAME).read_text())
    assert recipe["config"] == PretrainConfig(out=str(out), **SHORT).model_dump()
    assert recipe["threads"] == 1 and recipe["seed"] == 0
    assert {"torch", "diffusers", "transformers"} <= set(recipe["versions"])
    assert set(recipe["stages"]) == {"vae", "base", "refiner"}
    files = recipe["files"]
    assert any(name.startswith("drawing-refiner/unet/") for name in files)
    for name, digest in files.items():
        assert sha256(out / name) == digest, name
    assert verify_drawing_weights(out) == []


def test_verify_names_changed_missing_and_extra_files(pretrained, tmp_path: Path) -> None:
    import shutil

    result, _ = pretrained
    copy = tmp_path / "drawing"
    shutil.copytree(result.out, copy)
    (copy / "drawing-base" / "unet" / "config.json").write_text("{}")
    (copy / "drawing-refiner" / "vae" / "config.json").unlink()
    (copy / "drawing-base" / "stray.txt").write_text("x")
    problems = verify_drawing_weights(copy)
    assert len(problems) == 3, problems
    assert any("drawing-base/unet/config.json: sha256" in p for p in problems)
    assert "drawing-refiner/vae/config.json: missing" in problems
    assert "drawing-base/stray.txt: not in RECIPE.json" in problems
    (copy / RECIPE_NAME).unlink()
    assert "pretrain-tiny" in verify_drawing_weights(copy)[0]


def test_same_seed_same_weights_through_the_cli(pretrained, tmp_path: Path) -> None:
    from bluepri.cli import main

    result, _ = pretrained
    flags = [f"{key}={value}" for key, value in SHORT.items()]
    assert main(["models", "pretrain-tiny", "--out", str(tmp_path), "--no-preview", *flags]) == 0
    first = json.loads((Path(result.out) / RECIPE_NAME).read_text())["files"]
    again = json.loads((tmp_path / RECIPE_NAME).read_text())
    assert again["files"] == first
    # The recorded command makes the same weights, however the recipe was run.
    assert again["command"].startswith(f"bluepri models pretrain-tiny --out {tmp_path} ")
    for key, value in SHORT.items():
        assert f"{key}={value}" in again["command"]
    assert not (tmp_path / "preview.png").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no scratch left


def test_drawing_refs_resolve_to_shipped_folders_or_say_how_to_make_them(
    pretrained, tmp_path: Path
) -> None:
    result, _ = pretrained
    with pytest.raises(BluepriError, match="pretrain-tiny") as missing:
        drawing_folder("drawing-base", root=tmp_path)
    assert "\n" not in str(missing.value)
    assert drawing_folder("drawing-refiner", root=Path(result.out)) == Path(result.refiner)
    for name in DRAWING_NAMES:
        if (DRAWING_ROOT / name / "model_index.json").is_file():
            assert resolve_ref(f"tiny:{name}", "base").source == str(DRAWING_ROOT / name)
        else:
            with pytest.raises(BluepriError, match=f"tiny:{name} are missing"):
                resolve_ref(f"tiny:{name}", "base")
    with pytest.raises(BluepriError, match="tiny:drawing-base, tiny:drawing-refiner"):
        resolve_ref("tiny:drawing", "base")


def test_pretrain_config_is_strict() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        PretrainConfig(out="x", resolution=100)
    with pytest.raises(ValueError):
        PretrainConfig(out="x", device="tpu")
