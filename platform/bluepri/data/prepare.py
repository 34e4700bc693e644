"""`prepare`: any source -> a clean, captioned, encoded training cache, on Ray Data.

Three passes, each streaming with bounded memory:
  1. scan   (Ray tasks): read + decode + validate every file, hash its pixels; only the small
            per-file facts (id, hashes, skip reason) come back to the driver.
  2. dedup  (driver): exact and perceptual duplicates, in sorted source order so the same
            input keeps the same files; the held-out split by sample-id hash.
  3. build  (Ray tasks + the models): decode -> SDXL crop/flip + time ids -> BLIP captions for
            rows without one -> VAE latents and both text encoders' embeddings -> parquet.
            On CPU the models run in the driver (no process to wait for), helped by
            caption+encode actors when more workers are asked for (`model_stage`); on GPUs
            in a caption pool and an encode pool. Where they run never changes a cached byte.
An input that changed between scan and build (vanished, unreadable, other pixels) is left
out of the build, scanned again to confirm it, and counted under CHANGED_SINCE_SCAN.
The manifest accounts for every input: cached rows + skipped (duplicates included) == inputs,
each skip under one of SKIP_REASONS.

The cache lives under `<out>/<fingerprint>`; the manifest (`bluepri.artifacts`) is written
last and atomically, so a cache without a readable one is a crashed run, cleared and rebuilt.
The same fingerprint twice is a no-op.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pydantic import BaseModel

from bluepri import artifacts, storage
from bluepri.artifacts import CacheManifest
from bluepri.config import PrepareConfig
from bluepri.data import decode, sources, transforms
from bluepri.data.columns import stack_column
from bluepri.data.dedup import EXACT_DUPLICATE, NEAR_DUPLICATE, Deduplicator
from bluepri.data.sources import Source, digest, open_source, source_dataset
from bluepri.errors import BluepriError
from bluepri.models.loading import resolve_ref
from bluepri.runtime import ensure_ray

# An input whose bytes changed between the scan and the build: vanished, unreadable, or
# decoding to other pixels. Confirmed by scanning it again, never assumed.
CHANGED_SINCE_SCAN = "changed_since_scan"
# Every reason the manifest counts skipped inputs under.
SKIP_REASONS = (
    *decode.SKIP_REASONS,
    *sources.SKIP_REASONS,
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    CHANGED_SINCE_SCAN,
)
# Config fields that change the cache's content; batch sizes, actors and device do not.
FINGERPRINT_FIELDS = (
    "source_format",
    "image_column",
    "caption_column",
    "hf_split",
    "resolution",
    "center_crop",
    "random_flip",
    "buckets",
    "augment",
    "seed",
    "max_pixels",
    "min_side",
    "max_aspect_ratio",
    "dedup_threshold",
    "captioner",
    "recaption",
    "caption_prefix",
    "caption_suffix",
    "base",
    "vae",
    "encode_text",
    "val_fraction",
    "dtype",
)


class CacheInfo(BaseModel):
    """Where a prepared cache is and what is in it."""

    uri: str
    fingerprint: str
    manifest_uri: str
    reused: bool
    num_rows: int
    num_train: int
    num_val: int
    skipped: dict[str, int]
    duplicates: dict[str, int]
    timings: dict[str, float]


def cache_fingerprint(source: Source, config: PrepareConfig) -> str:
    """Hash of (source listing, preprocessing config, encoder model refs, cache format)."""
    settings = {name: getattr(config, name) for name in FINGERPRINT_FIELDS}
    return digest([artifacts.CACHE_FORMAT, source.kind, source.listing_digest, settings])[:20]


def prepare(config: PrepareConfig, log: Callable[[str], None] = print) -> CacheInfo:
    """Build (or reuse) the training cache for `config`; returns where it is and its counts."""
    transforms.check_resolution(config.resolution)
    source = open_source(config)
    resolve_ref(config.base, "base")  # bad model refs fail before any work
    if config.vae:
        resolve_ref(config.vae, "vae")
    fingerprint = cache_fingerprint(source, config)
    cache_uri = storage.join(config.out, fingerprint)
    existing = artifacts.complete_manifest(cache_uri)
    if existing is not None:
        log(f"cache {cache_uri} is up to date: nothing to do")
        return cache_info(existing, cache_uri, reused=True)
    # A crashed earlier run left shards without a (readable) manifest: start over.
    storage.delete_dir(cache_uri)
    ensure_ray()
    timings: dict[str, float] = {}
    started = time.perf_counter()

    log(f"[prepare 1/3] scanning {source.size} {source.kind} entries from {source.uri}")
    scanned = scan(source, config)
    timings["scan_s"] = time.perf_counter() - started

    log("[prepare 2/3] validating and deduplicating")
    plan = plan_rows(scanned, config, source.skipped)
    timings["dedup_s"] = time.perf_counter() - started - timings["scan_s"]
    require_rows(plan, source)

    needs_captions = config.recaption or any(not has_text(r["caption"]) for r in plan.kept)
    log(
        f"[prepare 3/3] encoding {len(plan.kept)} images"
        + (f", captioning with {config.captioner}" if needs_captions else "")
    )
    if needs_captions:
        resolve_ref(config.captioner, "captioner")
    build_start = time.perf_counter()
    build(source, config, plan, artifacts.shards_uri(cache_uri), needs_captions)
    plan = account_for_changed_inputs(source, config, plan, cache_uri)
    require_rows(plan, source)
    timings["build_s"] = time.perf_counter() - build_start
    timings["total_s"] = time.perf_counter() - started

    manifest = write_manifest(config, source, fingerprint, cache_uri, plan, timings)
    info = cache_info(manifest, cache_uri, reused=False)
    log(f"cache: {info.num_train} train + {info.num_val} val rows, skipped {info.skipped}")
    return info


def has_text(caption: Any) -> bool:
    return isinstance(caption, str) and bool(caption.strip())


def require_rows(plan: Plan, source: Source) -> None:
    if not plan.kept:
        raise BluepriError(f"source {source.uri!r} has no usable images ({plan.skipped})")


# -- pass 1: scan -----------------------------------------------------------------------


def scan_batch(limits: dict[str, Any]) -> Callable[[dict[str, np.ndarray]], dict[str, Any]]:
    """Ray task factory: decode + validate + hash; the bytes do not come back."""

    def scan_fn(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, list] = defaultdict(list)
        for key, blob, caption, read_error in zip(
            batch["key"], batch["image_bytes"], batch["caption"], batch["read_error"], strict=True
        ):
            decoded = read_outcome(read_error, blob, limits)
            out["key"].append(key)
            out["caption"].append(caption if has_text(caption) else None)
            out["skip_reason"].append(decoded.skip_reason or "")
            out["detail"].append(decoded.detail or "")
            if decoded.ok:
                out["sample_id"].append(decode.pixel_sha256(decoded.image)[:32])
                out["phash"].append(decode.perceptual_hash(decoded.image))
                out["size"].append(f"{decoded.image.width}x{decoded.image.height}")
            else:
                out["sample_id"].append("")
                out["phash"].append("")
                out["size"].append("")
        return {k: np.array(v, dtype=object) for k, v in out.items()}

    return scan_fn


def read_outcome(read_error: str, blob: Any, limits: dict[str, Any]) -> decode.Decoded:
    """What reading and decoding one input gave: a source-level skip, or decode's verdict."""
    if read_error:
        return decode.Decoded(skip_reason=read_error, detail="not read")
    return decode.decode_image(bytes(blob), **limits)


