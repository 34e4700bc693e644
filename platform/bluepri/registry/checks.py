"""What an artifact must hold before the registry accepts or hands it out.

adapter.json must be the contract's `AdapterInfo` (`bluepri.artifacts`), so that no stored
entry can break a reader later. Only safetensors are ever loaded: a pickle-based weights file
(`.bin`, `.pt`, `.ckpt`, ...) can run arbitrary code when `torch.load` reads it, and
diffusers' `load_lora_weights` falls back to `pytorch_lora_weights.bin` when it finds one,
so such files are refused outright.
"""

from __future__ import annotations

import hashlib
import json
import struct

import pyarrow.fs as pafs

from bluepri.artifacts import ADAPTER_JSON, AdapterInfo, parse_adapter_info
from bluepri.errors import BluepriError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
# safetensors refuses headers over 100 MB itself; a bigger claim means a file that is not one.
MAX_HEADER_BYTES = 100 * 1024 * 1024
CHUNK = 1 << 20


def refuse_pickles(files: list[str], where: str) -> None:
    """Refuse an artifact holding any pickle-based file, wherever it sits."""
    for rel in files:
        if rel.lower().endswith(PICKLE_SUFFIXES):
            raise BluepriError(
                f"{where} holds {rel!r}: pickle-based weights are refused (they can run code "
                "when loaded); only .safetensors are accepted"
            )


def adapter_info(raw: bytes, where: str) -> AdapterInfo:
    """adapter.json as the contract types it, or one line saying why not.

    Also refused: nesting that pydantic parses but will not dump again (it stops at a depth
    of a few hundred), because every reader (`list`, `show`, the CLI) dumps the record.
    """
    adapter = parse_adapter_info(raw, f"{where}: {ADAPTER_JSON}")
    try:
        adapter.model_dump_json()
    except (ValueError, RecursionError):  # pydantic's serialization error is a ValueError
        raise BluepriError(f"{where}: {ADAPTER_JSON} is nested too deeply to be ours") from None
    return adapter


def check_safetensors_header(fs: pafs.FileSystem, path: str, where: str) -> None:
    """Refuse a weights file that is not safetensors (e.g. a pickle renamed .safetensors)."""
    with fs.open_input_file(path) as handle:
        size = handle.size()
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise BluepriError(f"{where}: weights file is not in safetensors format")
        header = handle.read(length)
    try:
        table = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BluepriError(f"{where}: weights file is not in safetensors format") from None
    if not isinstance(table, dict):
        raise BluepriError(f"{where}: weights file is not in safetensors format")


def sha256_of(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_hashed(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> str:
    """Copy one file, returning the sha256 of exactly the bytes written (one pass)."""
    digest = hashlib.sha256()
    with src_fs.open_input_stream(src) as source, dst_fs.open_output_stream(dst) as sink:
        for block in iter(lambda: source.read(CHUNK), b""):
            digest.update(block)
            sink.write(block)
    return digest.hexdigest()


def checksum_mismatch(
    where: str, expected: str, actual: str, refusing: str = "refusing to load"
) -> BluepriError:
    return BluepriError(
        f"checksum mismatch for {where}: weights sha256 is {actual[:16]}..., adapter.json "
        f"says {expected[:16]}...; {refusing} (tampered or corrupted)"
    )
