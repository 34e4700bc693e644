"""The history of evaluations: one parquet file, one row per run measured per evaluation.

The nightly evaluation appends its runs here (`append_history`) and the report plots every
score across nights from it (`read_history`). Evaluating the same label again replaces that
label's rows, so a rerun of a night does not count twice.

The file may live anywhere `bluepri.storage` reaches (local path or URI) and is written
whole, atomically (staging name, then rename), so a reader never sees half a file. Two
evaluations appending at the very same moment may still lose one of them (the last write
wins): nightly evaluations run one at a time.

The file is untrusted input: it is read with pyarrow only (no pickle, no eval), a file that
is not a parquet or lacks the identifying columns is one `BluepriError` line, and a row whose
values have the wrong types is skipped, counted, never a crash.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bluepri import storage
from bluepri.errors import BluepriError
from bluepri.eval.results import SCORES, EvalResult

# A parquet this large is not a history we wrote (a few hundred bytes per run, per night).
MAX_HISTORY_BYTES = 256 * 1024 * 1024

HISTORY_SCHEMA = pa.schema(
    [
        ("eval", pa.string()),  # the evaluation's label (e.g. the night's date)
        ("created", pa.string()),  # UTC, ISO 8601
        ("protocol", pa.string()),
        ("steps", pa.int64()),
        ("guidance", pa.float64()),
        ("n_prompts", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("cache_fingerprint", pa.string()),
        ("run", pa.string()),  # "base" or the adapter's name@version
        ("adapter", pa.string()),  # the reference the config named (None: the base)
        ("sha256", pa.string()),
        ("refine", pa.bool_()),
        *[(name, pa.float64()) for name in SCORES],
        ("kid_std", pa.float64()),
        ("fid_features", pa.string()),
    ]
)
# Without these a row cannot be placed on a plot: a file lacking one is not a history.
REQUIRED_COLUMNS = ("eval", "created", "run", "refine", *SCORES)
# A row missing one of these values is skipped (the others may be null).
NOT_NULL = ("eval", "created", "run", "refine")


def history_rows(result: EvalResult) -> list[dict[str, Any]]:
    """One row per run of `result`, with the settings that make nights comparable."""
    shared = {
        "eval": result.label,
        "created": result.created,
        "protocol": result.protocol.name,
        "steps": result.protocol.steps,
        "guidance": float(result.protocol.guidance_scale),
        "n_prompts": len(result.prompts),
        "width": result.width,
        "height": result.height,
        "cache_fingerprint": result.cache_fingerprint,
        "fid_features": result.fid_features,
    }
    rows = []
    for run in result.runs:
        scores = {name: getattr(run.scores, name) for name in (*SCORES, "kid_std")}
        rows.append(
            {
                **shared,
                "run": run.label,
                "adapter": run.adapter,
                "sha256": run.sha256,
                "refine": run.refine,
                **scores,
            }
        )
    return [{field.name: row.get(field.name) for field in HISTORY_SCHEMA} for row in rows]


def read_history(uri: str) -> pa.Table | None:
    """The history as a table of `HISTORY_SCHEMA` (None: no file yet); rows with values of
    the wrong type are left out. A file that is no parquet or lacks REQUIRED_COLUMNS: a
    BluepriError."""
    table = _read_table(uri)
    if table is None:
        return None
    rows, _skipped = valid_rows(table)
    return to_table(rows)


def append_history(uri: str, result: EvalResult) -> pa.Table:
    """Add `result`'s runs to the history (replacing any rows of the same evaluation label)
    and return the table the file holds now. A corrupt file is an error, not overwritten:
    it may be the only record of earlier nights."""
    earlier = read_history(uri)
    kept = [] if earlier is None else [r for r in earlier.to_pylist() if r["eval"] != result.label]
    table = to_table(kept + history_rows(result))
    storage.write_bytes(uri, parquet_bytes(table))
    return table


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA)


def valid_rows(table: pa.Table) -> tuple[list[dict[str, Any]], int]:
    """The rows whose every value has its column's type (coerced to it: an integer score
    becomes a float, a missing optional column null), and how many were skipped."""
    present = [field.name for field in HISTORY_SCHEMA if field.name in table.column_names]
    rows, skipped = [], 0
    for raw in table.select(present).to_pylist():
        row = _checked_row(raw)
        if row is None:
            skipped += 1
        else:
            rows.append(row)
    return rows, skipped


def _read_table(uri: str) -> pa.Table | None:
    if not storage.exists(uri):
        return None
    where = f"evaluation history {uri}"
    if not storage.is_file(uri):
        raise BluepriError(f"{where} is not a file; name a .parquet file")
    try:
        fs, path = storage.resolve(uri)
        size = fs.get_file_info(path).size or 0
        if size > MAX_HISTORY_BYTES:
            raise BluepriError(f"{where} is {size} bytes, more than a history holds")
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except BluepriError:
        raise
    except Exception as err:  # noqa: BLE001 - any parse failure of untrusted bytes is the same
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise BluepriError(
            f"{where} is not a readable parquet ({reason[:200]}); move it aside to start anew"
        ) from None
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise BluepriError(
            f"{where} lacks the columns {', '.join(missing)}: not an evaluation history; "
            "move it aside to start anew"
        )
    return table


def _checked_row(raw: dict[str, Any]) -> dict[str, Any] | None:
    row: dict[str, Any] = {}
    for field in HISTORY_SCHEMA:
        ok, value = _coerce(raw.get(field.name), field.type)
        if not ok or (value is None and field.name in NOT_NULL):
            return None
        row[field.name] = value
    return row


def _coerce(value: Any, kind: pa.DataType) -> tuple[bool, Any]:
    """(the value has the column's type, the value as that type). bool is not a number here:
    a True where a score belongs is a wrong row, not 1.0."""
    if value is None:
        return True, None
    if pa.types.is_string(kind):
        return isinstance(value, str), value
    if pa.types.is_boolean(kind):
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, None
    if pa.types.is_integer(kind):
        return isinstance(value, int), value
    if isinstance(value, int | float):
        # NaN is how some writers say "not measured": the same as null here.
        return True, float(value) if math.isfinite(value) else None
    return False, None
