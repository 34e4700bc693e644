"""Waiting on real state in tests: poll a condition against a deadline, never sleep blind."""

from __future__ import annotations

import threading
import time

import requests


def wait_until(condition, deadline_s: float, what: str, poll_s: float = 0.25):
    """Poll `condition()` until it is truthy and return that value; fail after `deadline_s`."""
    stop = time.monotonic() + deadline_s
    while not (result := condition()):
        assert time.monotonic() < stop, f"timed out after {deadline_s:.0f} s waiting for {what}"
        threading.Event().wait(poll_s)  # pace the polling; the condition decides
    return result


def http_status(url: str, timeout_s: float = 5.0) -> int | None:
    """The status of GET `url`, or None while nothing answers in time: a poll predicate's
    "not yet" (a server still starting may accept the connection and answer late)."""
    try:
        return requests.get(url, timeout=timeout_s).status_code
    except requests.RequestException:
        return None
