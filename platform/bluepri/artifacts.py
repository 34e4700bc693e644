"""The contracts between stages: file names, typed metadata and their readers.

The artifacts that cross stage boundaries, and this module is the only place that spells them:

    <cache>/manifest.json + shards/*.parquet        written by prepare; read by train, tune,
                                                    eval (`CacheManifest`, `read_split_rows`)
    <adapter>/pytorch_lora_weights.safetensors      written by train; read by registry,
              adapter.json, README.md, ...          generate, serve, render, eval (`AdapterInfo`)
    <render>/manifest.parquet + images/...          written by render; read by whoever uses the
                                                    images (`read_render_manifest`)

Readers validate what they read and fail with ONE line (`BluepriError`): a manifest or an
adapter.json is input that a crash, a person or another tool may have broken. The module
imports neither torch nor Ray at import time, so the registry and the CLI stay light; the
cache reader imports `ray.data` only when called, because Ray's tensor extension types must
be registered before pyarrow can read the tensor columns that Ray Data wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bluepri import storage
from bluepri.errors import BluepriError, first_line

# -- file names ---------------------------------------------------------------------------------

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
SHARDS = "shards"

ADAPTER_FORMAT = 1
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_JSON = "adapter.json"
MODEL_CARD = "README.md"
METRICS_JSON = "metrics.json"
LOSS_CURVE = "loss_curve.png"
VALIDATION_DIR = "validation"

# Metadata files are small and shallow; a bigger or deeper one is not ours (deep nesting
# would also break pydantic's serialiser later, in some other reader).
MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_METADATA_DEPTH = 32
TENSOR_COLUMNS = ("latents", "latents_std", "prompt_embeds", "pooled_prompt_embeds", "time_ids")
SHA256_PATTERN = r"^[0-9a-f]{64}$"

JsonScalar = float | int | bool | str | None


def one_line_error(err: ValidationError) -> str:
    """Pydantic's first complaint as `field: message`, one line."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    return f"{where}: {first['msg']}".splitlines()[0]


def parse_json_object(data: bytes, where: str) -> dict[str, Any]:
    """A JSON object from untrusted bytes, or one line saying why not (never a traceback:
    oversized, non-UTF-8, malformed and absurdly nested input included)."""
    if len(data) > MAX_METADATA_BYTES:
        raise BluepriError(f"{where} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BluepriError(f"{where} is not valid JSON ({err})".splitlines()[0]) from None
    except RecursionError:
        raise BluepriError(f"{where} is nested too deeply to be ours") from None
    if not isinstance(value, dict):
        raise BluepriError(f"{where} must hold a JSON object")
    if nesting_depth(value) > MAX_METADATA_DEPTH:
        raise BluepriError(f"{where} is nested too deeply to be ours")
    return value


def nesting_depth(value: Any) -> int:
    """How deep lists and objects nest (iteratively: no recursion limit to trip)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def validated(model: type[BaseModel], value: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as err:
        raise BluepriError(f"{where} is invalid: {one_line_error(err)}") from None
    except RecursionError:
        raise BluepriError(f"{where} is nested too deeply to be ours") from None


# -- the adapter artifact ------------------------------------------------------------------------


class WeightsRef(BaseModel):
    """Which file holds the weights and the sha256 every reader checks them against."""

    model_config = ConfigDict(extra="forbid")

    # The contract's one name: vanilla `load_lora_weights(folder)` looks for exactly this file.
    file: Literal["pytorch_lora_weights.safetensors"] = WEIGHTS_NAME
    sha256: str = Field(pattern=SHA256_PATTERN)


class CacheRef(BaseModel):
    """The training cache an adapter was trained on (its lineage)."""

    uri: str
    fingerprint: str


class AdapterInfo(BaseModel):
    """`adapter.json`: what an adapter is, what it was trained on, how well it did.

    Unknown keys are kept (a newer writer may add some); known keys must have their types,
    so a registry never stores an entry that breaks `list` or `export` later.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    format: int = Field(ADAPTER_FORMAT, ge=1, le=ADAPTER_FORMAT)
    kind: Literal["sdxl-lora"] = "sdxl-lora"
    base: str = Field(min_length=1)
    vae: str | None = None
    rank: int = Field(ge=1, le=4096)
    alpha: float = Field(gt=0)
    targets: dict[str, list[str]] = Field(default_factory=dict)
    trained_modules: list[str] = Field(default_factory=lambda: ["unet"])
    prediction_type: str | None = None
    cache: CacheRef | None = None
    training_config: dict[str, Any] = Field(default_factory=dict)
    plan: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, JsonScalar | list[JsonScalar]] = Field(default_factory=dict)
    weights: WeightsRef
    created: str = ""
    bluepri_version: str | None = None

    def metric(self, name: str) -> float | None:
        """A numeric metric, or None when absent or not a number."""
        value = self.metrics.get(name)
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if is_number else None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def parse_adapter_info(data: bytes, where: str = ADAPTER_JSON) -> AdapterInfo:
    """Validate adapter.json bytes into an `AdapterInfo`, or one line saying what is wrong."""
    return validated(AdapterInfo, parse_json_object(data, where), where)


