"""An environment whose Ray "current cluster" file names a cluster that died without
`ray stop` (as a killed `ray start` leaves it), for commands run as subprocesses.

RAY_TMPDIR moves Ray's temp folder (where it looks for that file, and where a local Ray
puts its session) to a fresh short path: AF_UNIX socket paths must stay under 108 bytes.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def dead_address() -> str:
    """host:port where nothing listens (a port just released by this process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@contextmanager
def stale_cluster_env() -> Iterator[dict[str, str]]:
    """os.environ without RAY_ADDRESS, and a current-cluster file naming a dead cluster."""
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        (root / "ray").mkdir()
        (root / "ray" / "ray_current_cluster").write_text(dead_address())
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        yield {**env, "RAY_TMPDIR": str(root)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
