"""The try-it page the ingress serves at `GET /`.

One static file, `static/index.html` (package data): plain HTML with inline CSS and JS that
calls the JSON API next to it (`v1/adapters`, `v1/generate`). No build step, no external
assets. The page takes its field defaults from the address's query parameters
(`/?width=64&height=64&steps=4&adapter=blueprints@champion`); a server may also bake its
own defaults in through `page_html(defaults)`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from typing import Any

PAGE_FILE = "static/index.html"
DEFAULTS_SLOT = '<script type="application/json" id="page-defaults">{}</script>'


@cache
def page_template() -> str:
    text = files(__package__).joinpath(PAGE_FILE).read_text(encoding="utf-8")
    if text.count(DEFAULTS_SLOT) != 1:
        raise RuntimeError(f"{PAGE_FILE} must hold the defaults slot exactly once")
    return text


def page_html(defaults: Mapping[str, Any] | None = None) -> str:
    """The page's HTML. `defaults` preset its fields by request field name (e.g.
    `{"width": 64, "height": 64, "steps": 4}`); query parameters still override them."""
    text = page_template()
    if not defaults:
        return text
    # "<" escaped so that no value can close the <script> element it sits in.
    blob = json.dumps(dict(defaults)).replace("<", "\\u003c")
    return text.replace(DEFAULTS_SLOT, DEFAULTS_SLOT.replace("{}", blob))
