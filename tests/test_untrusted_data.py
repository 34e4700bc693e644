"""Listing untrusted sources without Ray: odd metadata lines, odd parquet layouts and files,
symlinks that loop or leave the source root. Nothing here may crash, hang or read outside
the folder the user named; every refusal is counted under a reason, or is one clear error.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bluepri.config import PrepareConfig
from bluepri.data.sources import open_source
from bluepri.errors import BluepriError
from odd_corpus import blueprint_drawing


def png_bytes(index: int, size: tuple[int, int] = (96, 80)) -> bytes:
    buffer = io.BytesIO()
    blueprint_drawing(index, size).save(buffer, "PNG")
    return buffer.getvalue()


def config_for(source: Path, tmp_path: Path, **overrides) -> PrepareConfig:
    return PrepareConfig(source=str(source), out=str(tmp_path / "cache"), **overrides)


def image_folder(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(index))
    return folder


def captions_of(source) -> dict[str, str | None]:
    return {entry["key"]: entry["caption"] for entry in source.entries}


def line_numbers(items: list[str]) -> list[int]:
    """`metadata.jsonl:3 (why)` -> 3."""
    return [int(item.split(":", 1)[1].split(" ", 1)[0]) for item in items]


# -- metadata.jsonl (issue 9, 2.2) -------------------------------------------------------------


def test_odd_metadata_lines_are_skipped_with_their_line_numbers(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "set", ["a.png", "b.png", "c.png", "d.png", "e.png"])
    lines = [
        b'\xef\xbb\xbf{"file_name": "a.png", "text": "plan a"}',  # 1: UTF-8 BOM, then fine
        b"",  # 2: blank
        b'{"file_name": "b.png", "text": "plan',  # 3: truncated
        b'{"text": "a row without file_name"}',  # 4
        b'{"file_name": 7, "text": "a number for a name"}',  # 5
        b'{"file_name": "c.png", "text": "caf\xe9"}',  # 6: Latin-1, not UTF-8
        b"[1, 2, 3]",  # 7: not an object
        b'{"file_name": "d.png", "text": "plan d"}',  # 8
        b"   \t",  # 9: whitespace only
        b'{"file_name": "e.png", "text": {"nested": "caption"}}',  # 10: caption not a string
        b"[" * 100_000,  # 11: nested beyond any parser's recursion limit
    ]
    (folder / "metadata.jsonl").write_bytes(b"\r\n".join(lines) + b"\n")
    source = open_source(config_for(folder, tmp_path))
    assert source.kind == "imagefolder"
    assert captions_of(source) == {
        "a.png": "plan a",
        "b.png": None,
        "c.png": None,
        "d.png": "plan d",
        "e.png": None,
    }
    bad = source.skipped["bad_metadata"]
    assert line_numbers(bad) == [3, 4, 5, 6, 7, 10, 11]
    assert all(item.startswith("metadata.jsonl:") for item in bad)


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe{\x00}\x00",  # UTF-16
        b'{"file_name": "a.png", "text": "unfinished',
        b'{"name": "a.png"}\n{"name": "b.png"}\n',
        b"\x00\x01\x02\x03" * 64,
    ],
    ids=["utf16", "one-truncated-line", "no-file-names", "binary"],
)
def test_wholly_unusable_metadata_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    folder = image_folder(tmp_path / "set", ["a.png", "b.png"])
    (folder / "metadata.jsonl").write_bytes(content)
    with pytest.raises(BluepriError) as raised:
        open_source(config_for(folder, tmp_path))
    message = str(raised.value)
    assert "metadata.jsonl" in message and "\n" not in message


def test_unknown_caption_column_is_still_one_clear_error(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "set", ["a.png"])
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n')
    with pytest.raises(BluepriError, match="unknown caption column 'caption'"):
        open_source(config_for(folder, tmp_path, caption_column="caption"))


# -- parquet layouts and files (issue 9, 2.3) --------------------------------------------------


def image_table(indices: list[int], **extra_columns) -> pa.Table:
    return pa.table(
        {
            "image": [png_bytes(i) for i in indices],
            "text": [f"plan {i}" for i in indices],
            **extra_columns,
        }
    )


@pytest.mark.parametrize("with_readme", [False, True], ids=["bare", "hf-repo"])
def test_parquet_files_in_a_subfolder_are_found(tmp_path: Path, with_readme: bool) -> None:
    root = tmp_path / "hf_layout"
    (root / "data").mkdir(parents=True)
    pq.write_table(image_table([0, 1, 2]), root / "data" / "train-00000-of-00001.parquet")
    if with_readme:
        (root / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# A set\n")
    source = open_source(config_for(root, tmp_path))
    assert source.kind == "parquet" and source.size == 3
    assert not source.skipped


def test_corrupt_and_columnless_parquet_files_are_skipped_under_a_reason(tmp_path: Path) -> None:
    root = tmp_path / "set"
    root.mkdir()
    good = root / "b_good.parquet"
    pq.write_table(image_table([0, 1]), good)
    (root / "a_garbage.parquet").write_bytes(b"PAR1" + b"\x13\x37" * 500 + b"PAR1")
    (root / "a_truncated.parquet").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "c_empty.parquet").write_bytes(b"")
    pq.write_table(
        pa.table({"picture": [png_bytes(5)], "caption": ["x"]}), root / "d_other.parquet"
    )
    source = open_source(config_for(root, tmp_path))
    assert source.kind == "parquet" and source.size == 2
    assert sorted(source.skipped["corrupt_parquet"]) == [
        "a_garbage.parquet",
        "a_truncated.parquet",
        "c_empty.parquet",
    ]
    assert source.skipped["missing_columns"] == ["d_other.parquet"]


def test_no_usable_parquet_file_is_one_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "set"
    root.mkdir()
    (root / "a.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"picture": [png_bytes(5)]}), root / "b.parquet")
    with pytest.raises(BluepriError) as raised:
        open_source(config_for(root, tmp_path))
    message = str(raised.value)
    assert "no usable parquet" in message and "\n" not in message


def test_a_single_corrupt_parquet_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "set.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 100)
    with pytest.raises(BluepriError, match="no usable parquet"):
        open_source(config_for(path, tmp_path))


# -- symlinks (issue 9, 2.5) -------------------------------------------------------------------

LIST_IN_A_CHILD = textwrap.dedent(
    """
    import json, sys
    from bluepri.config import PrepareConfig
    from bluepri.data.sources import open_source
    source = open_source(PrepareConfig(source=sys.argv[1], out=sys.argv[2]))
    print(json.dumps(sorted(e["key"] for e in source.entries)))
    """
)


def test_symlink_loops_do_not_make_listing_run_forever(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "set", ["a.png", "sub/b.png"])
    os.symlink("..", root / "sub" / "up")  # two loops: 2**40 paths when followed
    os.symlink("../sub", root / "sub" / "again")
    os.symlink("self.png", root / "self.png")  # a link to itself
    done = subprocess.run(
        [sys.executable, "-c", LIST_IN_A_CHILD, str(root), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["a.png", "sub/b.png"]


def test_links_leaving_the_root_are_not_followed(tmp_path: Path) -> None:
    outside = image_folder(tmp_path / "outside", ["secret.png", "more/x.png"])
    root = image_folder(tmp_path / "set", ["a.png", "sub/b.png"])
    os.symlink(outside / "secret.png", root / "escape.png")
    os.symlink("../../outside/more", root / "sub" / "escape_dir")
    os.symlink(root / "a.png", root / "sub" / "inside_link.png")  # stays inside: fine
    source = open_source(config_for(root, tmp_path))
    assert sorted(e["key"] for e in source.entries) == ["a.png", "sub/b.png", "sub/inside_link.png"]
    assert sorted(source.skipped["outside_root"]) == ["escape.png", "sub/escape_dir"]


def test_metadata_link_leaving_the_root_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.jsonl").write_text('{"file_name": "a.png", "text": "private words"}\n')
    root = image_folder(tmp_path / "set", ["a.png"])
    os.symlink(outside / "private.jsonl", root / "metadata.jsonl")
    source = open_source(config_for(root, tmp_path))
    assert captions_of(source) == {"a.png": None}
    assert source.skipped["outside_root"] == ["metadata.jsonl"]


def test_reading_refuses_a_file_swapped_for_an_outside_link_after_listing(tmp_path: Path) -> None:
    from bluepri.data.sources import read_file_batch

    outside = image_folder(tmp_path / "outside", ["secret.png"])
    root = image_folder(tmp_path / "set", ["a.png", "b.png"])
    source = open_source(config_for(root, tmp_path))
    (root / "b.png").unlink()
    os.symlink(outside / "secret.png", root / "b.png")
    batch = {name: [entry[name] for entry in source.entries] for name in ("key", "path", "caption")}
    read = read_file_batch(source.uri)(batch)
    assert read["image_bytes"][0] == (root / "a.png").read_bytes()
    assert read["image_bytes"][1] == b"" and read["read_error"][1] == "outside_root"