def read_adapter_info(folder: str) -> AdapterInfo:
    """The `AdapterInfo` of an adapter folder (local path or URI)."""
    uri = storage.join(folder, ADAPTER_JSON)
    if not storage.is_file(uri):
        raise BluepriError(f"{folder!r} is not an adapter folder (no {ADAPTER_JSON})")
    return parse_adapter_info(storage.read_bytes(uri), uri)


def has_adapter(folder: str) -> bool:
    """Whether a folder holds a finished adapter artifact (adapter.json is written last)."""
    return storage.is_file(storage.join(folder, ADAPTER_JSON))


# -- the training cache ---------------------------------------------------------------------------


class SourceSummary(BaseModel):
    uri: str
    kind: str
    entries: int = Field(ge=0)


class DuplicateRecord(BaseModel):
    key: str
    reason: str
    of: str
    distance: int | None = None


class CaptionSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    count: int = Field(ge=0)
    length_min: int = 0
    length_mean: float = 0.0
    length_max: int = 0
    sources: dict[str, int] = Field(default_factory=dict)


class CacheManifest(BaseModel):
    """`manifest.json`: written last by prepare, it marks a cache complete and says what is in
    it, what was left out and why."""

    model_config = ConfigDict(extra="allow")

    format: Literal[1] = CACHE_FORMAT
    fingerprint: str = Field(min_length=1)
    created: str = ""
    source: SourceSummary | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, str | None] = Field(default_factory=dict)
    rows: int = Field(0, ge=0)
    splits: dict[str, int] = Field(default_factory=dict)
    skipped: dict[str, int] = Field(default_factory=dict)
    skipped_files: dict[str, list[str]] = Field(default_factory=dict)
    duplicates: list[DuplicateRecord] = Field(default_factory=list)
    captions: CaptionSummary | None = None
    nan_recomputed: int = 0
    timings: dict[str, float] = Field(default_factory=dict)
    shards: list[str] = Field(default_factory=list)

    @property
    def num_train(self) -> int:
        return self.splits.get("train", 0)

    @property
    def num_val(self) -> int:
        return self.splits.get("val", 0)


def manifest_uri(cache_uri: str) -> str:
    return storage.join(cache_uri, MANIFEST)


def shards_uri(cache_uri: str) -> str:
    return storage.join(cache_uri, SHARDS)


def read_manifest(cache_uri: str) -> CacheManifest:
    """The cache's manifest; a folder without a readable one is not a (complete) cache."""
    uri = manifest_uri(cache_uri)
    if not storage.is_file(uri):
        raise BluepriError(f"{cache_uri!r} is not a prepared cache (no {MANIFEST})")
    return validated(CacheManifest, parse_json_object(storage.read_bytes(uri), uri), uri)


