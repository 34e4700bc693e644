"""The render manifest: parts written as blocks finish, read back by a rerun, consolidated.

While a render runs, every finished block becomes one parquet part under
`manifest-parts/` (written atomically), so a killed driver loses at most the blocks in
flight. A rerun reads the consolidated manifest and every part; the latest record of an id
(by `finished_at`) is what that id's row last came to. At the end the parts are folded into
`manifest.parquet` (atomically, then the parts are removed): one row per catalogue row, in
catalogue order. What a crash left half-done (`.tmp-` files, the plan folder) is removed
before a run starts; a lock file keeps two renders out of one local folder.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from bluepri import artifacts, storage
from bluepri.artifacts import RENDER_MANIFEST, RENDER_PARTS
from bluepri.errors import BluepriError
from bluepri.render.plan import PLAN_DIR, Earlier

LOCK_NAME = ".render.lock"
EARLIER_COLUMNS = ["id", "status", "request_sha256", "image_path", "image_sha256", "finished_at"]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def as_table(records: Any):
    """Records (a list of dicts or a pyarrow table) in the manifest's schema."""
    import pyarrow as pa

    schema = artifacts.render_manifest_schema()
    if isinstance(records, pa.Table):
        columns = []
        for field in schema:
            if field.name in records.column_names:
                columns.append(records.column(field.name).cast(field.type))
            else:
                columns.append(pa.nulls(records.num_rows, field.type))
        return pa.Table.from_arrays(columns, schema=schema)
    return pa.Table.from_pylist(
        [{name: record.get(name) for name in schema.names} for record in records], schema=schema
    )


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


class ManifestParts:
    """This run's parts: `<run_id>-<n>.parquet`, each stamped with the run and the time."""

    def __init__(self, out: str, run_id: str):
        self.folder = storage.join(out, RENDER_PARTS)
        self.run_id = run_id
        self.count = 0

    def write(self, records: Any) -> Any:
        import pyarrow as pa

        table = as_table(records)
        if table.num_rows == 0:
            return table
        stamp = pa.array([self.run_id] * table.num_rows, pa.string())
        now = pa.array([utc_now()] * table.num_rows, pa.string())
        table = table.set_column(table.schema.get_field_index("run_id"), "run_id", stamp)
        table = table.set_column(table.schema.get_field_index("finished_at"), "finished_at", now)
        self.count += 1
        name = f"{self.run_id}-{self.count:06d}.parquet"
        storage.write_bytes(storage.join(self.folder, name), parquet_bytes(table))
        return table


def part_uris(out: str) -> list[str]:
    folder = storage.join(out, RENDER_PARTS)
    if not storage.is_dir(folder):
        return []
    prefix = folder.split("://", 1)[0] + "://" if storage.is_uri(folder) else ""
    return [
        prefix + i.path
        for i in storage.list_files(folder, recursive=False)
        if i.base_name.endswith(".parquet") and not i.base_name.startswith(".")
    ]


def record_tables(out: str, log: Callable[[str], None]) -> Iterator[Any]:
    """The consolidated manifest and every part; unreadable ones are reported and skipped
    (their rows are rendered again: nothing untrusted is taken as done)."""
    uris = (
        [storage.join(out, RENDER_MANIFEST)]
        if storage.is_file(storage.join(out, RENDER_MANIFEST))
        else []
    )
    for uri in [*uris, *part_uris(out)]:
        try:
            yield artifacts.read_render_table(uri)
        except BluepriError as err:
            log(f"render: ignoring {err}")


def latest_records(tables: list[Any]):
    """One record per id: the latest (by finished_at; later files win ties). The tables
    need `id` and `finished_at`, and the same columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not tables:
        return as_table([])
    table = pa.concat_tables(tables)
    table = table.append_column("_order", pa.array(range(table.num_rows), pa.int64()))
    table = table.sort_by([("finished_at", "ascending"), ("_order", "ascending")])
    table = table.set_column(
        table.schema.get_field_index("_order"), "_order", pa.array(range(table.num_rows))
    )
    last = table.group_by("id", use_threads=False).aggregate([("_order", "max")])
    keep = pc.take(table, last.column("_order_max"))
    return keep.drop_columns(["_order"])


def earlier_records(out: str, log: Callable[[str], None]) -> dict[str, Earlier]:
    """What earlier runs into this folder last recorded for each id."""
    tables = [t.select(EARLIER_COLUMNS) for t in record_tables(out, log)]
    if not tables:
        return {}
    latest = latest_records(tables)
    columns = {name: latest.column(name).to_pylist() for name in EARLIER_COLUMNS[:5]}
    return {
        rid: Earlier(status, request, path, sha)
        for rid, status, request, path, sha in zip(*columns.values(), strict=True)
    }


def consolidate(out: str, rows: dict[str, int], log: Callable[[str], None]):
    """Fold every record into manifest.parquet: this catalogue's rows only, latest record
    each, in catalogue order. Written atomically, then the parts are removed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    latest = latest_records(list(record_tables(out, log)))
    latest = latest.filter(pc.is_in(latest.column("id"), pa.array(list(rows), pa.string())))
    positions = pa.array([rows[rid] for rid in latest.column("id").to_pylist()], pa.int64())
    latest = latest.set_column(latest.schema.get_field_index("row"), "row", positions)
    latest = latest.sort_by([("row", "ascending")])
    storage.write_bytes(storage.join(out, RENDER_MANIFEST), parquet_bytes(latest))
    storage.delete_dir(storage.join(out, RENDER_PARTS))
    return latest


# -- what a crash leaves behind ------------------------------------------------------------------


def remove_leftovers(out: str) -> int:
    """Remove `.tmp-` files a killed writer left (local folders: an object store's PUT is
    atomic) and plan folders of earlier runs. Returns how many temporary files went."""
    storage.delete_dir(storage.join(out, PLAN_DIR))
    if storage.is_uri(out):
        return 0
    root = storage.absolute(out)
    removed = 0
    folders = [root, os.path.join(root, RENDER_PARTS), os.path.join(root, artifacts.RENDER_SHEETS)]
    images = os.path.join(root, artifacts.RENDER_IMAGES)
    if os.path.isdir(images):
        with os.scandir(images) as shards:
            folders += [e.path for e in shards if e.is_dir(follow_symlinks=False)]
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(storage.STAGING_PREFIX) and entry.is_file(
                    follow_symlinks=False
                ):
                    os.unlink(entry.path)
                    removed += 1
    return removed


@contextlib.contextmanager
def render_lock(out: str) -> Iterator[None]:
    """One render at a time in a local folder (the kernel drops the lock of a killed one)."""
    if storage.is_uri(out):
        yield
        return
    import fcntl

    folder = storage.output_folder(storage.absolute(out))
    with open(folder / LOCK_NAME, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BluepriError(f"another render is writing to {out!r}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
