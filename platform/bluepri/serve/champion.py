"""Adapter references pinned to a version, and the champion followed with a bounded lag.

The ingress resolves a request's reference ONCE, to (name, version, sha256), and the rest of
the request runs on that pin: a promotion while it is in flight does not change its
weights. `name` / `name@champion` is the champion as the registry's history says, re-read at
most `refresh_s` after it was last read, so a promotion or a rollback is served within
that bound without a restart. A version's sha256 is read once from its adapter.json:
versions are immutable. Registry IO is blocking; callers run `resolve` in a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bluepri.errors import BluepriError, error_line
from bluepri.generate import parse_adapter_reference
from bluepri.registry.ids import CHAMPION, LATEST
from bluepri.serve.schemas import ApiError

BASE_MODEL_ID = "base"  # the multiplexed model id of requests without an adapter


@dataclass(frozen=True)
class PinnedAdapter:
    """An adapter reference made concrete for the life of one request."""

    name: str
    version: str
    sha256: str

    @property
    def label(self) -> str:
        """`name@version`: the multiplexed model id and the requests' adapter reference."""
        return f"{self.name}@{self.version}"


class AdapterResolver:
    """References -> `PinnedAdapter`s; 400 malformed, 404 unknown, 422 unusable."""

    def __init__(
        self, registry: Any, refresh_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.registry = registry
        self.refresh_s = refresh_s
        self.clock = clock
        self._lock = threading.Lock()
        self._champions: dict[str, tuple[str, float]] = {}  # name -> (version, read at)
        self._sha256: dict[tuple[str, str], str] = {}

    def resolve(self, reference: str) -> PinnedAdapter:
        try:
            name, version = parse_adapter_reference(reference)
        except BluepriError as err:
            raise ApiError(400, f"adapter: {err}", field="adapter") from None
        try:
            if version == CHAMPION:
                version = self.champion(name)
            elif (name, version) not in self._sha256:
                version = self.existing_version(name, version)
            return PinnedAdapter(name, version, self.sha256(name, version))
        except ApiError:
            raise
        except BluepriError as err:
            raise ApiError(422, f"adapter: {error_line(err)}", field="adapter") from None

    def champion(self, name: str) -> str:
        """The champion's version, at most `refresh_s` old."""
        now = self.clock()
        with self._lock:
            cached = self._champions.get(name)
        if cached is not None and now - cached[1] < self.refresh_s:
            return cached[0]
        if name not in self.registry.names():
            raise ApiError(404, f"adapter: no adapter named {name!r}", field="adapter")
        version = self.registry.champion(name)
        if version is None:
            raise ApiError(404, f"adapter: {name!r} has no champion yet", field="adapter")
        with self._lock:
            self._champions[name] = (version, now)
        return version

    def existing_version(self, name: str, version: str) -> str:
        if name not in self.registry.names():
            raise ApiError(404, f"adapter: no adapter named {name!r}", field="adapter")
        versions = self.registry.versions(name)
        if version == LATEST and versions:
            return versions[-1]
        if version not in versions:
            raise ApiError(404, f"adapter: {name!r} has no version {version!r}", field="adapter")
        return version

    def sha256(self, name: str, version: str) -> str:
        key = (name, version)
        with self._lock:
            known = self._sha256.get(key)
        if known is None:
            known = self.registry.show(name, version)["sha256"]
            with self._lock:
                self._sha256[key] = known
        return known
