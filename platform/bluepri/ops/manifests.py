"""Checks for what runs bluepri on a cluster (cluster/), without a cluster.

`check_cluster(root)` returns every problem, one line each (`file: where: what`):

- every YAML and JSON file under cluster/, jobs/ and dashboards/ parses;
- every manifest in cluster/kuberay/ validates against the CRD of its kind, copied from the
  pinned KubeRay release into cluster/kuberay/crds/ (checksums in its SOURCE.md; a kind with
  no CRD there is an error), strictly: a field the CRD does not have is an error, as it is to
  an API server with strict field validation (by default the server drops it, silently);
- the cluster-launcher YAMLs (cluster/cloud/*.yaml) validate against the launcher schema of
  the installed Ray, which pyproject pins;
- the Ray version, Python version and image tag in every manifest and in cluster/Dockerfile
  agree with pyproject.toml;
- the files a RayJob's entrypoint names (/app/jobs/...) are in the repository;
- the RayService's serveConfigV2 is what jobs/configs/serve.yaml generates.

The CRDs' CEL rules (x-kubernetes-validations) are the one thing not checked: they need the
API server. Nothing here starts Ray.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from bluepri.ops.rayservice import rayservice_problems

KUBERAY_DIR = Path("cluster/kuberay")
CRD_DIR = KUBERAY_DIR / "crds"
LAUNCHER_DIR = Path("cluster/cloud")
DOCKERFILE = Path("cluster/Dockerfile")
PARSED_DIRS = ("cluster", "jobs", "dashboards")
IMAGE_REPOSITORY = "ghcr.io/bluepri/bluepri"
PYTHON = "3.11"  # the image's Python (Ray publishes images per Python version)
APP_DIR = "/app"  # where cluster/Dockerfile puts the repository's jobs/
IMAGE_KEYS = ("image", "head_image", "worker_image")  # Kubernetes and launcher spellings
# A Kubernetes object name (RFC 1123 subdomain).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Pins:
    """What pyproject.toml says every cluster file must agree with."""

    version: str  # [project].version
    ray: str  # the exact pin of ray
    python: str = PYTHON

    @property
    def python_tag(self) -> str:
        return "py" + self.python.replace(".", "")

    @property
    def image(self) -> str:
        return f"{IMAGE_REPOSITORY}:{self.version}-ray{self.ray}-{self.python_tag}"

    @property
    def base_image(self) -> str:
        return f"rayproject/ray:{self.ray}-{self.python_tag}-gpu"


# ---------------------------------------------------------------- files


def read_documents(path: Path) -> list[Any]:
    """The documents of a YAML (several allowed) or JSON file; raises on a parse error."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return [json.loads(text)]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 4 MB
    return [doc for doc in yaml.load_all(text, Loader=loader) if doc is not None]


def data_files(root: Path) -> Iterator[Path]:
    """Every YAML and JSON file under cluster/, jobs/ and dashboards/."""
    for folder in PARSED_DIRS:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
                yield path


def parse_problems(root: Path) -> list[str]:
    problems = []
    for path in data_files(root):
        try:
            read_documents(path)
        except (ValueError, yaml.YAMLError) as err:  # JSONDecodeError, UnicodeDecodeError
            problems.append(f"{path.relative_to(root)}: does not parse: {one_line(err)}")
    return problems


def one_line(message: object) -> str:
    # PyYAML names the stream `"<unicode string>"`; the line already names the file
    return " ".join(str(message).replace(' in "<unicode string>"', "").split())


def manifest_files(root: Path) -> list[Path]:
    """The Kubernetes manifests: the YAML files directly in cluster/kuberay/."""
    return sorted((root / KUBERAY_DIR).glob("*.yaml"))


# ---------------------------------------------------------------- CRD schemas


def strict_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD's OpenAPI v3 schema as a JSON Schema that refuses unknown fields.

    An object the API server prunes (no x-kubernetes-preserve-unknown-fields, no
    additionalProperties) gets `additionalProperties: false`; int-or-string becomes anyOf
    integer/string; `nullable` admits null; other x-kubernetes-* keys say nothing a
    JSON Schema validator could check and are dropped.
    """
    schema: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties"):
            schema[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            schema[key] = strict_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            schema[key] = [strict_schema(sub) for sub in value]
        else:  # type, required, enum, pattern, ...: data, not schemas
            schema[key] = value
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    is_object = "properties" in node or node.get("type") == "object"
    if (
        is_object
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


def object_meta_schema() -> dict[str, Any]:
    """ObjectMeta, which CRDs leave to the API server: a name, loosely the rest."""
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 253, "pattern": NAME_PATTERN},
            "namespace": {"type": "string"},
            "labels": strings,
            "annotations": strings,
        },
    }


def crd_schemas(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema of every served version of every CRD."""
    schemas = {}
    for path in sorted((root / CRD_DIR).glob("*.yaml")):
        (crd,) = read_documents(path)
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served"):
                continue
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = object_meta_schema()
            schema["required"] = sorted({*schema.get("required", []), "metadata"})
            api_version = f"{spec['group']}/{version['name']}"
            schemas[(api_version, spec["names"]["kind"])] = schema
    return schemas


