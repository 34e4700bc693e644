"""`prepare` on the session's local Ray with untrusted input (issue 9): repeated image bytes in
table sources, odd parquet cells, files that change between the scan and the build, a
half-written manifest. No crash; every input is cached or counted under a reason.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bluepri import artifacts, storage
from bluepri.data import prepare as prepare_module
from bluepri.data.prepare import prepare
from bluepri.data.sources import open_source
from odd_corpus import blueprint_drawing, tiny_prepare

pytestmark = pytest.mark.integration


def png_bytes(index: int, size: tuple[int, int] = (96, 80)) -> bytes:
    buffer = io.BytesIO()
    blueprint_drawing(index, size).save(buffer, "PNG")
    return buffer.getvalue()


def manifest_of(info) -> dict:
    return json.loads(Path(info.manifest_uri).read_bytes())


def cached_keys(info) -> list[str]:
    table = artifacts.shard_dataset(info.uri).to_table(columns=["key"])
    return table.column("key").to_pylist()


def assert_counts_add_up(manifest: dict, inputs: int) -> None:
    assert manifest["rows"] + sum(manifest["skipped"].values()) == inputs, manifest["skipped"]
    for reason, count in manifest["skipped"].items():
        assert len(manifest["skipped_files"][reason]) == count, reason


# -- 2.1: the same image bytes twice in a table source ------------------------------------------


@pytest.mark.parametrize("source_format", ["parquet", "hf"])
def test_repeated_image_bytes_in_a_table_are_one_row_and_a_duplicate(
    ray_session, tiny_models, tmp_path: Path, monkeypatch, source_format: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    images = [png_bytes(0), png_bytes(1), png_bytes(0), png_bytes(2), png_bytes(1)]
    folder = tmp_path / "set"
    folder.mkdir()
    table = pa.table({"image": images, "text": [f"plan {i}" for i in range(len(images))]})
    pq.write_table(table, folder / "train.parquet")
    config = tiny_prepare(folder, tmp_path / "cache", source_format=source_format)
    info = prepare(config, log=lambda _: None)
    assert info.num_rows == 3 and info.duplicates == {"exact_duplicate": 2}
    keys = cached_keys(info)
    assert len(set(keys)) == len(keys) == 3
    assert_counts_add_up(manifest_of(info), len(images))


# -- 2.3: parquet in a subfolder, with corrupt files and odd cells -----------------------------


def test_odd_parquet_files_and_cells_are_skipped_under_a_reason(
    ray_session, tiny_models, tmp_path: Path
) -> None:
    root = tmp_path / "hf_repo"
    data = root / "data"
    data.mkdir(parents=True)
    (root / "README.md").write_text("# a dataset card\n")
    good = [png_bytes(i) for i in range(3)]
    pq.write_table(
        pa.table(
            {"image": [*good, None, b"", b"not an image"], "text": ["a", "b", "c", "d", "e", "f"]}
        ),
        data / "train-00000-of-00006.parquet",
    )
    pq.write_table(
        pa.table({"image": ["abc", "/etc/passwd"], "text": ["g", "h"]}),
        data / "train-00001-of-00006.parquet",
    )
    pq.write_table(
        pa.table({"image": [-1, 2**62], "text": ["i", "j"]}), data / "train-00002-of-00006.parquet"
    )
    pq.write_table(
        pa.table(
            {
                "image": [{"bytes": "abc", "path": "x.png"}, {"bytes": None, "path": "y.png"}],
                "text": ["k", "l"],
            }
        ),
        data / "train-00003-of-00006.parquet",
    )
    hf_image_structs = [  # HF's Image feature: {bytes, path}; a path alone is never read
        {"bytes": png_bytes(7), "path": "seven.png"},
        {"bytes": None, "path": "/etc/passwd"},
    ]
    pq.write_table(
        pa.table({"image": hf_image_structs, "text": ["m", "n"]}),
        data / "train-00004-of-00006.parquet",
    )
    (data / "train-00005-of-00006.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    info = prepare(tiny_prepare(root, tmp_path / "cache"), log=lambda _: None)
    manifest = manifest_of(info)
    assert info.num_rows == 4
    assert manifest["skipped"] == {
        "bad_image_cell": 8,
        "empty_file": 1,
        "not_an_image": 1,
        "corrupt_parquet": 1,
    }
    assert manifest["skipped_files"]["corrupt_parquet"] == ["data/train-00005-of-00006.parquet"]
    assert_counts_add_up(manifest, 6 + 2 + 2 + 2 + 2 + 1)


# -- 2.4: files that vanish or change between the scan and the build --------------------------


@pytest.mark.parametrize("model_stage", ["driver", "actors"])
def test_files_changed_between_scan_and_build_are_counted_not_fatal(
    ray_session, tiny_models, tmp_path: Path, monkeypatch, model_stage
) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(7):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    original_plan_rows = prepare_module.plan_rows

    def plan_then_change_the_files(*args, **kwargs):
        plan = original_plan_rows(*args, **kwargs)
        (folder / "0.png").unlink()  # vanished
        (folder / "1.png").unlink()
        (folder / "1.png").mkdir()  # unreadable: a folder now
        data = (folder / "2.png").read_bytes()
        (folder / "2.png").write_bytes(data[: len(data) // 2])  # truncated
        (folder / "3.png").write_bytes(png_bytes(30))  # a different picture
        (folder / "4.png").write_bytes(b"")  # emptied
        return plan

    monkeypatch.setattr(prepare_module, "plan_rows", plan_then_change_the_files)
    config = tiny_prepare(folder, tmp_path / "cache", model_stage=model_stage)
    info = prepare(config, log=lambda _: None)
    manifest = manifest_of(info)
    assert sorted(cached_keys(info)) == ["5.png", "6.png"]
    assert manifest["skipped"] == {"changed_since_scan": 5}
    assert sorted(manifest["skipped_files"]["changed_since_scan"]) == [
        "0.png",
        "1.png",
        "2.png",
        "3.png",
        "4.png",
    ]
    assert manifest["rows"] == 2 and sum(manifest["splits"].values()) == 2
    assert_counts_add_up(manifest, 7)


# -- 2.11: a half-written manifest means "rebuild" --------------------------------------------


def test_a_half_written_manifest_means_rebuild(ray_session, tiny_models, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    config = tiny_prepare(folder, tmp_path / "cache")
    cache = Path(config.out, prepare_module.cache_fingerprint(open_source(config), config))
    (cache / "shards").mkdir(parents=True)
    (cache / "shards" / "half.parquet").write_bytes(b"PAR1")
    (cache / "manifest.json").write_bytes(b'{"format": 1, "fingerprint": "ab')  # a crash mid-write
    info = prepare(config, log=lambda _: None)
    assert not info.reused and info.uri == str(cache) and info.num_rows == 3
    assert artifacts.complete_manifest(info.uri) is not None
    assert sorted(cached_keys(info)) == ["0.png", "1.png", "2.png"]
    assert prepare(config, log=lambda _: None).reused
    assert not any(p.name.startswith(storage.STAGING_PREFIX) for p in cache.iterdir())