def decode_limits(config: PrepareConfig) -> dict[str, Any]:
    return {
        "max_pixels": config.max_pixels,
        "min_side": config.min_side,
        "max_aspect_ratio": config.max_aspect_ratio,
    }


def scan(source: Source, config: PrepareConfig, keys: set[str] | None = None) -> list[dict]:
    """Per-input facts (of every input, or those in `keys`), sorted by source key: a
    deterministic order for dedup."""
    ds = source_dataset(source, config, keys=keys).map_batches(
        scan_batch(decode_limits(config)), batch_size=16
    )
    rows = list(ds.iter_rows())
    return sorted(rows, key=lambda r: r["key"])


# -- pass 2: dedup + split ----------------------------------------------------------------


class Plan(BaseModel):
    """What the build pass encodes, and what was left out and why."""

    kept: list[dict[str, Any]]
    skipped: dict[str, int]
    skipped_files: dict[str, list[str]]
    duplicates: list[dict[str, Any]]


def plan_rows(
    scanned: list[dict[str, Any]],
    config: PrepareConfig,
    source_skipped: dict[str, list[str]] | None = None,
) -> Plan:
    """Drop invalid files and duplicates (first in sorted order wins); assign the split.
    What the listing refused (`source_skipped`) is counted with the rest."""
    dedup = Deduplicator(config.dedup_threshold)
    skipped: Counter[str] = Counter()
    skipped_files: dict[str, list[str]] = defaultdict(list)
    for reason, names in (source_skipped or {}).items():
        skipped[reason] += len(names)
        skipped_files[reason].extend(names)
    duplicates, kept = [], []
    for row in scanned:
        if row["skip_reason"]:
            skipped[row["skip_reason"]] += 1
            skipped_files[row["skip_reason"]].append(row["key"])
            continue
        duplicate = dedup.check(row["key"], row["sample_id"], row["phash"])
        if duplicate is not None:
            skipped[duplicate.reason] += 1
            skipped_files[duplicate.reason].append(row["key"])
            duplicates.append(
                {
                    "key": row["key"],
                    "reason": duplicate.reason,
                    "of": duplicate.of,
                    "distance": duplicate.distance,
                }
            )
            continue
        kept.append({"key": row["key"], "caption": row["caption"], "sample_id": row["sample_id"]})
    assign_split(kept, config.val_fraction)
    return Plan(
        kept=kept, skipped=dict(skipped), skipped_files=dict(skipped_files), duplicates=duplicates
    )


