"""Connecting to Ray: the cluster named by RAY_ADDRESS, or a local Ray started on demand.

Nothing else in bluepri knows which: stages call `ensure_ray()` and then use Ray's APIs.
"""

from __future__ import annotations

import os

from bluepri.errors import BluepriError


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the running Ray (a test session's, a job's) or start/connect one.

    A local Ray starts WITH its dashboard: Ray Train's placement-group cleaner asks the
    dashboard's state API whether a run's controller is still alive, and without it the
    workers' CPUs of a Tune trial that ASHA stopped are never given back.
    """
    import ray

    if ray.is_initialized():
        return
    # ray.init() connects to RAY_ADDRESS when it is set, else starts a local instance, which
    # then listens on loopback only (Ray would otherwise advertise the machine's address).
    local = {} if os.environ.get("RAY_ADDRESS") else {"_node_ip_address": "127.0.0.1"}
    ray.init(num_cpus=num_cpus, configure_logging=False, log_to_driver=False, **local)


def require_state_api() -> None:
    """Fail early when Ray's state API (the dashboard) is unreachable (see `ensure_ray`)."""
    import ray
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    try:
        # This cluster's address: with several Ray instances on one machine, "auto" is ambiguous.
        list_nodes(address=ray.get_runtime_context().gcs_address, limit=1, timeout=10)
    except (RayStateApiException, ConnectionError) as err:
        raise BluepriError(
            "Ray's dashboard (state API) is not reachable; tune needs it to free stopped "
            "trials' workers: start Ray with the dashboard (the default)"
        ) from err
