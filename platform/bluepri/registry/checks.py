"""What an artifact must hold before the registry accepts or hands it out.

Only safetensors are ever loaded: a pickle-based weights file (`.bin`, `.pt`, `.ckpt`, ...)
can run arbitrary code when `torch.load` reads it, and diffusers' `load_lora_weights` falls
back to `pytorch_lora_weights.bin` when it finds one, so such files are refused outright.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from typing import Any

import pyarrow.fs as pafs

from bluepri.errors import BluepriError

# The artifact contract's file names (same values as bluepri.train.artifact and
# bluepri.models.lora; not imported from there, because those packages pull in Ray and torch).
ADAPTER_JSON = "adapter.json"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
SHA256 = re.compile(r"[0-9a-f]{64}")
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


def expected_weights(info: Any, where: str) -> tuple[str, str]:
    """(weights file, sha256) that adapter.json promises; refuses anything malformed."""
    weights = info.get("weights") if isinstance(info, dict) else None
    if not isinstance(weights, dict):
        raise BluepriError(f"{where}: {ADAPTER_JSON} has no 'weights' entry")
    rel, digest = weights.get("file"), weights.get("sha256")
    # The contract's one name: vanilla `load_lora_weights(folder)` looks for exactly this file.
    if rel != WEIGHTS_NAME:
        raise BluepriError(f"{where}: weights file must be {WEIGHTS_NAME!r}, not {rel!r}")
    if not isinstance(digest, str) or not SHA256.fullmatch(digest):
        raise BluepriError(f"{where}: {ADAPTER_JSON} weights.sha256 is not a sha256 hex digest")
    return rel, digest


def parse_adapter_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        info = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BluepriError(f"{where}: {ADAPTER_JSON} is not valid JSON ({err})") from None
    if not isinstance(info, dict):
        raise BluepriError(f"{where}: {ADAPTER_JSON} must hold a JSON object")
    return info


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
