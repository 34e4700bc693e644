"""API keys: `Authorization: Bearer KEY`, checked in constant time.

Keys come from a file (one per line, `#` comments) and/or an environment variable
(comma-separated), read where the application is built. Only their SHA-256 digests travel
into the ingress replicas, and a presented key is compared against every digest with
`hmac.compare_digest`, so neither the key's content nor which key matched shows in timing.
A key file that is configured but missing or empty is an error: auth fails closed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from bluepri.config import ServeConfig
from bluepri.errors import BluepriError
from bluepri.serve.schemas import ApiError

MAX_KEY_CHARS = 4096


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys' digests; none means the API is open."""

    digests: tuple[bytes, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    @classmethod
    def from_config(cls, config: ServeConfig) -> ApiKeys:
        keys: list[str] = []
        if config.api_keys_file is not None:
            path = Path(config.api_keys_file).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise BluepriError(
                    f"api_keys_file {path} cannot be read ({type(err).__name__})"
                ) from None
            found = [line.strip() for line in text.splitlines()]
            found = [k for k in found if k and not k.startswith("#")]
            if not found:
                raise BluepriError(f"api_keys_file {path} holds no key")
            keys += found
        if config.api_keys_env:
            keys += [k.strip() for k in os.environ.get(config.api_keys_env, "").split(",")]
        keys = [k for k in keys if k]
        for key in keys:
            if len(key) > MAX_KEY_CHARS or any(c.isspace() for c in key):
                raise BluepriError("an API key must be one word of at most 4096 characters")
        return cls(tuple(digest(k) for k in dict.fromkeys(keys)))

    def check(self, authorization: str | None) -> None:
        """Nothing when the key is right (or auth is off); else a 401 ApiError."""
        if not self.enabled:
            return
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise unauthorized("missing API key: send Authorization: Bearer KEY")
        presented = presented.strip()
        if len(presented) > MAX_KEY_CHARS:
            raise unauthorized("wrong API key")
        given = digest(presented)
        matched = False
        for known in self.digests:  # no early exit: every key costs the same
            matched |= hmac.compare_digest(given, known)
        if not matched:
            raise unauthorized("wrong API key")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})
