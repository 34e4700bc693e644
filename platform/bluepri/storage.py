"""Where artifacts live. Local folders now; URIs through pyarrow.fs as stages need them."""

from __future__ import annotations

from pathlib import Path

from bluepri.errors import BluepriError


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
