"""The writer stage: pixels -> PNG with the generation metadata -> a file, atomically.

PNG text chunks carry how the image was made: `parameters` (the one-line summary other
tools read) and `bluepri` (JSON: prompts, seed, size, steps, guidance, denoising split,
adapter name@version + sha256, model refs). Nothing in them varies between runs (no times,
no worker ids), so a rerun writes the same bytes. The image data is PIL's PNG encoding with
its defaults, exactly what the service returns: without the text chunks (`strip_metadata`)
the file IS the service's response. Files are written under a `.tmp-` name and renamed
(`storage.write_bytes`): a crash never leaves a partial file under a final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
from typing import Any

import numpy as np

from bluepri import storage
from bluepri.artifacts import FAILED, RENDERED
from bluepri.errors import error_line
from bluepri.render.actors import unpack_pixels
from bluepri.render.plan import PLAN_COLUMNS
from bluepri.telemetry import count_failed, count_rendered

TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What a PNG carries about how it was made: the plan's columns but the row's bookkeeping.
METADATA_KEYS = tuple(
    c for c in PLAN_COLUMNS if c not in ("id", "row", "image_path", "request_sha256")
)


def metadata(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row.get(key) for key in METADATA_KEYS}


def parameters_text(meta: dict[str, Any]) -> str:
    """The widely read `parameters` chunk: prompt, negative prompt, then settings."""
    lines = [meta["prompt"] or ""]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    settings = [
        f"Steps: {meta['steps']}",
        f"CFG scale: {meta['guidance_scale']}",
        f"Seed: {meta['seed']}",
        f"Size: {meta['width']}x{meta['height']}",
        f"Model: {meta['base_model']}",
    ]
    if meta.get("refine"):
        settings.append(f"Refiner: {meta['refiner_model']}")
        settings.append(f"Denoising split: {meta['high_noise_frac']}")
    if meta.get("adapter"):
        settings.append(f"Lora: {meta['adapter']} ({(meta['adapter_sha256'] or '')[:12]})")
    if meta.get("prompt_2"):
        settings.append(f"Prompt 2: {json.dumps(meta['prompt_2'], ensure_ascii=False)}")
    return "\n".join([*lines, ", ".join(settings)])


def encode_png(pixels: np.ndarray, meta: dict[str, Any]) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_text(meta))  # iTXt (UTF-8) when not Latin-1
    info.add_text("bluepri", json.dumps(meta, sort_keys=True, ensure_ascii=False))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) of a PNG, in order."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    chunks, position = [], len(PNG_SIGNATURE)
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        chunks.append((kind, data[position : position + 12 + length]))
        position += 12 + length
    return chunks


def strip_metadata(data: bytes) -> bytes:
    """The PNG without its text chunks: the bytes of the same image saved without metadata."""
    kept = [chunk for kind, chunk in png_chunks(data) if kind not in TEXT_CHUNKS]
    return PNG_SIGNATURE + b"".join(kept)


def read_metadata(data: bytes) -> dict[str, Any]:
    """The `bluepri` JSON of a rendered PNG."""
    from PIL import Image

    return json.loads(Image.open(io.BytesIO(data)).text["bluepri"])


def write_images(out: str):
    """Ray task factory: each row's pixels -> PNG file; the block -> manifest records."""

    def write_fn(batch: Any) -> Any:
        from bluepri.render.manifest import as_table

        records = []
        for row in batch.to_pylist():
            pixels = row.pop("pixels", None)
            row.pop("latents", None)
            record = {**row, "status": FAILED}
            if record.get("error_code") is None and pixels is None:
                record["error_code"], record["error"] = "render_error", "no image came back"
            if record.get("error_code") is None:
                started = time.perf_counter()
                try:
                    data = encode_png(unpack_pixels(pixels), metadata(record))
                    storage.write_bytes(storage.join(out, record["image_path"]), data)
                except Exception as err:  # a full disk fails its rows, said so
                    record["error_code"], record["error"] = "write_error", error_line(err)
                else:
                    record["status"] = RENDERED
                    record["image_sha256"] = hashlib.sha256(data).hexdigest()
                    record["seconds"] = (record.get("seconds") or 0.0) + (
                        time.perf_counter() - started
                    )
            if record["status"] == FAILED:
                record["image_path"] = record["image_sha256"] = None
                count_failed(record["error_code"])
            else:
                count_rendered(record.get("adapter"), record["seconds"])
            records.append(record)
        return as_table(records)

    return write_fn