def without_changed(plan: Plan, changed: list[str]) -> Plan:
    """`plan` with the `changed` keys moved from kept to skipped under CHANGED_SINCE_SCAN."""
    if not changed:
        return plan
    gone = set(changed)
    skipped = {**plan.skipped, CHANGED_SINCE_SCAN: len(changed)}
    skipped_files = {**plan.skipped_files, CHANGED_SINCE_SCAN: sorted(changed)}
    kept = [row for row in plan.kept if row["key"] not in gone]
    return plan.model_copy(
        update={"kept": kept, "skipped": skipped, "skipped_files": skipped_files}
    )


def id_fraction(sample_id: str) -> float:
    """A sample id's position in [0, 1): its hash prefix, uniform and stable."""
    return int(sample_id[:12], 16) / 16**12


def assign_split(rows: list[dict[str, Any]], val_fraction: float) -> None:
    """`val` when the id's hash falls below the fraction; at least one val row if asked."""
    for row in rows:
        row["split"] = "val" if id_fraction(row["sample_id"]) < val_fraction else "train"
    if val_fraction > 0 and len(rows) > 1 and not any(r["split"] == "val" for r in rows):
        min(rows, key=lambda r: id_fraction(r["sample_id"]))["split"] = "val"


# -- pass 3: build --------------------------------------------------------------------------