def complete_manifest(cache_uri: str) -> CacheManifest | None:
    """The manifest if the cache is complete; None when missing or unreadable (rebuild it)."""
    try:
        return read_manifest(cache_uri)
    except BluepriError:
        return None


def write_manifest(cache_uri: str, manifest: CacheManifest) -> None:
    """Atomically: a crash mid-write leaves no half manifest that would block the cache."""
    storage.write_bytes(manifest_uri(cache_uri), manifest.model_dump_json(indent=2).encode())


# -- the cache reader ------------------------------------------------------------------------------

BucketKey = tuple[int, int]  # target (height, width) in pixels


def shard_dataset(cache_uri: str):
    """The cache's shards as a pyarrow dataset (Ray's tensor columns come back as such)."""
    import pyarrow.dataset as pads
    import ray.data  # noqa: F401  (registers Ray's Arrow tensor extension types)

    fs, path = storage.resolve(shards_uri(cache_uri))
    return pads.dataset(path, filesystem=fs, format="parquet")


def row_arrays(column) -> list[Any]:
    """One numpy array per row of a tensor column (fixed-shape or ragged)."""
    import numpy as np

    rows: list[Any] = []
    for chunk in column.chunks:
        rows.extend(np.asarray(row) for row in chunk.to_numpy())
    return rows


def bucket_key(time_ids: Any) -> BucketKey:
    """The target size recorded in SDXL's time ids: rows of one size can share a batch."""
    return int(time_ids[4]), int(time_ids[5])


@dataclass
class CacheIndex:
    """Split and size bucket of every row, sorted by sample id: what planning needs."""

    sample_ids: list[str]
    splits: list[str]
    buckets: list[BucketKey]
    columns: list[str]

    def split_buckets(self, split: str) -> list[BucketKey]:
        return [b for b, s in zip(self.buckets, self.splits, strict=True) if s == split]


def read_index(cache_uri: str) -> CacheIndex:
    """The small columns only: cheap enough for the driver to plan from."""
    dataset = shard_dataset(cache_uri)
    table = dataset.to_table(columns=["sample_id", "split", "time_ids"])
    ids = table.column("sample_id").to_pylist()
    splits = table.column("split").to_pylist()
    buckets = [bucket_key(t) for t in row_arrays(table.column("time_ids"))]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return CacheIndex(
        sample_ids=[ids[i] for i in order],
        splits=[splits[i] for i in order],
        buckets=[buckets[i] for i in order],
        columns=list(dataset.schema.names),
    )


@dataclass
class CacheRows:
    """The rows of one split, sorted by sample id: ids, captions and numpy arrays by column."""

    sample_ids: list[str]
    captions: list[str]
    arrays: dict[str, list[Any]]


def read_split_rows(cache_uri: str, split: str) -> CacheRows:
    """All rows of `split` ('train' or 'val'), sorted by sample id."""
    import pyarrow.compute as pc

    dataset = shard_dataset(cache_uri)
    names = dataset.schema.names
    wanted = ["sample_id", "split", "caption", *(c for c in TENSOR_COLUMNS if c in names)]
    table = dataset.to_table(columns=wanted)
    table = table.filter(pc.equal(table.column("split"), split))
    ids = table.column("sample_id").to_pylist()
    order = sorted(range(len(ids)), key=ids.__getitem__)
    captions = table.column("caption").to_pylist()
    arrays = {}
    for name in wanted[3:]:
        rows = row_arrays(table.column(name))
        arrays[name] = [rows[i] for i in order]
    return CacheRows([ids[i] for i in order], [captions[i] for i in order], arrays)


# -- the render output ------------------------------------------------------------------------
#
#   <out>/images/<2 hex of sha256(id)>/<id>.png    one PNG per rendered row (metadata in text
#                                                  chunks), written under a .tmp- name, renamed
#   <out>/manifest.parquet                         one row per catalogue row (RENDER_COLUMNS)
#   <out>/manifest-parts/<run>-<n>.parquet         what a running (or killed) render finished
#   <out>/run.json                                 adapter pins, config, summary of the last run
#   <out>/gallery.html, <out>/contact_sheets/      what people look at

