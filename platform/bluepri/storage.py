"""Where artifacts live: local paths or any pyarrow filesystem URI (s3://, gs://, file://).

Every stage reads and writes artifacts through these few functions, so the same code runs
on a laptop (local folders) and on a cluster (shared object storage).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from bluepri.errors import BluepriError


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    uri = str(uri)
    if not is_uri(uri):
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as err:
        raise BluepriError(f"cannot open storage URI {uri!r}: {err}".splitlines()[0]) from None


def absolute(uri: str | Path) -> str:
    """A URI as is; a local path made absolute (Ray workers and Tune trials run elsewhere)."""
    return str(uri) if is_uri(str(uri)) else str(Path(uri).expanduser().resolve())


def join(uri: str | Path, *parts: str) -> str:
    """Join path parts onto a local path or URI."""
    base = str(uri).rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


def exists(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str | Path) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


STAGING_PREFIX = ".tmp-"


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write a whole file atomically: a reader sees the old bytes or the new, never half.

    Local files go to a staging name beside the target and are renamed over it (removed
    again if the write fails); an object store's PUT of one buffer is atomic already.
    """
    fs, path = resolve(uri)
    folder = path.rsplit("/", 1)[0]
    fs.create_dir(folder, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    staging = f"{folder}/{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        with open(staging, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        if os.path.lexists(staging):
            os.unlink(staging)


def read_json(uri: str | Path) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str | Path, value: Any) -> None:
    write_bytes(uri, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def list_files(uri: str | Path, *, recursive: bool = True) -> list[pafs.FileInfo]:
    """Files (not folders) under a folder, sorted by path."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def list_dirs(uri: str | Path) -> list[str]:
    """Names of the folders directly under a folder (none if it does not exist), sorted."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def delete_dir(uri: str | Path) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def output_folder(path: str | Path) -> Path:
    """Create (if needed) and return a local output folder; a file in the way is an error."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise BluepriError(f"output path {str(path)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BluepriError(f"cannot create output folder {str(path)!r}: {err.strerror}") from None
    return folder
