"""The real drawings FID/KID compare generated images with: held-out, decoded safely, fitted.

By default the cache's held-out (val) rows' source images, read back from the image folder
the cache was prepared from (a row's key is its path there): the drawings the adapter never
trained on. `reference_images` names any other folder of drawings. Files are untrusted:
read within their root only, decoded with the data stage's checks (size bombs, truncated
files), and skipped with a reason, never a crash. Each is centre-cropped to the generated
aspect and resized to the generated size, so both sides are scored alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from PIL import Image, ImageOps

from bluepri import artifacts, storage
from bluepri.config import EvalConfig

IMAGE_FOLDER_KINDS = ("imagefolder", "folder")


def reference_source(
    config: EvalConfig, manifest: artifacts.CacheManifest
) -> tuple[str, list[str]] | None:
    """(root, image paths within it) of the real drawings; None when there is no folder."""
    if config.reference_images:
        root = storage.absolute(config.reference_images)
        return root, folder_images(root)
    if manifest.source is not None and manifest.source.kind in IMAGE_FOLDER_KINDS:
        return manifest.source.uri, held_out_keys(config.cache)
    return None


def fitted_drawings(
    root: str, keys: list[str], width: int, height: int, skipped: Counter
) -> Iterator[Image.Image]:
    """The drawings one at a time, centre-cropped and resized to width x height; what cannot
    be read is counted in `skipped` by reason (a stream: 5,000 drawings never sit in memory)."""
    for key in keys:
        image, reason = read_drawing(root, key)
        if image is None:
            skipped[reason] += 1
            continue
        yield ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)


def held_out_keys(cache_uri: str) -> list[str]:
    """The val rows' source keys (paths within the source folder), sorted, unique."""
    import pyarrow.compute as pc

    table = artifacts.shard_dataset(cache_uri).to_table(columns=["key", "split"])
    table = table.filter(pc.equal(table.column("split"), "val"))
    return sorted({k for k in table.column("key").to_pylist() if isinstance(k, str)})


def folder_images(root: str) -> list[str]:
    """Image files under `root` (links out of it are not followed), relative, sorted."""
    from bluepri.data.sources import IMAGE_SUFFIXES

    listing = storage.list_files_within(root)
    base = storage.resolve(root)[1].rstrip("/") + "/"
    return [
        info.path[len(base) :]
        for info in listing.files
        if info.path.lower().endswith(IMAGE_SUFFIXES) and info.path.startswith(base)
    ]


def read_drawing(root: str, key: str) -> tuple[Any, str]:
    """One decoded RGB drawing, or (None, why it was skipped)."""
    from bluepri.data.decode import decode_image
    from bluepri.data.sources import read_image_file

    data, problem = read_image_file(root, storage.join(root, key))
    if problem:
        return None, problem
    decoded = decode_image(data)
    if not decoded.ok:
        return None, decoded.skip_reason or "unreadable"
    return decoded.image, ""
