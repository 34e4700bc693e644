"""Planning: catalogue rows -> checked render rows, grouped by batch key, minus work done.

One streaming pass over the catalogue on the driver, before any model loads:

- every row is checked against the job's defaults and limits into a `GenerationRequest`;
  a row that cannot be rendered becomes a failed manifest record with its reason
  (`artifacts.RENDER_ERROR_CODES`), and the job goes on;
- rows without an id get one from their content, rows without a seed one from their id,
  so a rerun of the same catalogue gives every row the same id, seed and image path;
- adapter references are pinned once (`AdapterPins`) to name@version + sha256;
- a row already rendered by an earlier run is skipped only if its manifest record matches
  what it would render now (`request_sha256`) AND its file is there with the recorded
  sha256; anything else is rendered again;
- the rows to render are written as small parquet files per batch key (`PlanWriter`), in
  first-seen key order, so the pipeline reads compatible rows together: batches share
  adapter and size, and a base actor switches adapters rarely.

Memory: the catalogue is streamed; what the driver keeps per row is its id (duplicates
are refused) and the earlier run's short record, a few hundred bytes a row.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from bluepri import artifacts, storage
from bluepri.artifacts import FAILED, RENDER_FORMAT
from bluepri.config import RenderConfig
from bluepri.errors import BluepriError, error_line
from bluepri.generate import GenerationRequest, parse_adapter_reference
from bluepri.registry.ids import ID_RULE, is_valid_id
from bluepri.render.catalogue import Catalogue

BASE_ONLY = "none"
PLAN_DIR = ".plan"
VERIFY_CHUNK = 64  # earlier images checked at once (threads: file reads overlap)
FAILED_FLUSH_ROWS = 1024
MAX_BUFFERED_BLOCKS = 64  # plan rows held across all batch keys before the largest flushes
# Catalogue names -> GenerationRequest fields.
REQUEST_FIELDS = {
    "prompt": "prompt",
    "prompt_2": "prompt_2",
    "negative_prompt": "negative_prompt",
    "negative_prompt_2": "negative_prompt_2",
    "width": "width",
    "height": "height",
    "steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
    "seed": "seed",
    "refine": "refine",
}
TEXT_COLUMNS = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")


class RowError(Exception):
    """Why one row cannot be rendered: a code from RENDER_ERROR_CODES and one line."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message.splitlines()[0] if message else code


# -- adapter pins -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """A reference made concrete for the whole job: name@version and the weights' sha256."""

    reference: str
    label: str | None  # None: the base model alone
    sha256: str | None = None

    def record(self) -> dict[str, str | None]:
        return {"label": self.label, "sha256": self.sha256}


class AdapterPins:
    """Adapter references -> pins, each resolved once. References pinned by an earlier run
    of the same job (run.json) keep their version, checked against its sha256."""

    def __init__(self, registry_root: str, earlier: dict[str, dict[str, Any]] | None = None):
        self.registry_root = registry_root
        self.earlier = earlier or {}
        self.found: dict[str, Pin | RowError] = {}
        self._registry = None

    @property
    def registry(self):
        if self._registry is None:
            from bluepri.registry import AdapterRegistry

            self._registry = AdapterRegistry(self.registry_root)
        return self._registry

    def pin(self, reference: str) -> Pin:
        """The pin of `reference` (`name`, `name@version`, `none`); RowError if unknown."""
        if reference == BASE_ONLY:
            return Pin(BASE_ONLY, None)
        try:
            name, version = parse_adapter_reference(reference)
        except BluepriError as err:
            raise RowError("unknown_adapter", str(err)) from None
        key = f"{name}@{version}"
        if key not in self.found:
            self.found[key] = self.resolve(key, name, version)
        found = self.found[key]
        if isinstance(found, RowError):
            raise found
        return found

    def resolve(self, key: str, name: str, version: str) -> Pin | RowError:
        from bluepri.generate import resolve_adapter

        earlier = self.earlier.get(key)
        target = earlier["label"] if earlier else f"{name}@{version}"
        try:
            resolved = resolve_adapter(target, self.registry)  # verifies the weights
        except BluepriError as err:
            return RowError("unknown_adapter", f"adapter {key}: {err}")
        if earlier and resolved.sha256 != earlier.get("sha256"):
            return RowError(
                "unknown_adapter",
                f"adapter {key} was pinned to {target} (sha256 {earlier.get('sha256')}), "
                f"which the registry now holds with sha256 {resolved.sha256}",
            )
        return Pin(key, resolved.label, resolved.sha256)

    def pins(self) -> dict[str, dict[str, str | None]]:
        """What run.json records: every reference resolved so far (earlier ones kept)."""
        pins = dict(self.earlier)
        pins.update({k: p.record() for k, p in self.found.items() if isinstance(p, Pin)})
        return pins


