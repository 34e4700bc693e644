"""Typed configs (pydantic) for every job, and their YAML loading.

Each stage's entry point takes one of these models. The CLI and `jobs/` only build a
config (from flags or YAML) and call the entry point; validation lives here so that bad
input fails before any work starts, with one clear line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


def load_yaml(
    path: str | Path, model: type[ConfigT], overrides: dict[str, Any] | None = None
) -> ConfigT:
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


SourceFormat = Literal["auto", "imagefolder", "folder", "parquet", "hf"]


class PrepareConfig(StrictModel):
    """`bluepri data prepare`: a source -> a captioned, encoded, deduplicated training cache.

    Flag names follow the paper's training script where it has them (`resolution`,
    `center_crop`, `random_flip`, `image_column`, `caption_column`).
    """

    source: str
    out: str  # cache root; the cache is written under <out>/<fingerprint>
    source_format: SourceFormat = "auto"
    image_column: str = "image"
    caption_column: str = "text"
    hf_split: str = "train"
    resolution: int = Field(1024, ge=64, le=4096)
    center_crop: bool = False
    random_flip: bool = False
    buckets: bool = False  # aspect-ratio buckets instead of square crops
    augment: bool = False  # mild rotation/scale
    seed: int = 0
    max_pixels: int = Field(64_000_000, ge=1)
    min_side: int = Field(64, ge=1)
    max_aspect_ratio: float = Field(4.0, ge=1.0)
    dedup_threshold: int | None = Field(6, ge=0, le=64)  # pHash hamming; None: exact only
    captioner: str = DEFAULT_CAPTIONER
    recaption: bool = False
    caption_prefix: str = ""
    caption_suffix: str = ""
    base: str = DEFAULT_BASE  # its VAE and text encoders encode the cache
    vae: str | None = None
    encode_text: bool = True  # cache text embeddings (for frozen text encoders)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    caption_batch_size: int = Field(8, ge=1)
    encode_batch_size: int = Field(8, ge=1)
    num_caption_actors: int = Field(1, ge=1)
    num_encode_actors: int = Field(1, ge=1)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    @field_validator("resolution")
    @classmethod
    def resolution_multiple_of_8(cls, value: int) -> int:
        # SDXL's VAE downsamples by 8: other sizes cannot map to whole latents.
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value

    @field_validator("source", "out")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value
