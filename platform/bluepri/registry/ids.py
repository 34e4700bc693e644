"""Adapter names, versions and file names: what may become a path inside the registry root.

Every id is checked here before it is joined onto a path, so `../x`, `a/b`, `/etc`, `..`,
a leading dot (hidden or staging folders) or a reserved word never reach the filesystem.
"""

from __future__ import annotations

import re

from bluepri.errors import BluepriError

MAX_ID_LENGTH = 100
# Letters, digits and -_. only, starting with a letter or digit: no separators, no
# absolute paths, no hidden names. `..` inside an id is refused separately below.
ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID_LENGTH - 1}}}")
VERSION_NUMBER = re.compile(r"v(\d+)")
# Words `get` reads as aliases, and what sits next to the version folders: the history
# folder and the older layout's log (still read).
CHAMPION = "champion"
LATEST = "latest"
HISTORY_DIR = "history"
LEGACY_HISTORY = "history.jsonl"
RESERVED_VERSIONS = frozenset({CHAMPION, LATEST, HISTORY_DIR, LEGACY_HISTORY})
ID_RULE = (
    f"1-{MAX_ID_LENGTH} letters, digits, '-', '_' or '.', starting with a letter or digit, "
    "no '..', no slashes"
)


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and bool(ID_PATTERN.fullmatch(value)) and ".." not in value


def check_name(name: object) -> str:
    """An adapter name, or a BluepriError saying why not."""
    if not is_valid_id(name):
        raise BluepriError(f"invalid adapter name {name!r}: use {ID_RULE}")
    return name  # type: ignore[return-value]


def check_version(version: object) -> str:
    """A concrete version id (not an alias), or a BluepriError saying why not."""
    if not is_valid_id(version):
        raise BluepriError(f"invalid adapter version {version!r}: use {ID_RULE}")
    if version in RESERVED_VERSIONS:
        raise BluepriError(f"invalid adapter version {version!r}: the word is reserved")
    return version  # type: ignore[return-value]


def check_relative_file(path: object) -> str:
    """A file path inside an artifact (`README.md`, `validation/epoch-0001.png`)."""
    parts = path.split("/") if isinstance(path, str) else [None]
    if not all(is_valid_id(part) for part in parts) or len(parts) > 4:
        raise BluepriError(f"invalid file name {path!r} in adapter artifact: use {ID_RULE}")
    return path  # type: ignore[return-value]


def version_number(version: str) -> int | None:
    """3 for `v0003`; None for versions not named by the auto numbering."""
    match = VERSION_NUMBER.fullmatch(version)
    return int(match.group(1)) if match else None


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Numbered versions in numeric order, then any others by name."""
    number = version_number(version)
    return (0, number, version) if number is not None else (1, 0, version)
