"""Ray Serve application: FastAPI ingress, Base and Refiner deployments, the try-it page.

`build_app(config)` is the one entry point (`serve run` / `serve deploy` import path
`bluepri.serve:build_app`, with a ServeConfig as `args`); `deploy.py` starts and stops it
and writes the Serve config file. Modules: `schemas` (API models, limits, errors), `auth`
(API keys), `champion` (adapter pinning, champion refresh), `app` (the deployments),
`page` (the HTML page).
"""

from __future__ import annotations

from typing import Any


def build_app(config: Any) -> Any:
    """The Serve application for a `ServeConfig` (or its dict, as a Serve config's args)."""
    from bluepri.serve.app import build_app as build  # Ray and torch only when building

    return build(config)


__all__ = ["build_app"]
