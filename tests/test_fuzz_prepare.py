"""A seeded fuzz of `prepare` (issue 9, acceptance 3): a few hundred mutated inputs
(truncated, bit-flipped, overwritten and re-wrapped images, odd metadata lines, odd parquet
cells, links out of the folder) go through the whole data stage. Nothing may crash, and the
manifest must account for every input: cached rows + skipped (duplicates included) ==
inputs, each skip under a documented reason.

The pictures are small (64-96 px) and few, so most mutated survivors are near duplicates of
each other and little reaches the encoder: the run stays cheap on two cores.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bluepri.data.prepare import prepare
from odd_corpus import blueprint_drawing, tiny_prepare

pytestmark = pytest.mark.integration
SEED = 20_240_905
FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP", "tif": "TIFF"}

# Bigger batches than other data tests: hundreds of tiny inputs, few encoder calls.
BATCHES = {"caption_batch_size": 16, "encode_batch_size": 16}


def base_pictures(rng: np.random.Generator, count: int = 6) -> list[Image.Image]:
    sizes = [(int(rng.integers(64, 97)), int(rng.integers(64, 97))) for _ in range(count)]
    return [blueprint_drawing(100 + i, size, SEED) for i, size in enumerate(sizes)]


def encoded(picture: Image.Image, suffix: str) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, FORMATS[suffix])
    return buffer.getvalue()


def icon(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "ICO")
    return buffer.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One seeded mutation of `data`: (its name, the mutated bytes)."""
    kind = str(
        rng.choice(
            [
                "truncate",
                "flip_bits",
                "overwrite",
                "header",
                "intact",
                "zero_tail",
                "append",
                "swap",
            ]
        )
    )
    out = bytearray(data)
    if kind == "truncate":
        out = out[: int(rng.integers(0, len(out)))]
    elif kind == "flip_bits":
        for position in rng.integers(0, len(out) * 8, size=int(rng.integers(1, 17))):
            out[position // 8] ^= 1 << (position % 8)
    elif kind == "overwrite":
        start = int(rng.integers(0, len(out)))
        length = int(rng.integers(1, 64))
        out[start : start + length] = rng.integers(0, 256, size=length, dtype=np.uint8).tobytes()
    elif kind == "header":
        head = min(32, len(out))
        out[:head] = rng.integers(0, 256, size=head, dtype=np.uint8).tobytes()
    elif kind == "zero_tail":
        cut = int(rng.integers(0, len(out)))
        out[cut:] = bytes(len(out) - cut)
    elif kind == "append":
        out += rng.integers(0, 256, size=int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    elif kind == "swap":
        half = len(out) // 2
        a, b = sorted(int(x) for x in rng.integers(0, half, size=2))
        out[a:b], out[half + a : half + b] = out[half + a : half + b], out[a:b]
    return kind, bytes(out)


def mutated_images(rng: np.random.Generator, count: int) -> list[tuple[str, bytes]]:
    """`count` (name, bytes): mutations of a few pictures in six formats, plus odd files."""
    pictures = base_pictures(rng)
    images = []
    for i in range(count):
        suffix = str(rng.choice(list(FORMATS)))
        picture = pictures[int(rng.integers(0, len(pictures)))]
        if suffix == "gif":
            picture = picture.quantize(colors=32)
        kind, data = mutate(encoded(picture, suffix), rng)
        images.append((f"{i:03d}_{kind}.{suffix}", data))
    images += [
        ("zz_empty.png", b""),
        ("zz_text.png", b"not a picture\n" * 10),
        ("zz_icon.png", icon(pictures[0])),
    ]
    return images


def metadata_lines(names: list[str], rng: np.random.Generator) -> tuple[bytes, int]:
    """A metadata.jsonl with captions for about half the files and a dozen odd lines, plus
    the number of lines that must be counted as bad."""
    good = [
        json.dumps({"file_name": name, "text": f"blueprint {i}"}).encode()
        for i, name in enumerate(names)
        if rng.random() < 0.5
    ]
    odd_but_fine = [
        b"",
        b"   ",
        json.dumps({"file_name": "no/such/file.png", "text": "orphan line"}).encode(),
        json.dumps({"file_name": names[1], "text": "\u202eRTL \u0000 nul \U0001f4d0"}).encode(),
        json.dumps({"file_name": names[2], "text": "long " * 5000}).encode(),
        json.dumps({"file_name": names[3], "text": None}).encode(),
    ]
    bad = [
        b'{"file_name": "' + names[4].encode() + b'", "text": "cut',
        b'{"text": "no file name"}',
        b'{"file_name": 12, "text": "number"}',
        b'{"file_name": null}',
        b'{"file_name": ["a.png"]}',
        b'{"file_name": "' + names[5].encode() + b'", "text": "\xff\xfe latin"}',
        b"[1, 2]",
        b"42",
        b"[" * 50_000,
        b'{"file_name": "' + names[6].encode() + b'", "text": {"caption": "nested"}}',
    ]
    lines = good + odd_but_fine + bad
    order = rng.permutation(len(lines))
    body = b"\n".join(lines[i] for i in order)
    return b"\xef\xbb\xbf" + body + b"\n", len(bad)


def odd_parquet_files(folder: Path, rng: np.random.Generator) -> int:
    """Three parquet files of mutated images and odd cells; returns how many rows they hold."""
    folder.mkdir(parents=True)
    images = [data for _, data in mutated_images(rng, 50)]
    cells = [*images, None, b"", b"\x00" * 7]
    captions = [None if rng.random() < 0.3 else f"plan {i}" for i in range(len(cells))]
    pq.write_table(pa.table({"image": cells, "text": captions}), folder / "a.parquet")
    structs = [{"bytes": data, "path": f"p{i}.png"} for i, data in enumerate(images[:10])]
    structs += [{"bytes": None, "path": "/etc/passwd"}, None]
    pq.write_table(
        pa.table({"image": structs, "text": [str(i) for i in range(len(structs))]}),
        folder / "b.parquet",
    )
    strings = ["abc", "", "/etc/passwd", "\U0001f4d0" * 10]
    pq.write_table(pa.table({"image": strings, "text": [1, 2, 3, 4]}), folder / "c.parquet")
    return len(cells) + len(structs) + len(strings)


def assert_every_input_accounted_for(info, inputs: int) -> dict:
    from bluepri.data.prepare import SKIP_REASONS

    manifest = json.loads(Path(info.manifest_uri).read_bytes())
    assert manifest["rows"] == info.num_rows > 0
    assert manifest["rows"] + sum(manifest["skipped"].values()) == inputs, manifest["skipped"]
    assert set(manifest["skipped"]) <= set(SKIP_REASONS), manifest["skipped"]
    for reason, count in manifest["skipped"].items():
        assert len(manifest["skipped_files"][reason]) == count, reason
    return manifest


def test_fuzzed_image_folder_is_fully_accounted_for(ray_session, tiny_models, tmp_path: Path):
    rng = np.random.default_rng(SEED)
    folder = tmp_path / "fuzz"
    folder.mkdir()
    images = mutated_images(rng, 200)
    for name, data in images:
        (folder / name).write_bytes(data)
    metadata, bad_lines = metadata_lines([name for name, _ in images], rng)
    (folder / "metadata.jsonl").write_bytes(metadata)
    (tmp_path / "outside.png").write_bytes(images[0][1])
    os.symlink(tmp_path / "outside.png", folder / "zz_link_out.png")  # counted, not read
    os.symlink(".", folder / "zz_loop")  # a loop: not entered
    os.symlink("zz_dangling.png", folder / "zz_dangling.png")  # counted as unreadable
    info = prepare(
        tiny_prepare(folder, tmp_path / "cache", **BATCHES),
        log=lambda _: None,
    )
    manifest = assert_every_input_accounted_for(info, len(images) + bad_lines + 2)
    assert manifest["skipped"]["bad_metadata"] == bad_lines
    assert manifest["skipped_files"]["outside_root"] == ["zz_link_out.png"]
    assert manifest["skipped_files"]["unreadable_file"] == ["zz_dangling.png"]
    assert len(manifest["skipped"]) >= 5  # the mutations reach many different reasons


def test_fuzzed_parquet_cells_are_fully_accounted_for(ray_session, tiny_models, tmp_path: Path):
    rng = np.random.default_rng(SEED + 1)
    rows = odd_parquet_files(tmp_path / "fuzz", rng)
    info = prepare(
        tiny_prepare(
            tmp_path / "fuzz", tmp_path / "cache", caption_batch_size=16, encode_batch_size=16
        ),
        log=lambda _: None,
    )
    manifest = assert_every_input_accounted_for(info, rows)
    assert manifest["skipped"]["bad_image_cell"] >= 6
