"""Exclusive create: the one primitive that lets many writers share a registry safely.

`create_file(fs, path, data)` and `create_dir(fs, path)` make `path` only if nothing is there
yet and say whether THIS call made it: of any number of concurrent callers for one path, at
most one is told True. The registry claims each new version folder and each history event
this way, taking the next number when it loses (`first_created`), so no writer overwrites
another's work and nothing is ever read, modified and written back.

Local disks (pyarrow's LocalFileSystem, which `file://` URIs resolve to; NFS included): the
kernel decides. `os.mkdir` fails when the folder exists. A file is written whole under a
staging name beside the target, then hard-linked to it; `link` fails when the target exists,
and a reader sees no file or all of it, never half.

Any other pyarrow filesystem (S3, GCS): pyarrow exposes no conditional write, so a claim
protocol that needs only put, list and delete, on a store where a listing shows every write
that finished before it began (S3 and GCS list with strong consistency):

    1. write the claim <dir>/.claims/<target>.<uuid>
    2. list the claims for <target>: go on only if ours is the only one
    3. go on only if <target> does not exist yet
    4. create <target>, then delete the claim (a writer that stops at 2 or 3 deletes it then)

Why at most one wins: say A and B both won, and A's claim was written first. B listed after
writing its own claim, so after A's was written, and did not see it: A had deleted its claim
already. A deletes its claim only after losing or, having won, after creating the target; so
the target existed before B listed, and B, checking after its listing (step 3), lost.

A claim left behind by a crashed writer blocks only that one target; the registry's writers
take the next number on any loss, so a stale claim costs a number, never progress. Two
writers that see each other's claims both lose, and each pauses a random few milliseconds
before its next number, so that they do not keep colliding in lock-step.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable

import pyarrow.fs as pafs

from bluepri.errors import BluepriError
from bluepri.storage import STAGING_PREFIX

CLAIMS_DIR = ".claims"
MAX_TRIES = 1000
# Rivals that saw each other both lose; a random pause up to this breaks their lock-step.
COLLISION_PAUSE_S = 0.01


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def create_dir(fs: pafs.FileSystem, path: str) -> bool:
    """Create the folder `path` (its parent must exist) unless it exists; True if this call
    created it."""
    if is_local(fs):
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
        return True
    return claim_then_create(fs, path, lambda: fs.create_dir(path, recursive=True))


def create_file(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """Create the file `path` holding `data` unless it exists; True if this call created it.
    Readers see no file or the whole of it."""
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if is_local(fs):
        return link_into_place(path, data)
    return claim_then_create(fs, path, lambda: write_file(fs, path, data))


def write_file(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write `path` whole, replacing any file there, so that no reader sees half of it: staged
    beside the target, then renamed (on object stores a move of a complete object)."""
    staging = staging_path(path)
    try:
        if is_local(fs):
            write_synced(staging, data)
            os.replace(staging, path)
        else:
            with fs.open_output_stream(staging) as stream:
                stream.write(data)
            fs.move(staging, path)
    finally:
        discard(fs, staging)


def first_created(create: Callable[[int], bool], start: int, what: str) -> int:
    """The first number from `start` on for which `create(number)` wins."""
    for number in range(start, start + MAX_TRIES):
        if create(number):
            return number
    raise BluepriError(f"could not claim a new {what} after {MAX_TRIES} tries")


def link_into_place(path: str, data: bytes) -> bool:
    staging = staging_path(path)
    try:
        write_synced(staging, data)
        os.link(staging, path)
    except FileExistsError:
        return False
    finally:
        if os.path.lexists(staging):
            os.unlink(staging)
    return True


def claim_then_create(fs: pafs.FileSystem, target: str, create: Callable[[], None]) -> bool:
    """The claim protocol of the module docstring: `create()` runs only for the one winner."""
    if fs.get_file_info(target).type != pafs.FileType.NotFound:
        return False  # the common loss, found without writing a claim
    folder, name = posixpath.split(target)
    claims = f"{folder}/{CLAIMS_DIR}"
    mine = f"{claims}/{name}.{uuid.uuid4().hex}"
    try:
        fs.create_dir(claims, recursive=True)
        with fs.open_output_stream(mine) as stream:
            stream.write(b"")
        if claimants(fs, claims, name) != [mine]:
            time.sleep(random.uniform(0, COLLISION_PAUSE_S))
            return False
        if fs.get_file_info(target).type != pafs.FileType.NotFound:
            return False
        create()
        return True
    finally:
        # A claim that cannot be deleted is harmless (it blocks only this target, which the
        # registry's writers then skip); failing here would report a won create as lost.
        with contextlib.suppress(OSError):
            fs.delete_file(mine)


def claimants(fs: pafs.FileSystem, claims: str, name: str) -> list[str]:
    """Paths of every claim on `name` now in the claims folder."""
    pattern = re.compile(rf"{re.escape(name)}\.[0-9a-f]{{32}}")
    selector = pafs.FileSelector(claims, allow_not_found=True)
    return sorted(i.path for i in fs.get_file_info(selector) if pattern.fullmatch(i.base_name))


def staging_path(path: str) -> str:
    return f"{posixpath.dirname(path)}/{STAGING_PREFIX}{uuid.uuid4().hex}"


def write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def discard(fs: pafs.FileSystem, path: str) -> None:
    """Delete a file of ours if it is there (cleanup after success or failure)."""
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)