# -- rows -------------------------------------------------------------------------------------


def content_id(values: dict[str, Any]) -> str:
    """A stable id from what the row says (its given values, not the job's defaults)."""
    given = {k: v for k, v in values.items() if k != "id"}
    text = json.dumps(given, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def seed_from_id(row_id: str) -> int:
    """The seed of a row that names none: from its id, so it is the same on every rerun."""
    return int.from_bytes(hashlib.sha256(f"{row_id}:seed".encode()).digest()[:7], "big")


def row_id(values: dict[str, Any]) -> str:
    if "id" not in values:
        return content_id(values)
    given = values["id"]
    usable = isinstance(given, str | int) and not isinstance(given, bool)
    text = str(given).strip() if usable else ""
    if not is_valid_id(text):
        raise RowError("bad_id", f"id {str(given)[:80]!r} cannot name a file: use {ID_RULE}")
    return text


ERROR_CODES_BY_FIELD = {
    "width": "bad_size",
    "height": "bad_size",
    "num_inference_steps": "steps_out_of_range",
}


def check_request(
    values: dict[str, Any], config: RenderConfig, pin: Pin, seed: int
) -> GenerationRequest:
    """The row's request: its values over the job's defaults, within the job's limits."""
    prompt = values.get("prompt")
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise RowError("empty_prompt", "the prompt is empty")
    for name in TEXT_COLUMNS:
        text = values.get(name)
        if isinstance(text, str) and len(text) > config.max_prompt_chars:
            raise RowError(
                "prompt_too_long", f"{name} is longer than {config.max_prompt_chars} characters"
            )
    refiner_loaded = config.models.refiner is not None
    request_values: dict[str, Any] = {
        "negative_prompt": config.negative_prompt,
        "width": config.width,
        "height": config.height,
        "num_inference_steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "seed": seed,
        "refine": config.refine and refiner_loaded,
        "high_noise_frac": config.high_noise_frac,
        "adapter_scale": config.adapter_scale,
        "adapter": pin.label,
    }
    request_values.update({REQUEST_FIELDS[k]: v for k, v in values.items() if k in REQUEST_FIELDS})
    try:
        request = GenerationRequest.model_validate(request_values)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        code = ERROR_CODES_BY_FIELD.get(where, "bad_value" if where else "steps_out_of_range")
        column = {"num_inference_steps": "steps"}.get(where, where)
        raise RowError(code, f"{column}: {first['msg']}" if column else first["msg"]) from None
    if max(request.width, request.height) > config.max_side:
        raise RowError(
            "bad_size", f"{request.width}x{request.height} exceeds max_side {config.max_side}"
        )
    if request.num_inference_steps > config.max_steps:
        raise RowError(
            "steps_out_of_range",
            f"steps: at most {config.max_steps}, got {request.num_inference_steps}",
        )
    if request.refine and not refiner_loaded:
        raise RowError("bad_value", "refine: the job has no refiner model")
    return request


def planned_row(
    row: int, rid: str, request: GenerationRequest, pin: Pin, config: RenderConfig
) -> dict[str, Any]:
    """Everything the pipeline needs for one row, and what the manifest records of it."""
    planned = {
        "id": rid,
        "row": row,
        "prompt": request.prompt,
        "prompt_2": request.prompt_2,
        "negative_prompt": request.negative_prompt,
        "negative_prompt_2": request.negative_prompt_2,
        "seed": request.seed,
        "width": request.width,
        "height": request.height,
        "steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "refine": request.refine,
        "high_noise_frac": request.high_noise_frac,
        "adapter_scale": request.adapter_scale,
        "adapter": pin.label,
        "adapter_sha256": pin.sha256,
        "base_model": config.models.base,
        "refiner_model": config.models.refiner if request.refine else None,
        "image_path": artifacts.render_image_path(rid),
    }
    planned["request_sha256"] = request_sha256(planned, config)
    return planned


def request_sha256(planned: dict[str, Any], config: RenderConfig) -> str:
    """Hash of everything that decides the image's bytes (not the id, not the time)."""
    models = config.models
    decisive = {k: v for k, v in planned.items() if k not in ("id", "row", "image_path")}
    decisive.update(
        format=RENDER_FORMAT,
        vae=models.vae,
        dtype=models.dtype,
        device=models.device.split(":")[0],
        batch_invariant=models.batch_invariant,
    )
    if models.scheduler != "model":  # absent by default: earlier manifests' hashes stand
        decisive["scheduler"] = models.scheduler
    text = json.dumps(decisive, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def batch_group(planned: dict[str, Any]) -> tuple[Any, ...]:
    """Rows with equal groups may share a batch (`generate.batch_key`, on plan columns)."""
    return (
        planned["adapter"],
        planned["adapter_scale"],
        planned["width"],
        planned["height"],
        planned["steps"],
        planned["guidance_scale"],
        planned["refine"],
        planned["high_noise_frac"] if planned["refine"] else None,
    )


def failed_record(row: int, rid: str | None, error: RowError, values: dict[str, Any]) -> dict:
    """A manifest record for a row that cannot be rendered; what it said is kept."""
    record: dict[str, Any] = {
        "id": rid or f"#{row}",
        "row": row,
        "status": FAILED,
        "error_code": error.code,
        "error": error.message,
    }
    for name in TEXT_COLUMNS:
        if isinstance(values.get(name), str):
            record[name] = values[name]
    if isinstance(values.get("adapter"), str):
        record["adapter"] = values["adapter"]
    return record


# -- what earlier runs finished ----------------------------------------------------------------


@dataclass(frozen=True)
class Earlier:
    """An earlier run's latest record of a row: enough to tell whether it is done."""

    status: str
    request_sha256: str | None
    image_path: str | None
    image_sha256: str | None


def image_matches(out: str, earlier: Earlier) -> bool:
    """The file is there and holds the bytes the manifest recorded."""
    if not earlier.image_path or not earlier.image_sha256:
        return False
    uri = storage.join(out, earlier.image_path)
    try:
        data = storage.read_bytes(uri)
    except (OSError, BluepriError):
        return False
    return hashlib.sha256(data).hexdigest() == earlier.image_sha256


# -- plan files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanFile:
    uri: str
    rows: int


class PlanWriter:
    """Rows to render -> parquet files of at most `block_rows` rows, one batch key each,
    named so that sorting them keeps each key's files together in first-seen order."""

    def __init__(self, folder: str, block_rows: int):
        self.folder = folder
        self.block_rows = block_rows
        self.buffers: dict[tuple, list[dict[str, Any]]] = {}
        self.group_index: dict[tuple, int] = {}
        self.written: Counter[tuple] = Counter()
        self.files: list[PlanFile] = []
        self.rows = 0

    def add(self, planned: dict[str, Any]) -> None:
        key = batch_group(planned)
        self.group_index.setdefault(key, len(self.group_index))
        buffer = self.buffers.setdefault(key, [])
        buffer.append(planned)
        self.rows += 1
        if len(buffer) >= self.block_rows:
            self.flush(key)
        elif sum(len(b) for b in self.buffers.values()) > MAX_BUFFERED_BLOCKS * self.block_rows:
            self.flush(max(self.buffers, key=lambda k: len(self.buffers[k])))

    def flush(self, key: tuple) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self.buffers.pop(key, [])
        if not rows:
            return
        name = f"g{self.group_index[key]:06d}-{self.written[key]:06d}.parquet"
        self.written[key] += 1
        table = pa.Table.from_pylist(rows, schema=plan_schema())
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        uri = storage.join(self.folder, name)
        storage.write_bytes(uri, buffer.getvalue())
        self.files.append(PlanFile(uri, len(rows)))

    def close(self) -> list[PlanFile]:
        for key in list(self.buffers):
            self.flush(key)
        return sorted(self.files, key=lambda f: f.uri)


PLAN_COLUMNS = (
    "id",
    "row",
    "prompt",
    "prompt_2",
    "negative_prompt",
    "negative_prompt_2",
    "seed",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "refine",
    "high_noise_frac",
    "adapter_scale",
    "adapter",
    "adapter_sha256",
    "base_model",
    "refiner_model",
    "image_path",
    "request_sha256",
)


def plan_schema():
    import pyarrow as pa

    schema = artifacts.render_manifest_schema()
    return pa.schema([schema.field(name) for name in PLAN_COLUMNS])


# -- the pass -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """What the planning pass found: counts, the plan files, every row's key and position."""

    files: list[PlanFile] = field(default_factory=list)
    total: int = 0  # catalogue rows
    to_render: int = 0
    skipped: int = 0  # rendered by an earlier run, verified
    failed: Counter[str] = field(default_factory=Counter)
    rows: dict[str, int] = field(default_factory=dict)  # manifest key -> catalogue row
    groups: int = 0


def plan_catalogue(
    catalogue: Catalogue,
    config: RenderConfig,
    pins: AdapterPins,
    default_pin: Pin,
    earlier: dict[str, Earlier],
    out: str,
    plan_dir: str,
    record_failed: Callable[[list[dict[str, Any]]], None],
) -> Plan:
    """Check every row, write the plan files, hand failed rows to `record_failed`."""
    plan = Plan()
    writer = PlanWriter(plan_dir, config.block_rows)
    failed: list[dict[str, Any]] = []
    candidates: list[tuple[dict[str, Any], Earlier]] = []

    def fail(record: dict[str, Any]) -> None:
        plan.failed[record["error_code"]] += 1
        plan.rows[record["id"]] = record["row"]
        failed.append(record)
        if len(failed) >= FAILED_FLUSH_ROWS:
            record_failed(failed.copy())
            failed.clear()

    def settle_candidates() -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            verdicts = list(pool.map(lambda c: image_matches(out, c[1]), candidates))
        for (planned, _), done in zip(candidates, verdicts, strict=True):
            if done:
                plan.skipped += 1
            else:
                writer.add(planned)
        candidates.clear()

    for entry in catalogue.rows():
        plan.total += 1
        rid = None
        try:
            if entry.error is not None:
                raise RowError("unparsable_row", entry.error)
            rid = row_id(entry.values)
            if rid in plan.rows:
                duplicate = RowError("duplicate_id", f"id {rid!r} is also row {plan.rows[rid]}'s")
                rid = None
                raise duplicate
            reference = entry.values.get("adapter")
            if reference is not None and not isinstance(reference, str):
                raise RowError("unknown_adapter", f"adapter {reference!r} is not a reference")
            pin = pins.pin(reference.strip()) if reference else default_pin
            seed = entry.values.get("seed", seed_from_id(rid))
            request = check_request(entry.values, config, pin, seed)
        except RowError as error:
            fail(failed_record(entry.row, rid, error, entry.values))
            continue
        except Exception as err:  # whatever a strange value trips: that row, not the job
            fail(failed_record(entry.row, rid, RowError("bad_value", error_line(err)), {}))
            continue
        planned = planned_row(entry.row, rid, request, pin, config)
        plan.rows[rid] = entry.row
        before = earlier.get(rid)
        if (
            before is not None
            and before.status == artifacts.RENDERED
            and before.request_sha256 == planned["request_sha256"]
            and before.image_path == planned["image_path"]
        ):
            candidates.append((planned, before))
            if len(candidates) >= VERIFY_CHUNK:
                settle_candidates()
        else:
            writer.add(planned)
    settle_candidates()
    if failed:
        record_failed(failed)
    plan.files = writer.close()
    plan.to_render = writer.rows
    plan.groups = len(writer.group_index)
    return plan


def new_plan_dir(out: str) -> str:
    return storage.join(out, PLAN_DIR, uuid.uuid4().hex[:12])
