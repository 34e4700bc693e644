"""Dataset sources: an HF imagefolder, a plain image folder, parquet, or an HF hub dataset.

`open_source` checks the source before any work (it exists, the columns exist, the hub is
reachable) and lists it; the listing (names, sizes, modification times, captions) is what
the cache fingerprint hashes. `source_dataset` turns it into a Ray Dataset of
`key, image_bytes, caption` rows, read lazily inside Ray tasks: the driver holds only the
listing, never the images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bluepri import storage
from bluepri.config import PrepareConfig
from bluepri.errors import BluepriError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA_FILE = "metadata.jsonl"
FILES_PER_BLOCK = 16


@dataclass
class Source:
    """A listed source. `entries` holds one dict per file for folder sources."""

    kind: str
    uri: str
    entries: list[dict[str, Any]] = field(default_factory=list)  # key, path, caption
    files: list[str] = field(default_factory=list)  # parquet files
    listing_digest: str = ""
    hf_dataset: Any = None

    @property
    def size(self) -> int:
        return len(self.entries) if self.entries else len(self.files)


def detect_kind(config: PrepareConfig) -> str:
    if config.source_format != "auto":
        return config.source_format
    uri = config.source
    if storage.is_file(uri):
        return "parquet" if uri.endswith(".parquet") else "unknown"
    if storage.is_dir(uri):
        if storage.is_file(storage.join(uri, METADATA_FILE)):
            return "imagefolder"
        names = [i.path for i in storage.list_files(uri)]
        if names and all(n.endswith(".parquet") for n in names):
            return "parquet"
        return "folder"
    if not storage.is_uri(uri) and "/" in uri and not uri.startswith((".", "/", "~")):
        return "hf"
    raise BluepriError(f"source {uri!r} does not exist")


def open_source(config: PrepareConfig) -> Source:
    """Validate and list the source; every error here happens before any work starts."""
    kind = detect_kind(config)
    listers = {
        "imagefolder": list_imagefolder,
        "folder": list_folder,
        "parquet": list_parquet,
        "hf": open_hf_dataset,
    }
    if kind not in listers:
        raise BluepriError(f"source {config.source!r} is neither a folder, parquet nor dataset")
    source = listers[kind](config)
    if source.size == 0:
        raise BluepriError(f"source {config.source!r} holds no images")
    return source


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def file_stamp(info: Any) -> list[Any]:
    """What identifies a file version cheaply, as make and rsync do: size and mtime."""
    return [info.size, info.mtime_ns]


def list_folder(config: PrepareConfig) -> Source:
    """Every image-suffixed file below the folder, uncaptioned."""
    root = storage.resolve(config.source)[1]
    entries, stamps = [], []
    for info in storage.list_files(config.source):
        if info.path.lower().endswith(IMAGE_SUFFIXES):
            key = info.path[len(root) :].lstrip("/")
            entries.append({"key": key, "path": storage.join(config.source, key), "caption": None})
            stamps.append([key, *file_stamp(info)])
    return Source("folder", config.source, entries=entries, listing_digest=digest(stamps))


def list_imagefolder(config: PrepareConfig) -> Source:
    """metadata.jsonl rows (`file_name` + the caption column) joined with the files."""
    meta_uri = storage.join(config.source, METADATA_FILE)
    rows = [json.loads(line) for line in storage.read_bytes(meta_uri).decode().splitlines() if line]
    if rows and config.caption_column not in rows[0]:
        raise BluepriError(
            f"unknown caption column {config.caption_column!r} in {METADATA_FILE}; "
            f"columns are {', '.join(sorted(rows[0]))}"
        )
    captions = {r["file_name"]: r.get(config.caption_column) for r in rows}
    folder = list_folder(config)
    for entry in folder.entries:
        entry["caption"] = captions.get(entry["key"])
    return Source(
        "imagefolder",
        config.source,
        entries=folder.entries,
        listing_digest=digest([folder.listing_digest, sorted(captions.items())]),
    )


def list_parquet(config: PrepareConfig) -> Source:
    """Parquet file(s) with an image column (bytes, or HF's {bytes, path} struct) + text."""
    import pyarrow.parquet as pq

    if storage.is_file(config.source):
        fs, path = storage.resolve(config.source)
        files = [config.source]
        stamps = [file_stamp(fs.get_file_info(path))]
    else:
        listed = [i for i in storage.list_files(config.source) if i.path.endswith(".parquet")]
        files = [storage.join(config.source, i.path.rsplit("/", 1)[-1]) for i in listed]
        stamps = [[i.path, *file_stamp(i)] for i in listed]
    if not files:
        raise BluepriError(f"source {config.source!r} holds no parquet files")
    fs, path = storage.resolve(files[0])
    schema = pq.read_schema(fs.open_input_file(path))
    for column in (config.image_column, config.caption_column):
        if column not in schema.names:
            raise BluepriError(
                f"unknown column {column!r} in {files[0]}; columns are {', '.join(schema.names)}"
            )
    return Source("parquet", config.source, files=files, listing_digest=digest(stamps))


def open_hf_dataset(config: PrepareConfig) -> Source:
    """A hub dataset through the `datasets` library (the optional `hub` extra)."""
    try:
        import datasets
    except ImportError:
        raise BluepriError(
            f"source {config.source!r} looks like a hub dataset, but the `datasets` package is "
            "not installed (pip install 'bluepri[hub]')"
        ) from None
    try:
        dataset = datasets.load_dataset(config.source, split=config.hf_split)
    except Exception as err:  # datasets raises many types for an unreachable hub
        raise BluepriError(
            f"cannot load hub dataset {config.source!r} (unreachable or unknown: "
            f"{type(err).__name__}); download it and pass a local folder or parquet file"
        ) from None
    for column in (config.image_column, config.caption_column):
        if column not in dataset.column_names:
            raise BluepriError(
                f"unknown column {column!r} in {config.source}; columns are "
                f"{', '.join(dataset.column_names)}"
            )
    dataset = dataset.cast_column(config.image_column, datasets.Image(decode=False))
    return Source(
        "hf",
        config.source,
        files=[config.source],
        listing_digest=digest([config.source, config.hf_split, dataset._fingerprint]),
        hf_dataset=dataset,
    )


def read_file_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task: read each file's bytes (unreadable files become empty bytes, skipped later)."""
    blobs = []
    for path in batch["path"]:
        try:
            blobs.append(storage.read_bytes(path))
        except OSError:
            blobs.append(b"")
    return {
        "key": batch["key"],
        "image_bytes": np.array(blobs, dtype=object),
        "caption": batch["caption"],
    }


def row_image_bytes(value: Any) -> tuple[bytes, str]:
    """Bytes and name of a parquet image cell: raw bytes or HF's {bytes, path} struct."""
    if isinstance(value, dict):
        return value.get("bytes") or b"", value.get("path") or ""
    return (bytes(value) if value is not None else b""), ""


def normalise_table_batch(image_column: str, caption_column: str):
    """Ray task factory: parquet/HF rows -> key, image_bytes, caption."""

    def normalise(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blobs, keys = [], []
        for value in batch[image_column]:
            blob, name = row_image_bytes(value)
            blobs.append(blob)
            keys.append(f"{name}#{hashlib.sha256(blob).hexdigest()[:16]}")
        captions = [c if isinstance(c, str) else None for c in batch[caption_column]]
        return {
            "key": np.array(keys, dtype=object),
            "image_bytes": np.array(blobs, dtype=object),
            "caption": np.array(captions, dtype=object),
        }

    return normalise


def source_dataset(
    source: Source,
    config: PrepareConfig,
    entries: list[dict] | None = None,
    num_cpus: float = 1.0,
):
    """A Ray Dataset of `key, image_bytes, caption` rows (lazily read, streamed)."""
    import ray.data

    if source.kind in ("imagefolder", "folder"):
        rows = entries if entries is not None else source.entries
        # Blocks of ~16 files: one task per file would pay Ray's per-task cost per image.
        blocks = max(1, -(-len(rows) // FILES_PER_BLOCK))
        return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            read_file_batch, batch_size=FILES_PER_BLOCK, num_cpus=num_cpus
        )
    if source.kind == "parquet":
        ds = ray.data.read_parquet(source.files, num_cpus=num_cpus).select_columns(
            [config.image_column, config.caption_column]
        )
    else:
        ds = ray.data.from_huggingface(source.hf_dataset)
    return ds.map_batches(
        normalise_table_batch(config.image_column, config.caption_column),
        batch_size=FILES_PER_BLOCK,
        num_cpus=num_cpus,
    )
