"""Typed configs (pydantic) for every job, and their YAML loading.

Each stage's entry point takes one of these models. The CLI and `jobs/` only build a
config (from flags or YAML) and call the entry point; validation lives here so that bad
input fails before any work starts, with one clear line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bluepri.errors import BluepriError

DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
DEFAULT_VAE = "madebyollin/sdxl-vae-fp16-fix"
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"

BLUEPRINT_FAMILIES = (
    "floor_plan",
    "mechanical_part",
    "vehicle",
    "aircraft",
    "furniture",
    "kitchen",
)


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(StrictModel):
    """A procedurally generated blueprint set, written as an HF imagefolder."""

    out_dir: str
    num_images: int = Field(48, ge=1)
    seed: int = 0
    families: list[str] = Field(default_factory=lambda: list(BLUEPRINT_FAMILIES), min_length=1)
    uncaptioned_fraction: float = Field(0.25, ge=0.0, le=1.0)
    min_side: int = Field(192, ge=64)
    max_side: int = Field(512, ge=64)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def first_error_line(err: ValidationError) -> str:
    """Pydantic's first complaint as `field: message`, one line."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    return f"{where}: {first['msg']}"


def build_config(model: type[ConfigT], values: dict[str, Any]) -> ConfigT:
    """Validate `values` into `model`, turning pydantic's report into a one-line BluepriError."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise BluepriError(f"invalid {model.__name__}: {first_error_line(err)}") from None


def load_yaml(path: str | Path, model: type[ConfigT], overrides: dict[str, Any] | None = None) -> ConfigT:
    """Read a YAML mapping, apply non-None overrides (CLI flags win), validate into `model`."""
    path = Path(path)
    if not path.is_file():
        raise BluepriError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise BluepriError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise BluepriError(f"config file {path} must hold a mapping of keys to values")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(model, values)


class ModelsConfig(StrictModel):
    """Which models generate: SDXL base, optional refiner and VAE override, precision, device."""

    base: str = DEFAULT_BASE
    refiner: str | None = DEFAULT_REFINER
    vae: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"

    @classmethod
    def tiny(cls) -> ModelsConfig:
        """The offline tiny models: what the demo and the tests use."""
        return cls(base="tiny:base", refiner="tiny:refiner")


class DemoConfig(StrictModel):
    """`bluepri demo`: the whole platform on the embedded default (tiny models, synthetic set)."""

    out_dir: str = "demo-out"
    num_images: int = Field(8, ge=1, le=256)  # catalogue images to render
    dataset_size: int = Field(24, ge=6)
    seed: int = 0
    size: int = Field(128, ge=64, le=1024, multiple_of=8)
    steps: int = Field(10, ge=2, le=200)
    high_noise_frac: float = Field(0.8, gt=0.0, lt=1.0)
    models: ModelsConfig = Field(default_factory=ModelsConfig.tiny)
