"""`render`: one job, start to finish.

    lock the folder, remove what a crash left (.tmp- files, plan folders)
    pin the default adapter (once; a rerun keeps the pins run.json recorded)
    plan: check every catalogue row, skip the ones verified done, group the rest by key
    stream the rest through Base -> Refiner -> writer, one manifest part per block
    consolidate the manifest; contact sheets; gallery; summary into run.json

A rerun of the same job (same folder) renders only what is not verifiably done: rows whose
image is missing, differs from its recorded sha256, or was made from other settings.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from bluepri import artifacts, storage
from bluepri.artifacts import FAILED, RENDER_RUN, RENDERED
from bluepri.config import RenderConfig
from bluepri.errors import BluepriError
from bluepri.render import gallery
from bluepri.render.catalogue import open_catalogue
from bluepri.render.manifest import (
    ManifestParts,
    consolidate,
    earlier_records,
    remove_leftovers,
    render_lock,
)
from bluepri.render.pipeline import run_pipeline
from bluepri.render.plan import AdapterPins, RowError, new_plan_dir, plan_catalogue
from bluepri.render.progress import Progress, duration
from bluepri.runtime import ensure_ray
from bluepri.telemetry import count_failed


class RenderResult(BaseModel):
    """What a render did, and where its outputs are."""

    out: str
    run_id: str
    manifest: str
    gallery: str
    contact_sheets: list[str]
    adapters: dict[str, dict[str, str | None]]  # reference -> pinned label and sha256
    total: int  # catalogue rows
    rendered: int  # this run
    skipped: int  # rendered by an earlier run, verified
    failed: dict[str, int]  # error code -> rows
    images_per_s: float
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary_lines(self) -> list[str]:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{code} {count}" for code, count in sorted(self.failed.items()))
        return [
            f"rendered {self.rendered}, skipped {self.skipped} already done, failed {failed}"
            + (f" ({reasons})" if reasons else "")
            + f" of {self.total} rows; {self.images_per_s:.2f} images/s, "
            f"{duration(self.seconds)}",
            f"manifest: {self.manifest}",
            f"gallery: {self.gallery}",
        ]


def read_run(out: str) -> dict[str, Any]:
    """The earlier run.json of this folder (empty when none or unreadable)."""
    uri = storage.join(out, RENDER_RUN)
    if not storage.is_file(uri):
        return {}
    try:
        value = artifacts.parse_json_object(storage.read_bytes(uri), uri)
    except BluepriError:
        return {}
    pins = value.get("adapters")
    if not isinstance(pins, dict) or not all(
        isinstance(p, dict) and isinstance(p.get("label"), str | None) for p in pins.values()
    ):
        value["adapters"] = {}
    return value


def registry_root(config: RenderConfig) -> str:
    """The registry's URI as every worker must see it (the default resolved here, once)."""
    from bluepri.registry import default_root

    return storage.absolute(config.registry) if config.registry else str(default_root())


def render(config: RenderConfig, log: Callable[[str], None] = print) -> RenderResult:
    """Render the catalogue into `config.out` (see the module doc); failed rows are in the
    manifest with their reasons, and `RenderResult.ok` says whether there were any."""
    started = time.perf_counter()
    out = storage.absolute(config.out)
    catalogue = open_catalogue(config.catalogue, config.catalogue_format)
    if catalogue.ignored_columns:
        log(f"render: ignoring catalogue columns {', '.join(catalogue.ignored_columns)}")
    with render_lock(out):
        run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        removed = remove_leftovers(out)
        if removed:
            log(f"render: removed {removed} temporary files an interrupted run left")
        earlier_run = read_run(out)
        pins = AdapterPins(registry_root(config), earlier_run.get("adapters"))
        try:
            default_pin = pins.pin(config.adapter)
        except RowError as err:
            raise BluepriError(err.message) from None
        log(
            f"render: default adapter {config.adapter} -> {default_pin.label or 'base model'}"
            + (f" (sha256 {default_pin.sha256[:12]})" if default_pin.sha256 else "")
        )
        parts = ManifestParts(out, run_id)
        earlier = earlier_records(out, log)
        plan_dir = new_plan_dir(out)
        plan = plan_catalogue(
            catalogue, config, pins, default_pin, earlier, out, plan_dir, parts.write
        )
        run_record = {
            "run_id": run_id,
            "started": datetime.now(timezone.utc).isoformat(),
            "catalogue": catalogue.uri,
            "adapters": pins.pins(),
            "config": config.model_dump(),
            "status": "running",
        }
        storage.write_json(storage.join(out, RENDER_RUN), run_record)
        log(
            f"render: {plan.total} rows: {plan.to_render} to render in {plan.groups} batch "
            f"groups, {plan.skipped} already done, {sum(plan.failed.values())} failed checks"
        )
        progress = Progress(plan.to_render, log, config.progress_interval_s)
        failed = Counter(plan.failed)

        def finished_block(block: Any) -> None:
            table = parts.write(block)
            statuses = table.column("status").to_pylist()
            for code, status in zip(table.column("error_code").to_pylist(), statuses, strict=True):
                if status == FAILED:
                    failed[code] += 1
            done = statuses.count(RENDERED)
            progress.update(done, len(statuses) - done)

        if plan.to_render:
            ensure_ray()
            # The writer counts the pipeline's rows; the rows the plan's checks failed never
            # get there. Counted here, once this driver is a Ray worker whose metrics export
            # (a job with nothing to render starts no Ray, and counts none).
            for code, rows in plan.failed.items():
                count_failed(code, rows)
            run_pipeline(config, plan.files, out, pins.registry_root, finished_block)
        storage.delete_dir(storage.join(out, ".plan"))
        manifest = consolidate(out, plan.rows, log)
        sheets = gallery.write_contact_sheets(out, manifest, config.contact_sheet_images)
        page = gallery.write_gallery(out, manifest, f"render {run_id}")
        result = RenderResult(
            out=out,
            run_id=run_id,
            manifest=storage.join(out, artifacts.RENDER_MANIFEST),
            gallery=page,
            contact_sheets=sheets,
            adapters=pins.pins(),
            total=plan.total,
            rendered=progress.rendered,
            skipped=plan.skipped,
            failed=dict(failed),
            images_per_s=round(progress.images_per_s, 4),
            seconds=round(time.perf_counter() - started, 3),
        )
        storage.write_json(
            storage.join(out, RENDER_RUN),
            {**run_record, "status": "finished", "summary": result.model_dump()},
        )
    return result
