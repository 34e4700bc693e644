"""Running the application: start it on Ray Serve, stop it, write its Serve config file.

`start` joins the Ray in RAY_ADDRESS (or starts a local one), starts Serve's HTTP proxy on
the configured host and port and deploys `build_app(config)` under `config.app_name`,
returning once every deployment is up. `serve_config` is the same application as a Serve
config file for `serve deploy`: the import path of the builder plus the ServeConfig as its
`args`, so the file is generated from our config, never copied by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bluepri.config import ServeConfig
from bluepri.errors import BluepriError

BUILDER = "bluepri.serve:build_app"
PROXY_GRACE_S = 5.0  # the proxy's own timeout stays behind ours, so ours answers (504)


def http_options(config: ServeConfig) -> dict[str, Any]:
    return {
        "host": config.host,
        "port": config.port,
        "request_timeout_s": config.request_timeout_s + PROXY_GRACE_S,
    }


def serve_config(config: ServeConfig) -> dict[str, Any]:
    """A Serve config (`serve deploy FILE`) for this application, checked by Ray's schema."""
    from ray.serve.schema import ServeDeploySchema

    document = {
        "proxy_location": "EveryNode",
        "http_options": http_options(config),
        "applications": [
            {
                "name": config.app_name,
                "route_prefix": "/",
                "import_path": BUILDER,
                "args": config.model_dump(mode="json"),
            }
        ],
    }
    ServeDeploySchema.model_validate(document)
    return document


def write_serve_config(config: ServeConfig, path: str | Path) -> Path:
    path = Path(path)
    header = (
        "# Ray Serve config for `serve deploy`, written by `bluepri serve --write-config`.\n"
        "# `args` is bluepri's ServeConfig (see README, Serve); edit it, not a copy.\n"
    )
    text = yaml.safe_dump(serve_config(config), sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + text, encoding="utf-8")
    return path


def start(config: ServeConfig) -> str:
    """Deploy the application and return its base URL once it is running. (Serve keeps the
    HTTP host and port of its first start on a cluster: a second application there is
    served on those.)"""
    from ray import serve

    from bluepri.runtime import ensure_ray
    from bluepri.serve.app import build_app

    ensure_ray()
    serve.start(http_options=http_options(config))
    try:
        serve.run(build_app(config), name=config.app_name, route_prefix="/")
    except RuntimeError as err:  # Serve's "deploying failed" carries the replica's error
        line = f"serve: the application failed to start ({err})".splitlines()[0]
        raise BluepriError(line) from None
    return config.url


def stop(config: ServeConfig) -> None:
    """Delete the application (the Serve instance stays for others on the cluster)."""
    from ray import serve

    serve.delete(config.app_name)
