"""Where artifacts live: local paths or any pyarrow filesystem URI (s3://, gs://, file://).

Every stage reads and writes artifacts through these few functions, so the same code runs
on a laptop (local folders) and on a cluster (shared object storage).
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from dataclasses import dataclass, field
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
    """Files (not folders) under a folder, sorted by path; on a local disk only those that
    stay inside it, without looping (`list_files_within` also says what it left out)."""
    return list_files_within(uri, recursive=recursive).files


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


# -- folders we do not trust: listing and reading that stay inside them --------------------------


class OutsideRoot(OSError):
    """A path that leads, through links, out of the folder it must stay in."""


class TooLarge(OSError):
    """A file larger than its reader accepts."""


@dataclass
class FolderListing:
    """The files under a folder, sorted by path, and what a walk that stays inside it left out
    (relative paths): `outside_root`, links that lead out of the folder, not followed;
    `unreadable`, folders that could not be listed (ending in "/"), links that lead nowhere
    (dangling, looping) and names that are not UTF-8."""

    files: list[pafs.FileInfo]
    outside_root: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files = sorted(self.files, key=lambda i: i.path)
        self.outside_root = sorted(self.outside_root)
        self.unreadable = sorted(self.unreadable)


def list_files_within(uri: str | Path, *, recursive: bool = True) -> FolderListing:
    """The files under a folder. On a local disk, links are never followed out of it and
    links to folders are not entered (so a loop cannot make the walk endless); a link to a
    file inside the folder is listed under its own name. Object stores have no links."""
    fs, path = resolve(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
        return FolderListing([i for i in infos if i.type == pafs.FileType.File])
    return _walk_local(os.path.realpath(path), recursive)


def _walk_local(root: str, recursive: bool) -> FolderListing:
    files: list[pafs.FileInfo] = []
    outside: list[str] = []
    unreadable: list[str] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listed:
                entries = list(listed)
        except OSError:
            if folder == root:
                raise  # the folder asked for: the caller's error to report
            unreadable.append(_printable(os.path.relpath(folder, root)) + "/")
            continue
        for entry in entries:
            relative = os.path.relpath(entry.path, root)
            try:
                entry.name.encode("utf-8")
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not _inside(root, target):
                        outside.append(relative)
                    elif os.path.isfile(target):
                        files.append(_file_info(entry.path, os.stat(target)))
                    elif not os.path.isdir(target):
                        unreadable.append(relative)
                    # A link to a folder inside the root: its files are listed where they are.
                elif entry.is_dir(follow_symlinks=False):
                    if recursive:
                        pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    files.append(_file_info(entry.path, entry.stat(follow_symlinks=False)))
                # Sockets, FIFOs and devices are never files to read (a FIFO would block).
            except (OSError, UnicodeEncodeError):
                unreadable.append(_printable(relative))
    return FolderListing(files, outside, unreadable)


def _file_info(path: str, stat_result: os.stat_result) -> pafs.FileInfo:
    return pafs.FileInfo(
        path, pafs.FileType.File, size=stat_result.st_size, mtime_ns=stat_result.st_mtime_ns
    )


def _inside(root: str, real_path: str) -> bool:
    return real_path == root or real_path.startswith(root.rstrip("/") + "/")


def _printable(name: str) -> str:
    """A file name as text that JSON can hold (undecodable bytes become U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def open_within(root: str | Path, uri: str | Path):
    """A binary file object for `uri`, which must be a regular file inside `root` once every
    link is resolved (OutsideRoot otherwise): what a listing found may have been swapped for
    a link, a folder or a FIFO since."""
    fs, path = resolve(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        return fs.open_input_file(path)
    real = os.path.realpath(path)
    if not _inside(os.path.realpath(resolve(root)[1]), real):
        raise OutsideRoot(f"{uri} leads outside {root}")
    # O_NOFOLLOW: the last step cannot become a link after the check; O_NONBLOCK: opening a
    # FIFO returns at once instead of waiting for a writer.
    handle = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise IsADirectoryError(f"{uri} is not a regular file")
    except OSError:
        os.close(handle)
        raise
    return os.fdopen(handle, "rb")


def read_bytes_within(root: str | Path, uri: str | Path, max_bytes: int) -> bytes:
    """The bytes of a file inside `root` (see `open_within`); TooLarge beyond `max_bytes`."""
    with open_within(root, uri) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"{uri} is larger than {max_bytes} bytes")
    return data