RENDER_FORMAT = 1
RENDER_MANIFEST = "manifest.parquet"
RENDER_PARTS = "manifest-parts"
RENDER_RUN = "run.json"
RENDER_IMAGES = "images"
RENDER_GALLERY = "gallery.html"
RENDER_SHEETS = "contact_sheets"
RENDER_SHEET_INDEX = "index.json"
RENDERED, FAILED = "rendered", "failed"
# Why a row failed (the manifest's error_code; its `error` column says the rest).
RENDER_ERROR_CODES = (
    "unparsable_row",  # a line or record that could not be read as a row
    "bad_id",  # an id that cannot name a file (see bluepri.registry.ids.ID_RULE)
    "duplicate_id",  # an id an earlier row of the catalogue already has
    "empty_prompt",
    "prompt_too_long",
    "bad_size",  # width/height not a multiple of 8, or outside the allowed range
    "steps_out_of_range",
    "unknown_adapter",  # no such adapter or version, or a malformed reference
    "bad_value",  # any other value of the wrong type or range
    "render_error",  # the models failed on the row (adapter that does not load, ...)
    "write_error",  # the image could not be written
)


def render_manifest_schema():
    """The render manifest's columns (pyarrow): one row per catalogue row."""
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),  # the row's id, or "#<row>" when it has no usable one
            ("row", pa.int64()),  # 1-based position in the catalogue
            ("status", pa.string()),  # RENDERED or FAILED
            ("error_code", pa.string()),  # one of RENDER_ERROR_CODES when failed
            ("error", pa.string()),  # one line
            ("prompt", pa.string()),
            ("prompt_2", pa.string()),
            ("negative_prompt", pa.string()),
            ("negative_prompt_2", pa.string()),
            ("seed", pa.int64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("steps", pa.int64()),
            ("guidance_scale", pa.float64()),
            ("refine", pa.bool_()),
            ("high_noise_frac", pa.float64()),  # the base/refiner denoising split
            ("adapter_scale", pa.float64()),
            ("adapter", pa.string()),  # name@version; null: the base model alone
            ("adapter_sha256", pa.string()),
            ("base_model", pa.string()),
            ("refiner_model", pa.string()),
            ("image_path", pa.string()),  # relative to the render folder
            ("image_sha256", pa.string()),  # of the PNG file's bytes
            ("request_sha256", pa.string()),  # of everything that decides the bytes
            ("seconds", pa.float64()),  # the row's share of its batches' model and write time
            ("base_worker", pa.string()),  # Ray actor ids of the pool members that made it
            ("refiner_worker", pa.string()),
            ("run_id", pa.string()),
            ("finished_at", pa.string()),  # UTC, ISO 8601
        ]
    )


def render_image_path(row_id: str) -> str:
    """Where a row's PNG lives, relative to the render folder: 256 shard folders keep any
    one folder browsable at 100k images."""
    import hashlib

    shard = hashlib.sha256(row_id.encode()).hexdigest()[:2]
    return f"{RENDER_IMAGES}/{shard}/{row_id}.png"


def read_render_manifest(out: str):
    """The render manifest (a pyarrow Table of the schema's columns), or one line why not."""
    uri = storage.join(out, RENDER_MANIFEST)
    if not storage.is_file(uri):
        raise BluepriError(f"{out!r} holds no finished render (no {RENDER_MANIFEST})")
    return read_render_table(uri)


def read_render_table(uri: str):
    """One manifest or manifest part, checked against the schema (one line if broken)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = render_manifest_schema()
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except (pa.ArrowException, OSError) as err:
        raise BluepriError(
            f"{uri} is not a readable render manifest ({err})".splitlines()[0]
        ) from None
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise BluepriError(f"{uri} is not a render manifest (no column {missing[0]!r})")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, ValueError) as err:
        raise BluepriError(f"{uri} has a column of the wrong type ({first_line(err)})") from None