def transform_batch(config: PrepareConfig, lookup: dict[str, dict[str, Any]]):
    """Ray task factory: keep planned rows, decode, augment, crop/flip, SDXL time ids."""
    limits = decode_limits(config)
    buckets = transforms.aspect_buckets(config.resolution) if config.buckets else None

    def transform_fn(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, list] = defaultdict(list)
        for key, blob, read_error in zip(
            batch["key"], batch["image_bytes"], batch["read_error"], strict=True
        ):
            planned = lookup.get(key)
            if planned is None:
                continue
            image = unchanged_image(read_outcome(read_error, blob, limits), planned)
            if image is None:
                continue  # changed since the scan: the driver confirms and counts it
            # Per-sample randomness from (seed, sample id): the same cache on any cluster.
            rng = np.random.default_rng([config.seed, int(planned["sample_id"][:15], 16)])
            if config.augment:
                image = transforms.augment(image, rng)
            bucket = (
                transforms.nearest_bucket(image.height, image.width, buckets) if buckets else None
            )
            prepared = transforms.prepare_image(
                image,
                resolution=config.resolution,
                center_crop=config.center_crop,
                random_flip=config.random_flip,
                rng=rng,
                bucket=bucket,
            )
            out["sample_id"].append(planned["sample_id"])
            out["key"].append(key)
            out["split"].append(planned["split"])
            out["caption"].append(planned["caption"])
            out["image"].append(np.asarray(prepared.image, dtype=np.uint8))
            out["time_ids"].append(np.array(prepared.time_ids, dtype=np.int64))
            out["flipped"].append(prepared.flipped)
        return {k: stack_column(v) for k, v in out.items()}

    return transform_fn


def unchanged_image(decoded: decode.Decoded, planned: dict[str, Any]):
    """The decoded image if it is still the picture the plan was made from, else None."""
    if not decoded.ok or decode.pixel_sha256(decoded.image)[:32] != planned["sample_id"]:
        return None
    return decoded.image


def build(
    source: Source, config: PrepareConfig, plan: Plan, shards_uri: str, needs_captions: bool
) -> None:
    """Stream planned rows through transform -> caption -> encode -> parquet shards.

    Where the models run (`model_place`): in this process (plus helper actors), in one
    fused caption+encode actor pool, or in a caption pool and an encode pool on GPUs.
    """
    import ray
    from ray.data import ActorPoolStrategy

    from bluepri.data.caption import CaptionBatch
    from bluepri.data.encode import EncodeBatch
    from bluepri.data.model_stage import (
        CaptionAndEncode,
        given_captions,
        run_in_driver,
        start_helpers,
    )

    place = model_place(config)
    lookup = {row["key"]: row for row in plan.kept}
    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    encoders = encode_workers(config, place, len(plan.kept), cluster_cpus)
    model_processes = model_process_count(config, encoders, needs_captions, place)
    actor_cpus, task_cpus = stage_cpus(config, model_processes, cluster_cpus)
    ds = source_dataset(source, config, keys=set(lookup), num_cpus=task_cpus).map_batches(
        transform_batch(config, lookup), batch_size=16, num_cpus=task_cpus
    )
    caption_kwargs = {
        "captioner_ref": config.captioner,
        "prefix": config.caption_prefix,
        "suffix": config.caption_suffix,
        "recaption": config.recaption,
        "device": config.device,
        "dtype": config.dtype,
    }
    encode_kwargs = {
        "base_ref": config.base,
        "vae_ref": config.vae,
        "encode_text": config.encode_text,
        "device": config.device,
        "dtype": config.dtype,
    }
    fused_kwargs = {
        "caption": caption_kwargs if needs_captions else None,
        "encode": encode_kwargs,
        "caption_batch_size": config.caption_batch_size,
    }
    if place == DRIVER:
        threads = max(1, int(actor_cpus))
        resources = actor_resources(config, actor_cpus)
        helpers = start_helpers(model_processes - 1, fused_kwargs, shards_uri, threads, resources)
        run_in_driver(
            ds,
            CaptionAndEncode(**fused_kwargs),
            shards_uri,
            batch_size=config.encode_batch_size,
            threads=threads,
            helpers=helpers,
        )
        return
    if place == FUSED_ACTORS:
        ds = ds.map_batches(
            CaptionAndEncode,
            fn_constructor_kwargs=fused_kwargs,
            batch_size=config.encode_batch_size,
            compute=ActorPoolStrategy(size=model_processes),
            **actor_resources(config, actor_cpus),
        )
        ds.write_parquet(shards_uri)
        return
    if needs_captions:
        ds = ds.map_batches(
            CaptionBatch,
            fn_constructor_kwargs=caption_kwargs,
            batch_size=config.caption_batch_size,
            compute=ActorPoolStrategy(size=config.num_caption_actors),
            **actor_resources(config, actor_cpus),
        )
    else:
        ds = ds.map_batches(given_captions, batch_size=64)
    ds = ds.map_batches(
        EncodeBatch,
        fn_constructor_kwargs=encode_kwargs,
        batch_size=config.encode_batch_size,
        compute=ActorPoolStrategy(size=encoders),
        **actor_resources(config, actor_cpus),
    )
    ds.drop_columns(["image"]).write_parquet(shards_uri)


