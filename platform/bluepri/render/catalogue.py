"""Catalogue files -> raw rows, streamed with bounded memory, never crashing on a bad line.

A catalogue is CSV (a header row), JSONL (one JSON object a line) or parquet, a local path
or any pyarrow URI, with a `prompt` column and any of CATALOGUE_COLUMNS; other columns
(a SKU, notes) are ignored. Each record becomes a `CatalogueRow`: its 1-based position, the
known columns' values (missing and empty ones left out), or why it could not be read (an
unparsable line, a record that is not an object, text that is not UTF-8). A file that
cannot be read at all (missing, no `prompt` column, corrupt parquet) is one BluepriError.
Values are checked later, by `plan.py`, where the job's defaults are known.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bluepri import storage
from bluepri.errors import BluepriError, first_line

CATALOGUE_COLUMNS = (
    "id",
    "prompt",
    "prompt_2",
    "negative_prompt",
    "negative_prompt_2",
    "seed",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "adapter",
    "refine",
)
SUFFIXES = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
READ_CHUNK = 1 << 20
MAX_LINE_BYTES = 1 << 20  # a longer line is recorded as unparsable, not held in memory
PARQUET_BATCH_ROWS = 1024


@dataclass
class CatalogueRow:
    """One record of the catalogue: its values, or why it could not be read."""

    row: int  # 1-based position among the file's records
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set: the record could not be read (an unparsable row)


@dataclass
class Catalogue:
    """An opened catalogue: where, which format, and which of its columns are ignored."""

    uri: str
    format: str
    ignored_columns: list[str] = field(default_factory=list)

    def rows(self) -> Iterator[CatalogueRow]:
        readers = {"csv": csv_rows, "jsonl": jsonl_rows, "parquet": parquet_rows}
        yield from readers[self.format](self)


def open_catalogue(uri: str, catalogue_format: str = "auto") -> Catalogue:
    """Check the file is there and its format known; its header when it has one."""
    if not storage.is_file(uri):
        raise BluepriError(f"catalogue {uri!r} not found (or not a file)")
    kind = catalogue_format
    if kind == "auto":
        suffix = "." + str(uri).rsplit(".", 1)[-1].lower() if "." in str(uri) else ""
        kind = SUFFIXES.get(suffix, "")
        if not kind:
            raise BluepriError(
                f"catalogue {uri!r}: cannot tell its format from the name; "
                "set catalogue_format to csv, jsonl or parquet"
            )
    catalogue = Catalogue(uri=storage.absolute(uri), format=kind)
    if kind in ("csv", "parquet"):
        columns = csv_header(catalogue) if kind == "csv" else parquet_columns(catalogue)
        check_columns(catalogue, columns)
    return catalogue


def check_columns(catalogue: Catalogue, columns: list[str]) -> None:
    if "prompt" not in columns:
        raise BluepriError(
            f"catalogue {catalogue.uri!r} has no 'prompt' column (columns: "
            + (", ".join(repr(c) for c in columns[:12]) or "none")
            + ")"
        )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise BluepriError(f"catalogue {catalogue.uri!r} repeats column {repeated[0]!r}")
    catalogue.ignored_columns = [c for c in columns if c not in CATALOGUE_COLUMNS]


def known_values(record: dict[str, Any]) -> dict[str, Any]:
    """The known columns that hold a value (None and empty strings mean "not given")."""
    return {
        key: value
        for key, value in record.items()
        if key in CATALOGUE_COLUMNS and value is not None and value != ""
    }


def not_utf8(values: dict[str, Any]) -> bool:
    """Text decoded with surrogateescape holds lone surrogates where bytes were not UTF-8."""
    for value in values.values():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


# -- lines ------------------------------------------------------------------------------------


class LineTooLong:
    """Stands in for a line longer than MAX_LINE_BYTES (its bytes are dropped as they come)."""


def binary_lines(uri: str) -> Iterator[bytes | LineTooLong]:
    """The file's lines without their newline, read in chunks: memory is bounded by
    MAX_LINE_BYTES whatever the file holds."""
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as stream:
        pending, skipping = b"", False
        while True:
            chunk = stream.read(READ_CHUNK)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if skipping:
                    skipping = False  # the end of the over-long line
                    continue
                yield line
            if len(pending) > MAX_LINE_BYTES:
                if not skipping:
                    yield LineTooLong()
                pending, skipping = b"", True
        if pending and not skipping:
            yield pending


def text_lines(uri: str) -> Iterator[str]:
    """Lines as text (newline kept, as `csv` wants); undecodable bytes kept as surrogates so
    the row they are in can be refused, not the file. An over-long line becomes a NUL-marked
    line that `csv_rows` refuses."""
    for line in binary_lines(uri):
        if isinstance(line, LineTooLong):
            yield "\0too-long\0\n"
            continue
        yield line.decode("utf-8", "surrogateescape") + "\n"


# -- CSV ------------------------------------------------------------------------------------------


def csv_records(uri: str) -> Iterator[list[str] | str]:
    """csv's records, or the text of the error where one could not be parsed (the reader
    carries on with the next line)."""
    reader = csv.reader(text_lines(uri))
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield f"line {reader.line_num}: {err}"
            continue
        if record and record[0].startswith("\ufeff"):
            record[0] = record[0][1:]
        yield record


def csv_header(catalogue: Catalogue) -> list[str]:
    for record in csv_records(catalogue.uri):
        if isinstance(record, str):
            raise BluepriError(f"catalogue {catalogue.uri!r}: header unreadable ({record})")
        if record:
            return [name.strip() for name in record]
    raise BluepriError(f"catalogue {catalogue.uri!r} is empty")


def csv_rows(catalogue: Catalogue) -> Iterator[CatalogueRow]:
    records = csv_records(catalogue.uri)
    header: list[str] | None = None
    number = 0
    for record in records:
        if header is None:
            if isinstance(record, list) and record:
                header = [name.strip() for name in record]
            continue
        if isinstance(record, list) and not record:
            continue  # a blank line
        number += 1
        if isinstance(record, str):
            yield CatalogueRow(number, error=f"unparsable CSV ({record})")
        elif any("\0too-long\0" in value for value in record):
            yield CatalogueRow(number, error=f"a line longer than {MAX_LINE_BYTES} bytes")
        elif len(record) != len(header):
            yield CatalogueRow(
                number, error=f"{len(record)} fields where the header has {len(header)}"
            )
        else:
            values = known_values(dict(zip(header, record, strict=True)))
            if not_utf8(values):
                yield CatalogueRow(number, error="text that is not UTF-8")
            else:
                yield CatalogueRow(number, values)


# -- JSONL ----------------------------------------------------------------------------------------


def jsonl_rows(catalogue: Catalogue) -> Iterator[CatalogueRow]:
    number = 0
    for line in binary_lines(catalogue.uri):
        if isinstance(line, bytes) and not line.strip():
            continue
        number += 1
        if isinstance(line, LineTooLong):
            yield CatalogueRow(number, error=f"a line longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            record = json.loads(line)
        except UnicodeDecodeError:
            yield CatalogueRow(number, error="text that is not UTF-8")
            continue
        except (json.JSONDecodeError, RecursionError) as err:
            why = str(err) if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            yield CatalogueRow(number, error=f"unparsable JSON ({why})")
            continue
        if not isinstance(record, dict):
            yield CatalogueRow(number, error="not a JSON object")
            continue
        if "prompt" not in record and not any(k in record for k in CATALOGUE_COLUMNS):
            yield CatalogueRow(number, error="no known column (a row needs 'prompt')")
            continue
        yield CatalogueRow(number, known_values(record))


# -- parquet --------------------------------------------------------------------------------------


def parquet_file(catalogue: Catalogue):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = storage.resolve(catalogue.uri)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowException, OSError) as err:
        raise BluepriError(
            f"catalogue {catalogue.uri!r} is not readable parquet ({err})".splitlines()[0]
        ) from None


def parquet_columns(catalogue: Catalogue) -> list[str]:
    return list(parquet_file(catalogue).schema_arrow.names)


def parquet_rows(catalogue: Catalogue) -> Iterator[CatalogueRow]:
    import pyarrow as pa

    source = parquet_file(catalogue)
    wanted = [c for c in source.schema_arrow.names if c in CATALOGUE_COLUMNS]
    number = 0
    try:
        for batch in source.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            for record in batch.to_pylist():
                number += 1
                yield CatalogueRow(number, known_values(record))
    except (pa.ArrowException, OSError) as err:
        raise BluepriError(
            f"catalogue {catalogue.uri!r}: parquet unreadable after row {number} "
            f"({first_line(err)})"
        ) from None
