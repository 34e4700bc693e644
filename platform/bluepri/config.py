"""Typed configs (pydantic) for every job, and their YAML loading.

Each stage's entry point takes one of these models. The CLI and `jobs/` only build a
config (from flags or YAML) and call the entry point; validation lives here so that bad
input fails before any work starts, with one clear line.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

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


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonBlank = Annotated[str, AfterValidator(not_blank)]  # a path or URI that says something


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
    # The same seed draws the same sheets in either style: white line work on blue
    # blueprint paper, or dark ink on white/cream paper (the tiny drawing model's base data).
    style: Literal["blueprint", "paper"] = "blueprint"


class PretrainConfig(StrictModel):
    """The tiny drawing models' pretraining recipe (`bluepri models pretrain-tiny`).

    The defaults are sized for one GPU (a few minutes); tests shrink every number.
    """

    out: str = Field(description="Folder for drawing-base/, drawing-refiner/ and RECIPE.json.")
    seed: int = Field(0, description="Seeds the drawings, the weights and every batch.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where to train.")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: all cores).")
    workers: int = Field(0, ge=0, description="Processes rendering the drawings (0: all cores).")
    resolution: int = Field(128, ge=64, description="Square drawings, pixels (multiple of 32).")
    pool_size: int = Field(3000, ge=2, description="Drawings rendered per style.")
    vae_steps: int = Field(3000, ge=1, description="VAE steps (both styles).")
    vae_batch_size: int = Field(64, ge=1)
    vae_lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-4, ge=0, description="KL per latent element vs pixel MSE.")
    base_steps: int = Field(6000, ge=1, description="Base UNet steps (paper style).")
    base_batch_size: int = Field(128, ge=1)
    base_lr: float = Field(4e-4, gt=0)
    refiner_steps: int = Field(2000, ge=1, description="Refiner UNet steps (low noise only).")
    refiner_batch_size: int = Field(128, ge=1)
    refiner_lr: float = Field(4e-4, gt=0)
    refiner_max_timestep: int = Field(300, ge=1, le=1000, description="Refiner's timesteps.")
    caption_dropout: float = Field(0.1, ge=0, le=1, description="Share trained captionless.")
    snr_gamma: float | None = Field(5.0, gt=0, description="Min-SNR loss weighting (None: off).")
    noise_offset: float = Field(
        0.1, ge=0, description="Per-channel noise offset: lets the UNets make a flat ground."
    )
    ema_decay: float = Field(0.999, ge=0, lt=1, description="UNet weights saved as an EMA.")
    warmup_steps: int = Field(200, ge=0, description="Linear LR warm-up, then cosine decay.")
    fp16: bool = Field(True, description="Save VAE and UNet weights in float16.")
    cuda_graphs: bool = Field(True, description="On cuda, replay each step as CUDA graphs.")
    log_every: int = Field(250, ge=1, description="Steps per loss line and history point.")
    preview: bool = Field(True, description="Write preview.png: base and base+refiner samples.")

    @field_validator("resolution")
    @classmethod
    def latent_divides(cls, value: int) -> int:
        # VAE /8, then the base UNet halves its latent twice.
        if value % 32:
            raise ValueError(f"resolution must be a multiple of 32, got {value}")
        return value


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


class Unset:
    """An override that removes a key the YAML file sets (`key=null`), so its default holds."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


