"""The RayService's `serveConfigV2`, generated from our Serve config (jobs/configs/serve.yaml).

KubeRay deploys `spec.serveConfigV2` of cluster/kuberay/rayservice.yaml, a Serve config file
as a YAML string. It is the document `bluepri serve --write-config` writes
(`bluepri.serve.deploy.serve_config`, checked by Ray's own schema) for the ServeConfig in
serve.yaml's `args`, with one change: the proxies listen on the pod's address, since a
Kubernetes Service cannot reach a loopback one.

Only the `serveConfigV2: |` block of the manifest is generated; the rest of it is written by
hand, comments included, so regenerating never undoes an edit there. Imports Ray's Serve
schema (not Ray itself: nothing starts).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bluepri.config import ServeConfig, build_config
from bluepri.errors import BluepriError

SERVE_CONFIG = Path("jobs/configs/serve.yaml")
RAYSERVICE = Path("cluster/kuberay/rayservice.yaml")
POD_HOST = "0.0.0.0"
BLOCK_START = re.compile(r"^(?P<indent> *)serveConfigV2: \|\n", re.MULTILINE)


def cluster_serve_config(serve_yaml: Path) -> ServeConfig:
    """The ServeConfig of a Serve config file (its one application's `args`), as it runs in
    a pod: listening on all addresses."""
    document = yaml.safe_load(serve_yaml.read_text(encoding="utf-8"))
    try:
        (application,) = document["applications"]
        args = dict(application["args"])
    except (TypeError, KeyError, ValueError):
        raise BluepriError(
            f"{serve_yaml}: not a Serve config with one application's args"
        ) from None
    return build_config(ServeConfig, {**args, "host": POD_HOST})


def serve_config_v2(config: ServeConfig) -> str:
    """The `serveConfigV2` text: the Serve config file as YAML, in the config's key order."""
    from bluepri.serve.deploy import serve_config  # Ray's Serve schema checks the document

    # width: no folded lines, so a long value reads as it is written in serve.yaml
    return yaml.safe_dump(serve_config(config), sort_keys=False, width=1_000_000)


def replace_serve_config_v2(manifest: str, text: str) -> str:
    """`manifest` with the lines of its `serveConfigV2: |` block replaced by `text`."""
    match = BLOCK_START.search(manifest)
    if match is None:
        raise BluepriError("the manifest has no `serveConfigV2: |` block to generate")
    indent = match["indent"] + "  "
    lines = manifest[match.end() :].splitlines(keepends=True)
    taken = 0  # the block runs while lines are blank or indented deeper than its key
    while taken < len(lines) and (not lines[taken].strip() or lines[taken].startswith(indent)):
        taken += 1
    while taken and not lines[taken - 1].strip():  # blank lines after it are the file's
        taken -= 1
    block = "".join(indent + line if line.strip() else line for line in text.splitlines(True))
    return manifest[: match.end()] + block + "".join(lines[taken:])


def render_rayservice(serve_yaml: Path, manifest: Path) -> str:
    """The manifest's text with `serveConfigV2` generated from `serve_yaml`."""
    text = serve_config_v2(cluster_serve_config(serve_yaml))
    return replace_serve_config_v2(manifest.read_text(encoding="utf-8"), text)


def committed_serve_config_v2(manifest: Path) -> str:
    document = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    value = (document.get("spec") or {}).get("serveConfigV2")
    if not isinstance(value, str):
        raise BluepriError(f"{manifest}: spec.serveConfigV2 is not a string")
    return value


def first_difference(committed: str, generated: str) -> str:
    """Where two texts part, as one line: `line N: 'committed' != 'generated'`."""
    old, new = committed.splitlines(), generated.splitlines()
    for number, (a, b) in enumerate(zip(old, new, strict=False), start=1):
        if a != b:
            return f"line {number}: {a.strip()!r} != {b.strip()!r}"
    if len(old) == len(new):
        return "the same lines, other line endings"
    number = min(len(old), len(new)) + 1
    extra = old[len(new)] if len(old) > len(new) else new[len(old)]
    side = "committed" if len(old) > len(new) else "generated"
    return f"line {number}: only the {side} text has {extra.strip()!r}"


def rayservice_problems(root: Path) -> list[str]:
    """A line when the committed serveConfigV2 is not what serve.yaml generates."""
    manifest = root / RAYSERVICE
    try:
        committed = committed_serve_config_v2(manifest)
        generated = serve_config_v2(cluster_serve_config(root / SERVE_CONFIG))
    except (OSError, ValueError, yaml.YAMLError, BluepriError) as err:  # pydantic: ValueError
        return [f"{RAYSERVICE}: serveConfigV2 cannot be checked: {err}".splitlines()[0]]
    if committed == generated:
        return []
    return [
        f"{RAYSERVICE}: spec.serveConfigV2 is not what {SERVE_CONFIG} generates "
        f"({first_difference(committed, generated)}); run "
        "`python cluster/kuberay/generate_rayservice.py`"
    ]
