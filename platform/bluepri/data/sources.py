"""Dataset sources: an HF imagefolder, a plain image folder, parquet, or an HF hub dataset.

`open_source` checks the source before any work (it exists, the columns exist, the hub is
reachable) and lists it; the listing (names, sizes, modification times, captions) is what
the cache fingerprint hashes. `source_dataset` turns it into a Ray Dataset of
`key, image_bytes, caption, read_error` rows, read lazily inside Ray tasks: the driver holds
only the listing, never the images.

Sources are untrusted input. Listing never leaves the source folder (links out of it are
counted, not followed; loops end), reading refuses a file swapped for such a link since, and
nothing a metadata line or a table cell names is ever opened. Every input becomes exactly one
row or one entry of `Source.skipped`, under a reason below, so the manifest's counts add up.
Row keys are unique and stable: a file's path relative to the source, or for tables
`<file or split>#<row number>`, so the same bytes in two rows are two rows (dedup's business).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bluepri import storage
from bluepri.config import PrepareConfig
from bluepri.data.columns import object_column
from bluepri.errors import BluepriError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PARQUET_SUFFIX = ".parquet"
METADATA_FILE = "metadata.jsonl"
UTF8_BOM = b"\xef\xbb\xbf"
MAX_METADATA_BYTES = 256 * 2**20  # the driver reads it whole: ~1M captions fit
MAX_IMAGE_FILE_BYTES = 512 * 2**20  # above any image that max_pixels lets through
FILES_PER_BLOCK = 16
ROWS_PER_BATCH = 16
ROW_NUMBER_DIGITS = 9  # zero-padded, so keys sort in row order

# Skip reasons of reading a source (decode.SKIP_REASONS are those of decoding the bytes).
# The manifest counts skipped inputs under exactly these strings.
BAD_METADATA = "bad_metadata"  # a metadata.jsonl line that is not {file_name: str, ...}
OUTSIDE_ROOT = "outside_root"  # a link leading out of the source folder: not followed
UNREADABLE_FILE = "unreadable_file"  # listed but not readable: vanished, a folder, dangling
FILE_TOO_LARGE = "file_too_large"  # over MAX_IMAGE_FILE_BYTES: not read into memory
CORRUPT_PARQUET = "corrupt_parquet"  # a parquet file (or row group) pyarrow cannot read
MISSING_COLUMNS = "missing_columns"  # a parquet file without the image or caption column
BAD_IMAGE_CELL = "bad_image_cell"  # a table cell holding no image bytes (null, text, number)

SKIP_REASONS = (
    BAD_METADATA,
    OUTSIDE_ROOT,
    UNREADABLE_FILE,
    FILE_TOO_LARGE,
    CORRUPT_PARQUET,
    MISSING_COLUMNS,
    BAD_IMAGE_CELL,
)


@dataclass
class Source:
    """A listed source: `entries` (one per file) for folders, `units` (one per parquet row
    group) for parquet, `hf_dataset` for the hub; `skipped` holds what listing refused."""

    kind: str
    uri: str
    entries: list[dict[str, Any]] = field(default_factory=list)  # key, path, caption
    units: list[dict[str, Any]] = field(default_factory=list)  # uri, name, row_group, ...
    listing_digest: str = ""
    hf_dataset: Any = None
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> names

    @property
    def size(self) -> int:
        """How many inputs the listing found (files or table rows), skipped ones excluded."""
        if self.kind == "hf":
            return len(self.hf_dataset)
        if self.kind == "parquet":
            return sum(unit["rows"] for unit in self.units)
        return len(self.entries)


def detect_kind(config: PrepareConfig) -> str:
    if config.source_format != "auto":
        return config.source_format
    uri = config.source
    if storage.is_file(uri):
        return "parquet" if uri.endswith(PARQUET_SUFFIX) else "unknown"
    if storage.is_dir(uri):
        if storage.is_file(storage.join(uri, METADATA_FILE)):
            return "imagefolder"
        names = [i.path.lower() for i in storage.list_files(uri)]
        # An HF dataset repository holds parquet files beside a README and .gitattributes.
        has_images = any(n.endswith(IMAGE_SUFFIXES) for n in names)
        if not has_images and any(n.endswith(PARQUET_SUFFIX) for n in names):
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


def relative_name(root: str, info: Any) -> str:
    return info.path[len(root) :].lstrip("/")


def refused_by_listing(listing: storage.FolderListing, suffixes: tuple[str, ...]) -> dict:
    """What the walk left out, as skip reasons: every link out of the folder; unreadable
    folders, and unreadable names that look like inputs."""
    skipped: dict[str, list[str]] = {}
    if listing.outside_root:
        skipped[OUTSIDE_ROOT] = list(listing.outside_root)
    unreadable = [n for n in listing.unreadable if n.endswith("/") or n.lower().endswith(suffixes)]
    if unreadable:
        skipped[UNREADABLE_FILE] = unreadable
    return skipped


# -- folders ---------------------------------------------------------------------------------


def list_folder(config: PrepareConfig) -> Source:
    """Every image-suffixed file below the folder, uncaptioned."""
    root = storage.resolve(config.source)[1]
    listing = storage.list_files_within(config.source)
    entries, stamps = [], []
    for info in listing.files:
        if info.path.lower().endswith(IMAGE_SUFFIXES):
            key = relative_name(root, info)
            entries.append({"key": key, "path": storage.join(config.source, key), "caption": None})
            stamps.append([key, *file_stamp(info)])
    skipped = refused_by_listing(listing, IMAGE_SUFFIXES)
    return Source(
        "folder",
        config.source,
        entries=entries,
        listing_digest=digest([stamps, skipped]),
        skipped=skipped,
    )


@dataclass
class Metadata:
    """What metadata.jsonl says: captions by file name, and the lines that say nothing usable."""

    captions: dict[str, str | None] = field(default_factory=dict)
    columns: set[str] = field(default_factory=set)
    bad_lines: list[str] = field(default_factory=list)  # "metadata.jsonl:<line> (<why>)"


def list_imagefolder(config: PrepareConfig) -> Source:
    """metadata.jsonl rows (`file_name` + the caption column) joined with the files."""
    folder = list_folder(config)
    skipped = dict(folder.skipped)
    try:
        data = storage.read_bytes_within(
            config.source, storage.join(config.source, METADATA_FILE), MAX_METADATA_BYTES
        )
    except storage.OutsideRoot:
        # Not read: no captions. The walk counted the link already (unless it changed since).
        skipped[OUTSIDE_ROOT] = sorted({*skipped.get(OUTSIDE_ROOT, []), METADATA_FILE})
        data = b""
    except storage.TooLarge:
        raise BluepriError(f"{METADATA_FILE} is larger than {MAX_METADATA_BYTES} bytes") from None
    except OSError as err:
        raise BluepriError(f"cannot read {METADATA_FILE}: {err}".splitlines()[0]) from None
    metadata = parse_metadata(data, config.caption_column)
    if metadata.bad_lines:
        skipped[BAD_METADATA] = metadata.bad_lines
    for entry in folder.entries:
        entry["caption"] = metadata.captions.get(entry["key"])
    return Source(
        "imagefolder",
        config.source,
        entries=folder.entries,
        listing_digest=digest([folder.listing_digest, sorted(metadata.captions.items()), skipped]),
        skipped=skipped,
    )


def parse_metadata(data: bytes, caption_column: str) -> Metadata:
    """Every usable line of metadata.jsonl; bad lines are recorded with their numbers. A file
    with lines but none usable, or without the caption column anywhere, is one error."""
    metadata = Metadata()
    lines = data.removeprefix(UTF8_BOM).split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines carry nothing: JSON Lines readers skip them too
        row, why = parse_metadata_line(line.strip(), caption_column)
        if row is None:
            metadata.bad_lines.append(f"{METADATA_FILE}:{number} ({why})")
            continue
        name = posixpath.normpath(row["file_name"])
        metadata.captions[name] = row.get(caption_column)
        metadata.columns.update(row)
    if metadata.bad_lines and not metadata.captions:
        raise BluepriError(
            f"{METADATA_FILE} has no usable line (first: {metadata.bad_lines[0]}); "
            'each line must be a JSON object with a "file_name" string'
        )
    if metadata.captions and caption_column not in metadata.columns:
        columns = ", ".join(repr(c) for c in sorted(metadata.columns)[:20])
        raise BluepriError(
            f"unknown caption column {caption_column!r} in {METADATA_FILE}; columns are {columns}"
        )
    return metadata


def parse_metadata_line(line: bytes, caption_column: str) -> tuple[dict | None, str]:
    """(the row, "") or (None, why the line is unusable)."""
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except ValueError:  # JSONDecodeError, and integers too long to convert
        return None, "not valid JSON"
    except RecursionError:
        return None, "nested too deeply"
    if not isinstance(row, dict):
        return None, "not a JSON object"
    if not isinstance(row.get("file_name"), str) or not row["file_name"].strip():
        return None, "no file_name string"
    caption = row.get(caption_column)
    if caption is not None and not isinstance(caption, str):
        return None, f"{caption_column} is not a string"
    return row, ""


def read_file_batch(root: str):
    """Ray task factory: each listed file's bytes, read inside `root`; a file that cannot be
    read becomes empty bytes and a `read_error` reason."""

    def read(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        blobs, errors = [], []
        for path in batch["path"]:
            blob, error = read_image_file(root, path)
            blobs.append(blob)
            errors.append(error)
        return {
            "key": object_column(batch["key"]),
            "image_bytes": object_column(blobs),
            "caption": object_column(batch["caption"]),
            "read_error": object_column(errors),
        }

    return read


def read_image_file(root: str, path: str) -> tuple[bytes, str]:
    try:
        return storage.read_bytes_within(root, path, MAX_IMAGE_FILE_BYTES), ""
    except storage.OutsideRoot:
        return b"", OUTSIDE_ROOT
    except storage.TooLarge:
        return b"", FILE_TOO_LARGE
    except OSError:
        return b"", UNREADABLE_FILE


# -- parquet ---------------------------------------------------------------------------------


def list_parquet(config: PrepareConfig) -> Source:
    """Parquet file(s) with an image column (bytes, or HF's {bytes, path} struct) + text, at
    any depth (HF repositories keep them in data/). Each file is checked on its own: one that
    pyarrow cannot read, or without the columns, is skipped under a reason."""
    files, skipped = parquet_files(config)
    if not files:
        raise BluepriError(f"source {config.source!r} holds no parquet files")
    units, stamps, usable = [], [], 0
    for uri, name, info in files:
        stamps.append([name, *file_stamp(info)])
        row_groups, reason = parquet_row_groups(config, uri)
        if reason:
            skipped.setdefault(reason, []).append(name)
            continue
        usable += 1
        first = 0
        for index, rows in enumerate(row_groups):
            units.append(
                {"uri": uri, "name": name, "row_group": index, "first": first, "rows": rows}
            )
            first += rows
    if not usable:
        summary = "; ".join(
            f"{reason}: {', '.join(map(repr, names))}" for reason, names in skipped.items()
        )
        raise BluepriError(f"source {config.source!r} has no usable parquet file ({summary})")
    return Source(
        "parquet",
        config.source,
        units=units,
        listing_digest=digest([stamps, skipped]),
        skipped=skipped,
    )


def parquet_files(config: PrepareConfig) -> tuple[list[tuple[str, str, Any]], dict]:
    """(uri, name relative to the source, file info) of each parquet file; what listing refused."""
    fs, path = storage.resolve(config.source)
    if storage.is_file(config.source):
        name = path.rsplit("/", 1)[-1]
        return [(config.source, name, fs.get_file_info(path))], {}
    listing = storage.list_files_within(config.source)
    files = []
    for info in listing.files:
        if info.path.lower().endswith(PARQUET_SUFFIX):
            name = relative_name(path, info)
            files.append((storage.join(config.source, name), name, info))
    return files, refused_by_listing(listing, (PARQUET_SUFFIX,))


def parquet_row_groups(config: PrepareConfig, uri: str) -> tuple[list[int], str]:
    """(rows of each row group, "") or ([], why the file is skipped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with storage.open_within(config.source, uri) as handle:
            metadata = pq.ParquetFile(handle).metadata
            names = metadata.schema.to_arrow_schema().names
            row_groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    except storage.OutsideRoot:
        return [], OUTSIDE_ROOT
    except (pa.ArrowException, OSError, ValueError):
        return [], CORRUPT_PARQUET
    if config.image_column not in names or config.caption_column not in names:
        return [], MISSING_COLUMNS
    return row_groups, ""


def table_key(name: str, row: int) -> str:
    return f"{name}#{row:0{ROW_NUMBER_DIGITS}d}"


def unit_keys(unit: dict[str, Any]) -> list[str]:
    return [table_key(unit["name"], unit["first"] + i) for i in range(unit["rows"])]


def read_parquet_units(root: str, image_column: str, caption_column: str, keys: set | None):
    """Ray task factory: the rows of parquet row groups, ROWS_PER_BATCH at a time, as
    `key, image_bytes, caption, read_error` (only the rows in `keys`, when given)."""
    columns = list(dict.fromkeys([image_column, caption_column]))

    def read(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for unit in batch_units(batch):
            yield from read_row_group(root, unit, columns, keys)

    return read


def read_row_group(
    root: str, unit: dict[str, Any], columns: list[str], keys: set | None
) -> Iterator[dict[str, np.ndarray]]:
    """One row group's rows. A row group that cannot be read to its end yields the rest of
    its rows as CORRUPT_PARQUET: every row of the listing comes back exactly once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_column, caption_column = columns[0], columns[-1]
    keys_left = unit_keys(unit)
    try:
        with storage.open_within(root, unit["uri"]) as handle:
            parts = pq.ParquetFile(handle).iter_batches(
                batch_size=ROWS_PER_BATCH, row_groups=[int(unit["row_group"])], columns=columns
            )
            for part in parts:
                rows = table_rows(
                    keys_left[: part.num_rows],
                    part.column(image_column).to_pylist(),
                    part.column(caption_column).to_pylist(),
                    keys,
                )
                keys_left = keys_left[part.num_rows :]
                yield rows
    except storage.OutsideRoot:
        yield failed_rows(keys_left, OUTSIDE_ROOT, keys)
    except (pa.ArrowException, OSError, ValueError):
        yield failed_rows(keys_left, CORRUPT_PARQUET, keys)
    else:
        if keys_left:  # fewer rows than the footer promised
            yield failed_rows(keys_left, CORRUPT_PARQUET, keys)


def batch_units(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    names = list(batch)
    return [dict(zip(names, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def image_cell_bytes(value: Any) -> bytes | None:
    """The bytes of a table image cell: raw bytes, or the `bytes` of HF's {bytes, path} struct.
    A path alone is never opened (a table must not make us read anywhere); anything else
    (null, text, numbers) holds no image: None."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def table_rows(
    keys: list[str], cells: list[Any], captions: list[Any], wanted: set | None
) -> dict[str, np.ndarray]:
    """Table cells -> `key, image_bytes, caption, read_error` rows (those in `wanted`)."""
    out: dict[str, list] = defaultdict(list)
    for key, cell, caption in zip(keys, cells, captions, strict=True):
        if wanted is not None and key not in wanted:
            continue
        blob = image_cell_bytes(cell)
        out["key"].append(key)
        out["image_bytes"].append(blob if blob is not None else b"")
        out["caption"].append(caption if isinstance(caption, str) else None)
        out["read_error"].append("" if blob is not None else BAD_IMAGE_CELL)
    return rows_batch(out)


def failed_rows(keys: list[str], reason: str, wanted: set | None) -> dict[str, np.ndarray]:
    out: dict[str, list] = defaultdict(list)
    for key in keys:
        if wanted is None or key in wanted:
            out["key"].append(key)
            out["image_bytes"].append(b"")
            out["caption"].append(None)
            out["read_error"].append(reason)
    return rows_batch(out)


def rows_batch(columns: dict[str, list]) -> dict[str, np.ndarray]:
    return {
        name: object_column(columns.get(name, []))
        for name in ("key", "image_bytes", "caption", "read_error")
    }


# -- the hub ---------------------------------------------------------------------------------

ROW_NUMBER_COLUMN = "__bluepri_row"
HF_ROWS_PER_BLOCK = 64


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
    if isinstance(dataset.features[config.image_column], datasets.Image):
        dataset = dataset.cast_column(config.image_column, datasets.Image(decode=False))
    # Rows carry their number: the key, unique even when two rows hold the same bytes.
    dataset = dataset.select_columns([config.image_column, config.caption_column])
    dataset = dataset.add_column(ROW_NUMBER_COLUMN, list(range(len(dataset))))
    return Source(
        "hf",
        config.source,
        listing_digest=digest([config.source, config.hf_split, dataset._fingerprint]),
        hf_dataset=dataset,
    )


def normalise_hf_batch(config: PrepareConfig, keys: set | None):
    """Ray task factory: hub rows -> key (`<split>#<row>`), image_bytes, caption, read_error."""
    image_column, caption_column, split = (
        config.image_column,
        config.caption_column,
        config.hf_split,
    )

    def normalise(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        row_keys = [table_key(split, int(row)) for row in batch[ROW_NUMBER_COLUMN]]
        return table_rows(row_keys, list(batch[image_column]), list(batch[caption_column]), keys)

    return normalise


# -- as a Ray Dataset --------------------------------------------------------------------------


def source_dataset(
    source: Source, config: PrepareConfig, keys: set[str] | None = None, num_cpus: float = 1.0
):
    """A Ray Dataset of `key, image_bytes, caption, read_error` rows (lazily read, streamed):
    every input of the listing, or only those whose key is in `keys`."""
    import ray.data

    if source.kind in ("imagefolder", "folder"):
        rows = [e for e in source.entries if keys is None or e["key"] in keys]
        # Blocks of ~16 files: one task per file would pay Ray's per-task cost per image.
        blocks = max(1, -(-len(rows) // FILES_PER_BLOCK))
        return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            read_file_batch(source.uri), batch_size=FILES_PER_BLOCK, num_cpus=num_cpus
        )
    if source.kind == "parquet":
        units = [u for u in source.units if keys is None or not keys.isdisjoint(unit_keys(u))]
        reader = read_parquet_units(source.uri, config.image_column, config.caption_column, keys)
        return ray.data.from_items(units, override_num_blocks=max(1, len(units))).map_batches(
            reader, batch_size=1, num_cpus=num_cpus
        )
    return ray.data.from_arrow(hf_table_slices(source.hf_dataset)).map_batches(
        normalise_hf_batch(config, keys), batch_size=ROWS_PER_BATCH, num_cpus=num_cpus
    )


def hf_table_slices(dataset: Any) -> list[Any]:
    """The dataset's Arrow table in slices of HF_ROWS_PER_BLOCK rows (one block each), what
    `ray.data.from_huggingface` does for a transformed dataset, minus its hub lookups."""
    table = dataset.with_format("arrow")[:]
    return [
        table.slice(start, HF_ROWS_PER_BLOCK)
        for start in range(0, max(1, table.num_rows), HF_ROWS_PER_BLOCK)
    ]