def load_yaml(
    path: str | Path, model: type[ConfigT], overrides: dict[str, Any] | None = None
) -> ConfigT:
    """Read a YAML mapping, apply overrides (CLI flags win; None means "not given", `UNSET`
    removes the key), validate into `model`."""
    path = Path(path)
    if not path.is_file():
        raise BluepriError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise BluepriError(
            f"config file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    except (yaml.YAMLError, RecursionError) as err:
        raise BluepriError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise BluepriError(f"config file {path} must hold a mapping of keys to values")
    return build_config(model, apply_overrides(values, overrides or {}))


class NestedOverride(dict):
    """Overrides of some keys of a sub-config (`models.device=cuda`, `train.num_workers=4`):
    merged into it, where a plain dict value would replace it whole."""


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`values` with `overrides` applied (None: not given; UNSET: remove the key)."""
    merged = dict(values)
    for key, value in overrides.items():
        if value is UNSET:
            merged.pop(key, None)
        elif isinstance(value, NestedOverride):
            current = merged.get(key)
            merged[key] = apply_overrides(current if isinstance(current, dict) else {}, value)
        elif value is not None:
            merged[key] = value
    return merged


def combine_overrides(flags: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Flags (None: not given), then `key=value` overrides on top, as one overrides mapping
    for `load_yaml` or `apply_overrides`: a dotted override still merges into the file's
    sub-config, with the flag's keys of that sub-config included."""
    combined = apply_overrides({k: v for k, v in flags.items() if v is not None}, overrides)
    for key, value in overrides.items():
        if isinstance(value, NestedOverride):
            combined[key] = NestedOverride(combined[key])
    return combined


def parse_overrides(model: type[BaseModel], items: list[str]) -> dict[str, Any]:
    """`key=value` strings (a Ray Job's arguments) -> overrides typed by `model`'s fields.

    A value the field accepts as written stays a string for pydantic to convert
    (`mixed_precision=no` is the string "no", not YAML 1.1's false; `train_data_dir=data/no`
    a path); otherwise it is read as YAML (`lora_targets=[to_q, to_v]`). `key=null` unsets
    the key so the field's default holds. A dotted key sets one key of a sub-config
    (`models.device=cuda`; `train.num_workers=4` in a search's train mapping).
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BluepriError(f"override {item!r} is not key=value")
        head, value = parse_override(model, key, raw, item)
        previous = overrides.get(head)
        if isinstance(previous, NestedOverride) and isinstance(value, NestedOverride):
            value = NestedOverride(apply_nested(previous, value))
        overrides[head] = value
    return overrides


def apply_nested(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    merged = dict(into)
    for key, value in more.items():
        if isinstance(value, NestedOverride) and isinstance(merged.get(key), NestedOverride):
            value = NestedOverride(apply_nested(merged[key], value))
        merged[key] = value
    return merged


def parse_override(model: type[BaseModel], key: str, raw: str, item: str) -> tuple[str, Any]:
    """(top-level key, typed value) of one override, `key` possibly dotted."""
    head, dot, rest = key.partition(".")
    field = model.model_fields.get(head)
    if field is None:
        raise BluepriError(
            f"unknown key {head!r} in override {item!r}; {model.__name__} has "
            + ", ".join(sorted(model.model_fields))
        )
    if not dot:
        return head, typed_override(field.annotation, raw)
    sub = sub_config(field.annotation)
    if sub is not None:
        inner, value = parse_override(sub, rest, raw, item)
        return head, NestedOverride({inner: value})
    if mapping_field(field.annotation):
        return head, nested_mapping(rest, mapping_value(raw))
    raise BluepriError(f"{head!r} has no keys to set: override {item!r}")


def sub_config(annotation: Any) -> type[BaseModel] | None:
    """The config class a field holds (also inside `X | None`), if it holds one."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def mapping_field(annotation: Any) -> bool:
    return any(
        typing.get_origin(candidate) is dict or candidate is dict
        for candidate in (annotation, *typing.get_args(annotation))
    )


def nested_mapping(dotted: str, value: Any) -> NestedOverride:
    head, dot, rest = dotted.partition(".")
    return NestedOverride({head: nested_mapping(rest, value) if dot else value})


def mapping_value(raw: str) -> Any:
    """A value for a free-form mapping (a search's `train` keys): YAML, except that words YAML
    1.1 reads as booleans (`no`, `off`) stay words unless they are `true`/`false`."""
    if raw.strip() in ("null", "~", "None"):
        return UNSET
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        return raw
    return value


def typed_override(annotation: Any, raw: str) -> Any:
    if raw.strip() in ("null", "~", "None"):
        return UNSET
    try:
        TypeAdapter(annotation).validate_python(raw)
        return raw
    except ValidationError:
        pass
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # pydantic's message about the raw string is the clearest one


class ModelsConfig(StrictModel):
    """Which models generate: SDXL base, optional refiner and VAE override, precision, device."""

    base: str = DEFAULT_BASE
    refiner: str | None = DEFAULT_REFINER
    vae: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    # Batched requests give the same bytes as single ones (bluepri.generate.invariance);
    # off trades that guarantee for the fastest kernels.
    batch_invariant: bool = True
    # The sampler: the base model's own (SDXL's is Euler), or Euler from its config, as
    # MLPerf's SDXL benchmark fixes it.
    scheduler: Literal["model", "euler"] = "model"

    @classmethod
    def tiny(cls) -> ModelsConfig:
        """The offline tiny random-weight models: what most tests use."""
        return cls(base="tiny:base", refiner="tiny:refiner")

    @classmethod
    def drawing(cls) -> ModelsConfig:
        """The tiny models pretrained on plain drawings: what the demo uses."""
        return cls(base="tiny:drawing-base", refiner="tiny:drawing-refiner")


class DemoConfig(StrictModel):
    """`bluepri demo`: the whole platform on the embedded default (tiny models, synthetic set)."""

    out_dir: str = "demo-out"
    num_images: int = Field(8, ge=1, le=256)  # catalogue images to render
    dataset_size: int = Field(24, ge=6)
    seed: int = 0
    size: int = Field(128, ge=64, le=1024, multiple_of=8)
    steps: int = Field(10, ge=2, le=200)
    high_noise_frac: float = Field(0.8, gt=0.0, lt=1.0)
    # Tiny models pretrained on plain drawings (dark ink on paper), so the blueprint LoRA's
    # effect shows on the contact sheet; ModelsConfig.tiny() is the random-weight pair.
    models: ModelsConfig = Field(default_factory=ModelsConfig.drawing)
    captioner: str = "tiny:blip"
    train_workers: int = Field(2, ge=1)
    # Enough steps for the adapter to turn the drawing base's paper into blueprint blue
    # (measured: blueprint score 0.00 -> 0.68 on 16 prompts, held-out loss 0.41 -> 0.32).
    train_epochs: int = Field(30, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    tune_trials: int = Field(4, ge=0)  # the demo's search (1-worker trials); 0 skips it
    tune_epochs: int = Field(3, ge=1)


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
    # Model workers that encode (on GPUs, one GPU each). None: one, except on CPU with the
    # models in the driver, where a set of HELPER_MIN_IMAGES or more also gets a helper actor.
    num_encode_actors: int | None = Field(None, ge=1)
    # Logical CPUs per caption/encode actor. None: half the cluster's CPUs shared among the
    # actors, so the read/transform tasks always find a CPU (whole-CPU actors on a 2-core
    # machine would leave them none and the stream would stall).
    stage_cpus: float | None = Field(None, gt=0.0)
    # Where captioning and encoding run. "driver": in the prepare process, fed by the
    # read/transform tasks (no model process to wait for), with caption+encode helper actors
    # when more than one actor is asked for; "actors": Ray Data actor pools (on CPU one fused
    # caption+encode pool); "auto": the driver on CPU, actors on GPUs.
    model_stage: Literal["auto", "driver", "actors"] = "auto"
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


LrSchedulerName = Literal[
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
]
# Experiment trackers `--report_to` may name (with `all` and `none`).
TrackerName = Literal["wandb", "mlflow", "tensorboard"]
TRACKER_NAMES: tuple[str, ...] = typing.get_args(TrackerName)


class TrainConfig(StrictModel):
    """`bluepri train`: LoRA fine-tuning of SDXL on Ray Train.

    Field names are the flags of diffusers' `train_text_to_image_lora_sdxl.py` (the paper's
    §6.1 command), with its defaults where it has them; the platform adds `num_workers`,
    `use_gpu`, `cache`, `storage_path`, `max_failures`, `experiment_name` and a few more.
    Data comes from `cache` (a prepared cache), else from `train_data_dir` or `dataset_name`
    (the data stage runs first, with the same crop/flip/column settings).
    """

    # models
    pretrained_model_name_or_path: str = DEFAULT_BASE
    pretrained_vae_model_name_or_path: str | None = None
    # data
    cache: str | None = None
    train_data_dir: str | None = None
    dataset_name: str | None = None
    image_column: str = "image"
    caption_column: str = "text"
    cache_root: str | None = None  # where the data stage writes; default <output_dir>/cache
    captioner: str = DEFAULT_CAPTIONER
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    resolution: int | None = Field(None, ge=64, le=4096)  # None: the cache's, else 1024
    center_crop: bool = False
    random_flip: bool = False
    dataloader_num_workers: int = Field(0, ge=0)
    # LoRA
    rank: int = 4
    lora_alpha: float | None = Field(None, gt=0)  # None: alpha = rank
    lora_targets: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1
    )
    train_text_encoder: bool = False
    text_encoder_lr: float | None = Field(None, ge=0)  # None: learning_rate; 0: frozen
    text_encoder_2_lr: float | None = Field(None, ge=0)
    # optimisation
    train_batch_size: int = Field(16, ge=1)
    num_train_epochs: int = Field(100, ge=1)
    max_train_steps: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    learning_rate: float = Field(1e-4, gt=0)
    scale_lr: bool = False
    lr_scheduler: LrSchedulerName = "constant"
    lr_warmup_steps: int = Field(500, ge=0)
    snr_gamma: float | None = Field(None, gt=0)
    noise_offset: float = Field(0.0, ge=0)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # None: the scheduler's
    use_8bit_adam: bool = False
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-2, ge=0)
    adam_epsilon: float = Field(1e-08, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    allow_tf32: bool = False
    seed: int | None = Field(None, ge=0, lt=2**63)  # None: drawn once and recorded
    # checkpoints
    checkpointing_steps: int = Field(500, ge=1)
    checkpoints_total_limit: int | None = Field(None, ge=1)
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    # validation and reporting
    validation_prompt: str | None = None
    num_validation_images: int = Field(4, ge=0)
    validation_epochs: int = Field(1, ge=1)
    validation_inference_steps: int = Field(25, ge=1, le=500)
    # Trackers, rank 0 only: "wandb,tensorboard", "all" or "none" (accelerate's convention).
    report_to: list[TrackerName] = Field(default_factory=list)
    logging_dir: str = "logs"
    # output
    output_dir: str = "sd-model-finetuned-lora"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    # platform
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    storage_path: str | None = None  # Ray run storage; default <output_dir>/runs
    max_failures: int = Field(0, ge=-1)  # -1: retry forever (Ray's convention)
    experiment_name: str | None = None  # default: train-<time>
    # Where the loop runs. None (auto): a one-worker run with no retries, not on a cluster
    # (no RAY_ADDRESS), trains in this process, as the diffusers script does, without a Ray
    # Train worker group to start; every other run gets one. True / false force it.
    in_process: bool | None = None

    @property
    def fits_in_process(self) -> bool:
        """One worker and no retries: a run that can train in the calling process."""
        return self.num_workers == 1 and self.max_failures == 0

    @field_validator("resolution")
    @classmethod
    def resolution_multiple_of_8(cls, value: int | None) -> int | None:
        # SDXL's VAE downsamples by 8: other sizes cannot map to whole latents.
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value

    @field_validator("rank")
    @classmethod
    def rank_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {value}")
        return value

    @field_validator("output_dir", "pretrained_model_name_or_path")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def tracker_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)):
            return value  # pydantic's own message for a wrong type
        names = [str(name).strip() for name in value if str(name).strip()]
        choices = f"choose from {', '.join(TRACKER_NAMES)} (comma-separated), all or none"
        unknown = [n for n in names if n not in (*TRACKER_NAMES, "all", "none")]
        if unknown:
            raise ValueError(f"unknown tracker {unknown[0]!r}; {choices}")
        if len(names) > 1 and {"all", "none"} & set(names):
            raise ValueError(f"all and none stand alone; {choices}")
        if names == ["all"]:
            return list(TRACKER_NAMES)
        return list(dict.fromkeys(n for n in names if n != "none"))  # in order, once each

    @model_validator(mode="after")
    def consistent(self) -> TrainConfig:
        # A prepared cache wins over a source (so a YAML's dataset can be overridden with
        # `cache=...`); two raw sources are ambiguous.
        if not (self.cache or self.train_data_dir or self.dataset_name):
            raise ValueError("name the data: cache, train_data_dir or dataset_name")
        if not self.cache and self.train_data_dir and self.dataset_name:
            raise ValueError("name one of train_data_dir and dataset_name, not both")
        # fp16 autocast with a grad scaler is a GPU feature; CPU autocast supports bf16 only.
        if self.mixed_precision == "fp16" and not self.use_gpu:
            raise ValueError("mixed_precision fp16 needs use_gpu (CPUs run no or bf16)")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (owner/name)")
        if self.in_process and not self.fits_in_process:
            raise ValueError(
                "in_process runs one worker with no retries (num_workers 1, max_failures 0)"
            )
        return self