# Where the build's models run (`PrepareConfig.model_stage`, resolved).
DRIVER = "driver"  # in the prepare process: no model process to start
FUSED_ACTORS = "fused_actors"  # one pool of caption+encode actors (CPU: same cores anyway)
SEPARATE_ACTORS = "separate_actors"  # a caption pool and an encode pool (a GPU each)


def model_place(config: PrepareConfig) -> str:
    """DRIVER, FUSED_ACTORS or SEPARATE_ACTORS for `config`.

    "auto" on CPU is DRIVER: the driver starts encoding at once instead of waiting seconds
    for fresh processes to import torch, transformers and diffusers and load the models;
    more model workers than one are helper actors beside it (`run_in_driver`). On GPUs,
    a caption pool and an encode pool, a GPU per actor.
    """
    on_cpu = not config.device.startswith("cuda")
    if config.model_stage == "driver" or (config.model_stage == "auto" and on_cpu):
        return DRIVER
    return FUSED_ACTORS if on_cpu else SEPARATE_ACTORS


# A helper actor is a fresh process that imports torch, transformers and diffusers and loads
# the models (about 4 s of a core) while the driver already encodes. Measured by
# bench/prepare.py on 2 cores (BENCHMARKS.md), it pays from 64 images at 128 px (2.1x the
# single-process loop against 1.5-1.7x without) and more at 512 px (1.7x against 1.2x).
HELPER_MIN_IMAGES = 64


def encode_workers(config: PrepareConfig, place: str, images: int, cluster_cpus: float) -> int:
    """`num_encode_actors`, or when unset: the driver plus one helper actor on CPU for a set
    of HELPER_MIN_IMAGES images or more on a cluster with a CPU for it; otherwise one."""
    if config.num_encode_actors is not None:
        return config.num_encode_actors
    if place == DRIVER and images >= HELPER_MIN_IMAGES and cluster_cpus >= 2:
        return 2
    return 1


def model_process_count(
    config: PrepareConfig, encoders: int, needs_captions: bool, place: str
) -> int:
    """How many model workers (the driver counted in) share the model half of the CPUs."""
    if place in (DRIVER, FUSED_ACTORS):
        return max(encoders, config.num_caption_actors if needs_captions else 1)
    return encoders + (config.num_caption_actors if needs_captions else 0)


def stage_cpus(config: PrepareConfig, model_processes: int, total: float) -> tuple[float, float]:
    """(CPUs per model worker, CPUs per read/transform task) that fit the cluster together.

    Ray Data holds the actors for the whole stream; if they took every CPU, the tasks that
    feed them could never be scheduled and the stream would stall. Model workers share half
    of the CPUs (at most one each); tasks may use the other half.
    """
    task_cpus = min(1.0, total / 2)
    if config.stage_cpus is not None:
        return config.stage_cpus, min(task_cpus, config.stage_cpus)
    return min(1.0, total / 2 / model_processes), task_cpus


def actor_resources(config: PrepareConfig, cpus: float) -> dict[str, float]:
    """A GPU per model actor when the device is one (plus its CPU share)."""
    if config.device.startswith("cuda"):
        return {"num_gpus": 1, "num_cpus": cpus}
    return {"num_cpus": cpus}


# -- manifest ---------------------------------------------------------------------------------


