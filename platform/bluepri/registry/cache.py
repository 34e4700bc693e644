"""Local copies of versions stored under a remote root: content-addressed and immutable.

    <cache_dir>/<sha16 of the root URI>/<name>/<version>-<sha16 of its adapter.json>/

A copy is built under a unique staging name and renamed into place whole, and never changed
after: any number of processes can read it while others build theirs, and a process that
loses the rename to another simply uses the winner's copy. The folder name carries the digest
of the adapter.json it was built from, so a copy never stands for other bytes than its name
says. A damaged copy (a hand edit, a disk error) is first renamed to a unique trash name, one
atomic step that no concurrent reader or builder can trip over, and then rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs

from bluepri.artifacts import ADAPTER_JSON, WEIGHTS_NAME
from bluepri.registry.checks import PICKLE_SUFFIXES, sha256_of
from bluepri.storage import STAGING_PREFIX

TRASH_PREFIX = ".trash-"


def copy_folder(cache_root: Path, name: str, version: str, adapter_json: bytes) -> Path:
    digest = hashlib.sha256(adapter_json).hexdigest()[:16]
    return cache_root / name / f"{version}-{digest}"


def is_intact(folder: Path, adapter_json: bytes, weights_sha256: str) -> bool:
    """Whether a copy holds exactly the checked adapter.json and weights, and no pickle."""
    weights, info = folder / WEIGHTS_NAME, folder / ADAPTER_JSON
    if not (weights.is_file() and info.is_file()) or info.read_bytes() != adapter_json:
        return False
    if any(p.name.lower().endswith(PICKLE_SUFFIXES) for p in folder.rglob("*")):
        return False  # planted next to the weights, diffusers would fall back to it
    return sha256_of(pafs.LocalFileSystem(), str(weights)) == weights_sha256


def remove_if_damaged(folder: Path, adapter_json: bytes, weights_sha256: str) -> None:
    """Take a copy that is there but not intact out of the way: one rename to a unique trash
    name, then delete. Absent is not damaged: another process may be renaming its copy in."""
    try:
        seen = os.lstat(folder)
    except FileNotFoundError:
        return
    if is_intact(folder, adapter_json, weights_sha256):
        return  # another process's good copy arrived since the caller looked
    trash = folder.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return  # another process moved it first
    if not os.path.samestat(os.lstat(trash), seen):
        # Not the damaged copy we judged: another process replaced it meanwhile; put it back.
        with contextlib.suppress(OSError):
            os.rename(trash, folder)
            return
    shutil.rmtree(trash, ignore_errors=True)


def build_in_place(folder: Path, build: Callable[[Path], None]) -> None:
    """`build(staging)` under a unique name, renamed to `folder`. A rename that finds another
    process's copy already there leaves that copy be: the caller checks what it got."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        build(staging)
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