# Hyperparameters a search may vary: TrainConfig fields, each with the kinds that fit it.
TUNABLE_PARAMETERS = {
    "learning_rate": ("loguniform", "uniform", "choice"),
    "rank": ("int", "choice"),
    "snr_gamma": ("uniform", "loguniform", "choice"),
    "noise_offset": ("uniform", "choice"),
    "lora_alpha": ("uniform", "choice"),
    "lr_warmup_steps": ("int", "choice"),
}


class ParamSpec(StrictModel):
    """One dimension of the search space. `choice` may hold null (e.g. snr_gamma off)."""

    kind: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    choices: list[Any] | None = None
    log: bool = False  # for `int`: sample on a log scale (ranks 4..128)

    @model_validator(mode="after")
    def bounds_make_sense(self) -> ParamSpec:
        if self.kind == "choice":
            if not self.choices:
                raise ValueError("a choice needs a non-empty `choices` list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.kind} range needs `low` and `high`")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if (self.kind == "loguniform" or self.log) and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        return self


def default_search_space() -> dict[str, ParamSpec]:
    """The paper's three knobs: learning rate, LoRA rank and Min-SNR gamma (or off)."""
    return {
        "learning_rate": ParamSpec(kind="loguniform", low=1e-5, high=1e-3),
        "rank": ParamSpec(kind="int", low=4, high=128, log=True),
        "snr_gamma": ParamSpec(kind="choice", choices=[None, 1.0, 5.0]),
    }