def read_cache_columns(cache_uri: str, columns: list[str]) -> dict[str, list[Any]]:
    """Small columns of the written shards, read back with pyarrow for the manifest (none
    when nothing was written)."""
    import pyarrow.dataset as pads

    if not storage.is_dir(artifacts.shards_uri(cache_uri)):
        return {name: [] for name in columns}
    fs, path = storage.resolve(artifacts.shards_uri(cache_uri))
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns)
    return {name: table.column(name).to_pylist() for name in columns}


def account_for_changed_inputs(
    source: Source, config: PrepareConfig, plan: Plan, cache_uri: str
) -> Plan:
    """Check the written rows against the plan: every row planned, once, with its planned
    sample id. A planned row that is missing must be an input that changed since the scan:
    it is scanned again to confirm, and counted under CHANGED_SINCE_SCAN. Anything else is
    a bug, and the cache is not marked complete."""
    written = read_cache_columns(cache_uri, ["key", "sample_id"])
    planned = {row["key"]: row["sample_id"] for row in plan.kept}
    written_ids = dict(zip(written["key"], written["sample_id"], strict=True))
    if len(written_ids) != len(written["key"]) or any(
        planned.get(key) != sample_id for key, sample_id in written_ids.items()
    ):
        raise RuntimeError("cache rows do not match the plan; refusing to mark it complete")
    missing = set(planned) - set(written_ids)
    if not missing:
        return plan
    for row in scan(source, config, keys=missing):
        if not row["skip_reason"] and row["sample_id"] == planned[row["key"]]:
            raise RuntimeError(
                f"input {row['key']!r} is unchanged but was not cached; refusing to mark the "
                "cache complete"
            )
    return without_changed(plan, sorted(missing))


def caption_stats(captions: list[str]) -> dict[str, float]:
    lengths = [len(c) for c in captions]
    return {
        "count": len(lengths),
        "length_min": min(lengths),
        "length_mean": round(sum(lengths) / len(lengths), 2),
        "length_max": max(lengths),
    }


def write_manifest(
    config: PrepareConfig,
    source: Source,
    fingerprint: str,
    cache_uri: str,
    plan: Plan,
    timings: dict[str, float],
) -> CacheManifest:
    """Summarise the written shards; written last (atomically), it marks the cache complete."""
    cols = read_cache_columns(cache_uri, ["split", "caption", "caption_source", "nan_recomputed"])
    shards = [
        i.path.rsplit("/", 1)[-1] for i in storage.list_files(artifacts.shards_uri(cache_uri))
    ]
    manifest = CacheManifest(
        fingerprint=fingerprint,
        created=datetime.now(timezone.utc).isoformat(),
        source={"uri": source.uri, "kind": source.kind, "entries": source.size},
        config=config.model_dump(),
        models={"base": config.base, "vae": config.vae, "captioner": config.captioner},
        rows=len(cols["split"]),
        splits=dict(Counter(cols["split"])),
        skipped=plan.skipped,
        skipped_files=plan.skipped_files,
        duplicates=plan.duplicates,
        captions={
            **caption_stats(cols["caption"]),
            "sources": dict(Counter(cols["caption_source"])),
        },
        nan_recomputed=int(sum(cols["nan_recomputed"])),
        timings={k: round(v, 3) for k, v in timings.items()},
        shards=shards,
    )
    artifacts.write_manifest(cache_uri, manifest)
    return manifest


def cache_info(manifest: CacheManifest, cache_uri: str, *, reused: bool) -> CacheInfo:
    return CacheInfo(
        uri=cache_uri,
        fingerprint=manifest.fingerprint,
        manifest_uri=artifacts.manifest_uri(cache_uri),
        reused=reused,
        num_rows=manifest.rows,
        num_train=manifest.num_train,
        num_val=manifest.num_val,
        skipped=manifest.skipped,
        duplicates=dict(Counter(d.reason for d in manifest.duplicates)),
        timings={} if reused else manifest.timings,
    )
