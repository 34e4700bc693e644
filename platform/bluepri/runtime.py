"""Connecting to Ray, explicitly: the cluster named by RAY_ADDRESS, or a local Ray of our own.

Nothing else in bluepri knows which: stages call `ensure_ray()` and then use Ray's APIs.

Ray's own `ray.init()` with no address also reads the "current cluster" file that `ray start`
leaves behind, so a cluster that died without `ray stop` made every command wait on a dead
address, and a cluster someone else started was joined silently. Here the rule is:

- RAY_ADDRESS set (a job under `ray job submit` always has it): join that cluster; a dead or
  wrong address fails in one line within seconds, before Ray's long connection retries.
- RAY_ADDRESS unset: start a local Ray of our own (loopback only), whatever the file says.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlsplit

from bluepri.errors import BluepriError

ADDRESS_ENV = "RAY_ADDRESS"
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"
LOOPBACK = "127.0.0.1"
# Ray Train's controller polls its workers every 2 s by default: a short run then waits up
# to that long for each checkpoint report to register and again for the group to stop
# (measured: 10-step tiny run, checkpoint 2.0 -> 0.4 s, group stop 4.9 -> 1.2 s). Every
# process of a bluepri Ray gets this (local Ray here; jobs/runtime_env.yaml and the
# platform image on clusters).
TRAIN_POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
CONNECT_TIMEOUT_S = 3.0


def ray_address() -> str | None:
    """The cluster to join (RAY_ADDRESS, checked to answer), or None to start a local Ray."""
    value = os.environ.get(ADDRESS_ENV, "").strip()
    if not value or value == "local":
        return None
    scheme = urlsplit(value).scheme if "://" in value else ""
    if scheme in ("http", "https"):
        raise BluepriError(
            f"{ADDRESS_ENV}={value} is a dashboard (job submission) address; bluepri joins a "
            "cluster by its GCS address (host:6379), or submit the job with `ray job submit`"
        )
    if value == "auto":
        value = current_cluster_address(value)
    if scheme == "ray":  # Ray Client: Ray reports its own connection errors
        return value
    check_reachable(value)
    return value


def cluster_named() -> bool:
    """Whether this process is told to use a cluster (RAY_ADDRESS set and not `local`)."""
    return os.environ.get(ADDRESS_ENV, "").strip() not in ("", "local")


def current_cluster_address(value: str) -> str:
    """RAY_ADDRESS=auto: the cluster `ray start` on this machine recorded, if any."""
    from ray._private.utils import read_ray_address

    address = read_ray_address()
    if not address:
        raise BluepriError(
            f"{ADDRESS_ENV}={value} but no cluster was started on this machine with `ray start`"
        )
    return address


def check_reachable(address: str) -> None:
    """Fail in one line when nothing listens at host:port (Ray would retry for about a minute)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise BluepriError(f"{ADDRESS_ENV}={address} is not host:port (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise BluepriError(
            f"{ADDRESS_ENV}={address}: no Ray cluster answers there ({reason}); "
            f"start it, or unset {ADDRESS_ENV} to run on a local Ray"
        ) from None


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the running Ray (a test session's, a job's), the RAY_ADDRESS cluster, or start one.

    A local Ray starts WITH its dashboard: Ray Train's placement-group cleaner asks the
    dashboard's state API whether a run's controller is still alive, and without it the
    workers' CPUs of a Tune trial that ASHA stopped are never given back.
    """
    import ray

    if ray.is_initialized():
        return
    address = ray_address()
    if address is None:
        start_local_ray(num_cpus)
    else:
        use_token_if_present()
        ray.init(address=address, configure_logging=False, log_to_driver=False)


def use_token_if_present() -> None:
    """Present this machine's Ray token (~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]) when
    RAY_AUTH_MODE is unset, as `ray start` does: without it a cluster with token
    authentication refuses us only after ~20 s, as "Failed to connect"."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    announcer = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = announcer.level
    announcer.setLevel(logging.ERROR)  # its "token authentication is enabled" notice
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        announcer.setLevel(level)


def train_poll_env() -> dict[str, str]:
    """TRAIN_POLL_ENV, except where this process's environment sets its own value."""
    return {name: os.environ.get(name, value) for name, value in TRAIN_POLL_ENV.items()}


def start_local_ray(num_cpus: int | None) -> None:
    """A new local Ray on loopback whose every worker knows its address.

    `address="local"` ignores the current-cluster file. Ray's own libraries still look an
    address up inside workers (Ray Train's placement-group cleaner asks the state API at
    "auto"), which with a stale file, or another Ray on the machine, is the wrong cluster;
    so the GCS port is chosen here and given to every worker of this job as RAY_ADDRESS.
    """
    import ray

    port = free_local_port()
    address = f"{LOOPBACK}:{port}"
    previous = os.environ.get(GCS_PORT_ENV)
    os.environ[GCS_PORT_ENV] = str(port)  # read by Ray when it starts the head's GCS
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            configure_logging=False,
            log_to_driver=False,
            runtime_env={"env_vars": {ADDRESS_ENV: address, **train_poll_env()}},
            _node_ip_address=LOOPBACK,  # Ray would otherwise advertise the machine's address
        )
    finally:
        if previous is None:
            os.environ.pop(GCS_PORT_ENV, None)
        else:
            os.environ[GCS_PORT_ENV] = previous


def free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


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
