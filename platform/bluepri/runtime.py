"""Connecting to Ray: the cluster named by RAY_ADDRESS, or a local Ray started on demand.

Nothing else in bluepri knows which: stages call `ensure_ray()` and then use Ray's APIs.
"""

from __future__ import annotations

import os


def ensure_ray() -> None:
    """Join the running Ray (a test session's, a job's) or start/connect one."""
    import ray

    if ray.is_initialized():
        return
    # ray.init() connects to RAY_ADDRESS when it is set, else starts a local instance.
    ray.init(
        include_dashboard=False if "RAY_ADDRESS" not in os.environ else None,
        configure_logging=False,
        log_to_driver=False,
    )