class SearchConfig(StrictModel):
    """`bluepri tune`: a Ray Tune + Optuna (TPE) + ASHA search of training runs on ONE cache."""

    experiment_name: str = Field("blueprint-search", pattern=r"^[A-Za-z0-9][\w.-]*$")
    storage_path: str = "bluepri-tune"
    num_trials: int = Field(8, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: fitted to the cluster's CPUs
    seed: int = 0
    space: dict[str, ParamSpec] = Field(default_factory=default_search_space)
    early_stopping: bool = True  # ASHA on the validation loss; off: every trial runs full length
    grace_period: int = Field(1, ge=1)  # ASHA: validations before a trial may be stopped
    reduction_factor: float = Field(2.0, gt=1.0)
    # One-worker trials train inside their Tune trial's actor, which Tune reuses for the next
    # trial (no worker group, process group or imports per trial); false: every trial starts
    # a Ray Train worker group, as multi-worker trials always do.
    trials_in_process: bool = True
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig keys shared by trials
    prepare: dict[str, Any] = Field(default_factory=dict)  # extra PrepareConfig keys (captioner)
    registry: str | None = None  # default $BLUEPRI_HOME/registry
    adapter_name: str = "blueprints"
    promote: bool = True
    # EvalConfig keys: after promotion, evaluate the champion against the base (the `quick`
    # protocol by default) into <experiment>/eval and append it to the history (default
    # <storage_path>/eval-history.parquet). None: no evaluation.
    evaluation: dict[str, Any] | None = None

    @field_validator("evaluation")
    @classmethod
    def evaluation_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Checked now, not after hours of search; the search sets what it decides itself.
        if value is None:
            return value
        decided = sorted(set(value) & SEARCH_DECIDES_EVAL)
        if decided:
            raise ValueError(f"the search sets {', '.join(decided)} of its evaluation itself")
        EvalConfig.model_validate({**value, "out": "-", "cache": "-"})
        return value

    @field_validator("adapter_name")
    @classmethod
    def registry_id(cls, value: str) -> str:
        # Refused here, before the search, not by the registry after hours of training.
        from bluepri.registry.ids import ID_RULE, is_valid_id

        if not is_valid_id(value):
            raise ValueError(f"{value!r} is not a registry name: use {ID_RULE}")
        return value

    @field_validator("space")
    @classmethod
    def known_parameters(cls, space: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not space:
            raise ValueError("the search space is empty; name at least one parameter")
        for name, spec in space.items():
            if name not in TUNABLE_PARAMETERS:
                raise ValueError(
                    f"unknown parameter {name!r}; tunable: {', '.join(TUNABLE_PARAMETERS)}"
                )
            if spec.kind not in TUNABLE_PARAMETERS[name]:
                raise ValueError(f"{name} cannot be a {spec.kind} (use {TUNABLE_PARAMETERS[name]})")
        return space


class ServeLimits(StrictModel):
    """What one `POST /v1/generate` may ask for; anything outside is a 4xx naming the field."""

    min_side: int = Field(256, ge=64, multiple_of=8)
    max_side: int = Field(2048, ge=64, le=4096, multiple_of=8)
    max_pixels: int = Field(1536 * 1536, ge=64 * 64)
    max_steps: int = Field(100, ge=1, le=500)
    min_guidance: float = Field(0.0, ge=0.0, le=50.0)
    max_guidance: float = Field(30.0, gt=0.0, le=50.0)
    max_prompt_chars: int = Field(2000, ge=1)
    max_num_images: int = Field(4, ge=1, le=64)
    max_body_bytes: int = Field(1 << 20, ge=1024)  # a larger body is refused unread (413)

    @model_validator(mode="after")
    def ranges_make_sense(self) -> ServeLimits:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) exceeds max_side ({self.max_side})")
        if self.min_side * self.min_side > self.max_pixels:
            raise ValueError("max_pixels is below min_side squared: no size would be allowed")
        if self.min_guidance > self.max_guidance:
            raise ValueError("min_guidance exceeds max_guidance")
        return self


class AutoscalingSettings(StrictModel):
    """Ray Serve's autoscaling_config for one deployment (Ray's names and meanings)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    look_back_period_s: float = Field(30.0, gt=0)
    metrics_interval_s: float | None = Field(None, gt=0)  # None: Ray's default

    @model_validator(mode="after")
    def replica_range(self) -> AutoscalingSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        return self


class DeploymentSettings(StrictModel):
    """Replicas, resources and admission of one Serve deployment."""

    num_replicas: int = Field(1, ge=1)  # ignored when `autoscaling` is set
    autoscaling: AutoscalingSettings | None = None
    num_cpus: float = Field(0.5, ge=0)  # fractional: several replicas share a core
    num_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(64, ge=-1)  # -1: unbounded (Ray's convention)


class BatchedDeploymentSettings(DeploymentSettings):
    """A model deployment: requests are gathered into batches of compatible requests."""

    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.02, ge=0)


def default_ingress() -> DeploymentSettings:
    return DeploymentSettings(num_cpus=0.1, max_ongoing_requests=64, max_queued_requests=128)


class ServeConfig(StrictModel):
    """`bluepri serve`: the Ray Serve application (Ingress -> Base -> Refiner).

    The default adapter's champion answers requests that name no adapter; the champion is
    re-read from the registry at most `champion_refresh_s` after it changes. API keys come
    from `api_keys_file` (one per line) and/or the environment variable `api_keys_env`
    (comma-separated); with neither holding a key the API is open.
    """

    models: ModelsConfig = Field(default_factory=ModelsConfig)
    registry: str | None = None  # default $BLUEPRI_HOME/registry
    adapter_name: str | None = "blueprints"  # None: requests without `adapter` use the base
    champion_refresh_s: float = Field(30.0, gt=0)
    limits: ServeLimits = Field(default_factory=ServeLimits)
    default_size: int = Field(1024, ge=64, multiple_of=8)
    default_steps: int = Field(30, ge=1)
    default_guidance: float = Field(5.0, ge=0)
    max_adapters_per_replica: int = Field(8, ge=1)
    request_timeout_s: float = Field(120.0, gt=0)
    retry_after_s: int = Field(2, ge=0)  # Retry-After on 503 (overload)
    warmup: bool = True  # one tiny generation per replica before it takes traffic
    ingress: DeploymentSettings = Field(default_factory=default_ingress)
    base: BatchedDeploymentSettings = Field(default_factory=BatchedDeploymentSettings)
    refiner: BatchedDeploymentSettings = Field(default_factory=BatchedDeploymentSettings)
    api_keys_file: str | None = None
    api_keys_env: str | None = "BLUEPRI_API_KEYS"
    app_name: str = Field("bluepri", pattern=r"^[A-Za-z0-9][\w-]*$")
    host: str = "127.0.0.1"  # loopback unless the deployment says otherwise
    port: int = Field(8000, ge=1, le=65535)

    @field_validator("adapter_name")
    @classmethod
    def registry_id(cls, value: str | None) -> str | None:
        from bluepri.registry.ids import ID_RULE, is_valid_id

        if value is not None and not is_valid_id(value):
            raise ValueError(f"{value!r} is not a registry name: use {ID_RULE}")
        return value

    @model_validator(mode="after")
    def defaults_within_limits(self) -> ServeConfig:
        limits = self.limits
        if not limits.min_side <= self.default_size <= limits.max_side:
            raise ValueError(
                f"default_size {self.default_size} is outside limits "
                f"[{limits.min_side}, {limits.max_side}]"
            )
        if self.default_size**2 > limits.max_pixels:
            raise ValueError(f"default_size {self.default_size} squared exceeds max_pixels")
        if self.default_steps > limits.max_steps:
            raise ValueError(f"default_steps exceeds limits.max_steps ({limits.max_steps})")
        if not limits.min_guidance <= self.default_guidance <= limits.max_guidance:
            raise ValueError("default_guidance is outside the guidance limits")
        return self

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


CatalogueFormat = Literal["auto", "csv", "jsonl", "parquet"]


class RenderConfig(StrictModel):
    """`bluepri render`: a catalogue of prompts -> PNGs + manifest + gallery, on Ray Data.

    Rows name their own prompts and, optionally, id, seed, size, steps, guidance, adapter and
    refine; what a row leaves out comes from here. `adapter` is a registry reference
    (`blueprints` = its champion, `blueprints@v0003`) or `none` (the base model alone); the
    references are pinned to name@version + sha256 once, at the start, and kept in run.json,
    so a rerun of the same job renders the same versions even if a promotion happened since.
    Base and refiner run in separate actor pools of their own sizes.
    """

    catalogue: NonBlank  # CSV, JSONL or parquet; local path or pyarrow URI
    out: NonBlank  # render folder (local path or URI): images/, manifest.parquet, gallery.html
    catalogue_format: CatalogueFormat = "auto"  # auto: by the file's suffix
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    registry: str | None = None  # default $BLUEPRI_HOME/registry
    adapter: str = "blueprints"  # default for rows naming none; `none`: the base model alone
    adapter_scale: float = Field(1.0, ge=0.0, le=4.0)
    width: int = Field(1024, ge=64, le=4096, multiple_of=8)
    height: int = Field(1024, ge=64, le=4096, multiple_of=8)
    steps: int = Field(30, ge=1, le=500)
    guidance_scale: float = Field(5.0, ge=0.0, le=50.0)
    negative_prompt: str | None = None
    refine: bool = True  # rows refine by default when a refiner model is configured
    high_noise_frac: float = Field(0.8, gt=0.0, lt=1.0)
    # What a row may ask for; a row outside is recorded as failed with its reason.
    max_side: int = Field(2048, ge=64, le=4096, multiple_of=8)
    max_steps: int = Field(150, ge=1, le=500)
    max_prompt_chars: int = Field(2000, ge=1)
    # Pools: base and refiner scale independently (GPUs: one pool per kind of model).
    base_actors: int = Field(1, ge=1)
    refiner_actors: int = Field(1, ge=1)
    base_batch_size: int = Field(4, ge=1)
    refiner_batch_size: int = Field(4, ge=1)
    # Logical CPUs per model actor and per read/write task. None: model actors share half
    # of the cluster's CPUs (at most one each) and tasks take a quarter CPU each in the
    # other half, so the read and write tasks always find a CPU (whole-CPU actors on a
    # 2-core machine would leave them none and the stream would stall).
    actor_cpus: float | None = Field(None, gt=0.0)
    task_cpus: float | None = Field(None, gt=0.0)
    actor_gpus: float | None = Field(None, ge=0.0)  # None: a share of the GPUs on cuda, else 0
    max_adapters_per_actor: int = Field(4, ge=1)
    # Rows per block: the unit the manifest records as finished (a killed driver loses at
    # most the blocks in flight; a rerun renders those again, to the same bytes).
    block_rows: int = Field(16, ge=1, le=4096)
    contact_sheet_images: int = Field(1000, ge=0)  # the first N rendered rows; 0: none
    progress_interval_s: float = Field(5.0, gt=0.0)

    @field_validator("adapter")
    @classmethod
    def adapter_reference(cls, value: str) -> str:
        from bluepri.registry.ids import ID_PATTERN

        name, _, version = value.partition("@")
        ok = ID_PATTERN.fullmatch(name) and (not version or ID_PATTERN.fullmatch(version))
        if not ok or ".." in value:
            raise ValueError(
                f"{value!r} is not an adapter reference: use name, name@version or none"
            )
        return value

    @model_validator(mode="after")
    def sizes_within_limits(self) -> RenderConfig:
        if max(self.width, self.height) > self.max_side:
            raise ValueError(f"width/height exceed max_side ({self.max_side})")
        if self.steps > self.max_steps:
            raise ValueError(f"steps ({self.steps}) exceed max_steps ({self.max_steps})")
        refines = self.refine and self.models.refiner is not None
        if refines and round(self.steps * (1 - self.high_noise_frac)) < 1:
            raise ValueError("too few steps for the refiner to run one; raise steps")
        return self


EvalProtocolName = Literal["quick", "mlperf-like"]
# EvalConfig keys a search's evaluation gets from the search (see SearchConfig.evaluation).
SEARCH_DECIDES_EVAL = {"out", "cache", "adapters", "registry", "label", "search"}


class EvalProtocol(StrictModel):
    """How images are made for measuring; every result records the one it used.

    Prompt i is generated from seed `seed + i` by every model measured, so base and adapters
    start from the same initial latents ("fixed latents", as MLPerf's SDXL benchmark)."""

    name: str
    max_prompts: int = Field(ge=1)
    steps: int = Field(ge=2, le=500)
    guidance_scale: float = Field(ge=0.0, le=50.0)
    scheduler: Literal["model", "euler"]
    high_noise_frac: float = Field(0.8, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)


EVAL_PROTOCOLS = {
    # A few dozen held-out prompts: the nightly check, minutes on a GPU.
    "quick": EvalProtocol(
        name="quick", max_prompts=32, steps=20, guidance_scale=5.0, scheduler="model"
    ),
    # MLPerf's SDXL shape: Euler, 20 steps, guidance 8, fixed latents, up to 5,000 prompts.
    "mlperf-like": EvalProtocol(
        name="mlperf-like", max_prompts=5000, steps=20, guidance_scale=8.0, scheduler="euler"
    ),
}


class EvalConfig(StrictModel):
    """`bluepri eval`: the base model and adapters measured on one held-out split and prompt
    set, with fixed seeds: held-out loss, blueprint score, CLIP score, FID/KID; a report.

    `adapters` are registry references (`blueprints`, `blueprints@v0003`, `name@champion`)
    or adapter folders. The prompts are the cache's held-out captions unless `prompts` names
    a catalogue (CSV, JSONL or parquet with a `prompt` column); FID/KID compare with the
    cache's held-out source drawings unless `reference_images` names a folder of drawings.
    """

    out: NonBlank  # evaluation folder: eval.json, metrics.parquet, report.html, renders/
    cache: NonBlank  # a prepared cache folder (held-out split: loss rows, captions, drawings)
    adapters: list[str] = Field(default_factory=list)
    registry: str | None = None  # default $BLUEPRI_HOME/registry
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    protocol: EvalProtocolName = "quick"
    # Protocol settings a run may override (recorded in the results either way).
    max_prompts: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=2, le=500)
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    seed: int | None = Field(None, ge=0)
    prompts: str | None = None
    reference_images: str | None = None
    width: int | None = Field(None, ge=64, le=4096, multiple_of=8)  # default: the cache's
    height: int | None = Field(None, ge=64, le=4096, multiple_of=8)
    refiner_variants: bool = True  # also measure every model with the refiner, when configured
    clip_model: str = "openai/clip-vit-large-patch14"
    # FID/KID features: torchmetrics' Inception (torch-fidelity and its weights present),
    # the CLIP model's image embeddings, or auto (Inception when present, else CLIP).
    fid_features: Literal["auto", "inception", "clip"] = "auto"
    kid_subset_size: int = Field(50, ge=2)
    history: str | None = None  # parquet of earlier evaluations to append this one to
    search: str | None = None  # a search's experiment folder: its results in the report
    label: str | None = None  # this evaluation in the history (default: its start time)
    base_actors: int = Field(1, ge=1)
    refiner_actors: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1)

    def resolved_protocol(self) -> EvalProtocol:
        """The preset with this run's overrides applied."""
        overrides = {
            "max_prompts": self.max_prompts,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
        }
        return EVAL_PROTOCOLS[self.protocol].model_copy(
            update={k: v for k, v in overrides.items() if v is not None}
        )