def crd_checksum_problems(root: Path) -> list[str]:
    """The copied CRDs are the release's bytes: an edited copy would validate anything."""
    source = root / CRD_DIR / "SOURCE.md"
    listed = re.findall(r"`([0-9a-f]{64})  (\S+)`", source.read_text("utf-8"))
    recorded = {name: digest for digest, name in listed}
    problems = []
    for path in sorted((root / CRD_DIR).glob("*.yaml")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if recorded.get(path.name) != digest:
            problems.append(
                f"{path.relative_to(root)}: sha256 {digest[:12]}... is not the one in "
                f"{CRD_DIR}/SOURCE.md: copy the CRD from the release unchanged"
            )
    return problems


def json_path(parts: Any) -> str:
    """`spec.workerGroupSpecs[0].template`, `limits["nvidia.com/gpu"]`."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif SIMPLE_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "(document)"


def describe(error: ValidationError, kind: str) -> list[str]:
    """One line per problem; an unknown field is named by its own path."""
    where = list(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = set(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        extra = [
            key
            for key in error.instance
            if key not in known and not any(re.search(p, key) for p in patterns)
        ]
        return [
            f"{json_path([*where, key])}: unknown field (not in the {kind} schema)" for key in extra
        ]
    return [f"{json_path(where)}: {one_line(error.message)[:300]}"]


def validate(document: Any, schema: dict[str, Any], kind: str) -> list[str]:
    errors = Draft7Validator(schema).iter_errors(document)
    lines = [line for error in errors for line in describe(error, kind)]
    return sorted(set(lines))


def crd_problems(root: Path, schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    problems = []
    for path in manifest_files(root):
        name = path.relative_to(root)
        try:
            documents = read_documents(path)
        except (ValueError, yaml.YAMLError):
            continue  # parse_problems names it
        for document in documents:
            if not isinstance(document, dict) or "kind" not in document:
                problems.append(f"{name}: a document that is not a Kubernetes object")
                continue
            kind, api_version = document["kind"], document.get("apiVersion")
            schema = schemas.get((api_version, kind))
            if schema is None:
                problems.append(f"{name}: no CRD in {CRD_DIR} for {api_version} {kind}")
                continue
            metadata = document.get("metadata")
            label = f"{kind} {metadata.get('name') if isinstance(metadata, dict) else None}"
            for line in validate(document, schema, kind):
                problems.append(f"{name}: {label}: {line}")
    return problems


# ---------------------------------------------------------------- launcher schema


def launcher_schema() -> dict[str, Any]:
    """The cluster launcher's JSON schema, from the installed Ray (found, not imported)."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("ray is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    return json.loads((package / "autoscaler" / "ray-schema.json").read_text("utf-8"))


def launcher_problems(root: Path) -> list[str]:
    schema = launcher_schema()
    problems = []
    for path in sorted((root / LAUNCHER_DIR).glob("*.yaml")):
        try:
            (document,) = read_documents(path)
        except (ValueError, yaml.YAMLError):
            continue  # parse_problems names it (or: not one document)
        for line in validate(document, schema, "cluster launcher"):
            problems.append(f"{path.relative_to(root)}: {line}")
    return problems


# ---------------------------------------------------------------- versions


def read_pins(root: Path) -> Pins:
    """pyproject's version and exact Ray pin; the image's Python must satisfy it too."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    rays = [r for r in requirements if r.name == "ray"]
    pins = [s.version for r in rays for s in r.specifier if s.operator == "=="]
    if len(rays) != 1 or len(pins) != 1 or len(rays[0].specifier) != 1:
        raise ValueError("pyproject.toml must pin ray exactly once (ray[...]==X.Y.Z)")
    if PYTHON not in SpecifierSet(project.get("requires-python", "")):
        raise ValueError(f"the image's Python {PYTHON} is outside requires-python")
    return Pins(version=project["version"], ray=pins[0])


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) pair in a document, depth first."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, index))


def pin_problems_in(document: Any, pins: Pins) -> list[str]:
    problems = []
    for path, value in walk(document):
        key = path[-1] if path else None
        if key == "rayVersion" and value != pins.ray:
            problems.append(f"{json_path(path)}: rayVersion {value!r}, pyproject pins {pins.ray}")
        elif key in IMAGE_KEYS and isinstance(value, str) and value != pins.image:
            problems.append(f"{json_path(path)}: image {value!r}, expected {pins.image}")
    return problems


def version_problems(root: Path) -> list[str]:
    try:
        pins = read_pins(root)
    except (OSError, KeyError, ValueError) as err:
        return [f"pyproject.toml: {one_line(err)}"]
    problems = []
    for path in [*manifest_files(root), *sorted((root / LAUNCHER_DIR).glob("*.yaml"))]:
        try:
            documents = read_documents(path)
        except (ValueError, yaml.YAMLError):
            continue
        found = [line for doc in documents for line in pin_problems_in(doc, pins)]
        problems += [f"{path.relative_to(root)}: {line}" for line in found]
    dockerfile = root / DOCKERFILE
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text("utf-8"), re.MULTILINE)
    if bases != [pins.base_image]:
        problems.append(f"{DOCKERFILE}: FROM {bases}, expected {pins.base_image}")
    return problems


# ---------------------------------------------------------------- entrypoints


def entrypoint_problems(root: Path) -> list[str]:
    """An entrypoint's /app/... paths are files of this repository (the image copies them)."""
    problems = []
    for path in manifest_files(root):
        try:
            documents = read_documents(path)
        except (ValueError, yaml.YAMLError):
            continue
        for document in documents:
            for where, value in walk(document):
                if not where or where[-1] != "entrypoint" or not isinstance(value, str):
                    continue
                for named in re.findall(rf"{re.escape(APP_DIR)}/(\S+)", value):
                    if not (root / named).is_file():
                        problems.append(
                            f"{path.relative_to(root)}: {json_path(where)}: "
                            f"{APP_DIR}/{named} is not a file of the repository"
                        )
    return problems


def check_cluster(root: Path) -> list[str]:
    """Every problem with the cluster files under `root` (the repository), one line each."""
    root = Path(root)
    return [
        *parse_problems(root),
        *crd_checksum_problems(root),
        *crd_problems(root, crd_schemas(root)),
        *launcher_problems(root),
        *version_problems(root),
        *entrypoint_problems(root),
        *rayservice_problems(root),
    ]
