"""The cluster files (cluster/): they parse, validate against the pinned KubeRay CRDs and
Ray's launcher schema, agree with pyproject's versions, and the RayService's serveConfigV2
is the generated one; and each check fails, naming the place, on a broken copy. No Ray.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from bluepri.ops import manifests
from bluepri.ops.manifests import (
    check_cluster,
    crd_checksum_problems,
    crd_problems,
    crd_schemas,
    entrypoint_problems,
    launcher_problems,
    parse_problems,
    read_pins,
    strict_schema,
    version_problems,
)
from bluepri.ops.rayservice import RAYSERVICE, rayservice_problems, replace_serve_config_v2

ROOT = Path(__file__).resolve().parent.parent
RAYCLUSTER = "cluster/kuberay/raycluster.yaml"


@pytest.fixture(scope="module")
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    return crd_schemas(ROOT)  # the CRDs are 4 MB of YAML: read once


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The files the checks read, copied to break them."""
    for folder in ("cluster", "jobs", "dashboards"):
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def generator() -> Any:
    """cluster/kuberay/generate_rayservice.py, loaded as a module."""
    path = ROOT / "cluster" / "kuberay" / "generate_rayservice.py"
    spec = importlib.util.spec_from_file_location("generate_rayservice", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the repository's files


def test_the_cluster_files_have_no_problems() -> None:
    assert check_cluster(ROOT) == []


def test_every_manifest_kind_is_there_and_validated(schemas) -> None:
    kinds = {
        path.name: [doc["kind"] for doc in manifests.read_documents(path)]
        for path in manifests.manifest_files(ROOT)
    }
    assert sorted(kind for found in kinds.values() for kind in found) == [
        "RayCluster",
        "RayCronJob",
        "RayJob",
        "RayJob",
        "RayService",
    ]
    assert {("ray.io/v1", kind) for kinds_ in kinds.values() for kind in kinds_} <= set(schemas)
    assert crd_problems(ROOT, schemas) == []


def test_every_yaml_and_json_file_parses() -> None:
    files = {str(path.relative_to(ROOT)) for path in manifests.data_files(ROOT)}
    # not vacuous: the manifests, the CRDs and the job configs are among the files checked
    assert {RAYCLUSTER, "cluster/kuberay/crds/ray.io_rayjobs.yaml", "jobs/configs/serve.yaml"} <= (
        files
    )
    assert parse_problems(ROOT) == []


def test_the_crds_are_the_release_copies() -> None:
    assert len(list((ROOT / manifests.CRD_DIR).glob("*.yaml"))) == 4
    assert crd_checksum_problems(ROOT) == []


def test_the_committed_serve_config_v2_is_the_generated_one() -> None:
    assert rayservice_problems(ROOT) == []
    assert generator().main(["--check"]) == 0


def test_versions_agree_with_pyproject_and_the_installed_ray() -> None:
    assert version_problems(ROOT) == []
    pins = read_pins(ROOT)
    # a cluster's Ray must equal its clients': the pin is the Ray this venv runs
    assert pins.ray == importlib.metadata.version("ray")
    assert pins.image.endswith(f":{pins.version}-ray{pins.ray}-py311")


def test_the_launcher_yaml_validates_against_rays_schema() -> None:
    assert launcher_problems(ROOT) == []


# ---------------------------------------------------------------- broken copies


def test_a_field_the_crd_does_not_have_is_named_by_its_path(copy: Path) -> None:
    manifest = copy / RAYCLUSTER
    edit(manifest, "  headGroupSpec:\n", "  headGroupSpec:\n    rayStartParamz: {}\n")
    edit(manifest, "    minReplicas: 0\n", "    minReplica: 0\n    minReplicas: 0\n")
    edit(manifest, "            name: gcs\n", "            name: gcs\n            protocoll: TCP\n")

    problems = crd_problems(copy, crd_schemas(copy))

    assert problems == [
        f"{RAYCLUSTER}: RayCluster bluepri: spec.headGroupSpec.rayStartParamz: "
        "unknown field (not in the RayCluster schema)",
        f"{RAYCLUSTER}: RayCluster bluepri: "
        "spec.headGroupSpec.template.spec.containers[0].ports[0].protocoll: "
        "unknown field (not in the RayCluster schema)",
        f"{RAYCLUSTER}: RayCluster bluepri: spec.workerGroupSpecs[0].minReplica: "
        "unknown field (not in the RayCluster schema)",
    ]
    assert any(
        ": RayCluster bluepri: spec.headGroupSpec.rayStartParamz:" in line
        for line in check_cluster(copy)
    )


def test_a_wrong_type_and_a_missing_required_field_are_named(copy: Path, schemas) -> None:
    job = copy / "cluster/kuberay/rayjob-train.yaml"
    edit(job, "backoffLimit: 0", "backoffLimit: never")
    edit(job, "  - groupName: gpu\n", "  - groupNamee: gpu\n")
    edit(job, 'nvidia.com/gpu: "1"', "nvidia.com/gpu: [1]")

    problems = crd_problems(copy, schemas)

    prefix = "cluster/kuberay/rayjob-train.yaml: RayJob bluepri-train: "
    assert f"{prefix}spec.backoffLimit: 'never' is not of type 'integer'" in problems
    assert (
        f"{prefix}spec.rayClusterSpec.workerGroupSpecs[0]: 'groupName' is a required property"
        in problems
    )
    container = "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0]"
    gpu = f'{container}.resources.requests["nvidia.com/gpu"]: [1] is not valid'
    assert any(line.startswith(prefix + gpu) for line in problems), problems


def test_a_manifest_without_a_crd_or_a_name_is_refused(copy: Path, schemas) -> None:
    edit(
        copy / "cluster/kuberay/rayjob-render.yaml",
        "apiVersion: ray.io/v1",
        "apiVersion: ray.io/v2",
    )
    edit(copy / RAYCLUSTER, "  name: bluepri\n", "  name: Bluepri_Cluster\n")

    problems = crd_problems(copy, schemas)

    assert (
        "cluster/kuberay/rayjob-render.yaml: no CRD in cluster/kuberay/crds for ray.io/v2 RayJob"
        in problems
    )
    assert any(
        line.startswith(f"{RAYCLUSTER}: RayCluster Bluepri_Cluster: metadata.name: ")
        for line in problems
    ), problems


def test_an_edited_crd_copy_is_caught(copy: Path) -> None:
    crd = copy / "cluster/kuberay/crds/ray.io_rayclusters.yaml"
    edit(
        crd,
        "              rayVersion:\n",
        "              rayStartParamz:\n                type: object\n              rayVersion:\n",
    )

    assert [line.split(":")[0] for line in crd_checksum_problems(copy)] == [
        "cluster/kuberay/crds/ray.io_rayclusters.yaml"
    ]


def test_a_ray_version_other_than_pyprojects_is_named_with_its_file(copy: Path) -> None:
    edit(
        copy / "cluster/kuberay/rayjob-render.yaml", 'rayVersion: "2.60.0"', 'rayVersion: "2.59.0"'
    )

    assert version_problems(copy) == [
        "cluster/kuberay/rayjob-render.yaml: spec.rayClusterSpec.rayVersion: "
        f"rayVersion '2.59.0', pyproject pins {read_pins(ROOT).ray}"
    ]


def test_an_image_or_base_image_other_than_pyprojects_is_named(copy: Path) -> None:
    pins = read_pins(ROOT)
    edit(
        copy / "cluster/cloud/aws-gpu.yaml", f"image: {pins.image}", "image: rayproject/ray:2.60.0"
    )
    edit(
        copy / "cluster/Dockerfile",
        f"FROM {pins.base_image}",
        "FROM rayproject/ray:2.59.0-py311-gpu",
    )

    assert version_problems(copy) == [
        "cluster/cloud/aws-gpu.yaml: docker.image: image 'rayproject/ray:2.60.0', "
        f"expected {pins.image}",
        f"cluster/Dockerfile: FROM ['rayproject/ray:2.59.0-py311-gpu'], expected {pins.base_image}",
    ]


def test_a_version_bump_in_pyproject_alone_is_caught(copy: Path) -> None:
    edit(copy / "pyproject.toml", 'version = "', 'version = "9')  # 0.1.0 -> 90.1.0

    problems = version_problems(copy)

    # every container image of every manifest, the launcher's image; not the Dockerfile's base
    assert {line.split(":")[0] for line in problems} == {
        "cluster/cloud/aws-gpu.yaml",
        *(str(p.relative_to(copy)) for p in manifests.manifest_files(copy)),
    }


def test_an_unpinned_ray_is_refused(copy: Path) -> None:
    edit(copy / "pyproject.toml", '"ray[data,train,tune,serve]==', '"ray[data,train,tune,serve]>=')

    assert version_problems(copy) == [
        "pyproject.toml: pyproject.toml must pin ray exactly once (ray[...]==X.Y.Z)"
    ]


def test_a_corrupt_yaml_or_json_is_named(copy: Path) -> None:
    edit(
        copy / "cluster/kuberay/rayservice.yaml", "  rayClusterConfig:\n", "  rayClusterConfig: [\n"
    )
    (copy / "jobs" / "configs" / "broken.json").write_text('{"a": 1,}', encoding="utf-8")

    problems = parse_problems(copy)

    assert [line.split(": does not parse: ")[0] for line in problems] == [
        "cluster/kuberay/rayservice.yaml",
        "jobs/configs/broken.json",
    ]
    assert any(
        line.startswith("cluster/kuberay/rayservice.yaml: does not parse:")
        for line in check_cluster(copy)
    )


def test_a_launcher_field_rays_schema_lacks_is_named(copy: Path) -> None:
    edit(copy / "cluster/cloud/aws-gpu.yaml", "  pull_before_run: true\n", "  pull_always: true\n")
    edit(copy / "cluster/cloud/aws-gpu.yaml", "    min_workers: 0\n", "    min_workers: none\n")

    assert launcher_problems(copy) == [
        "cluster/cloud/aws-gpu.yaml: available_node_types.gpu.min_workers: "
        "'none' is not of type 'integer'",
        "cluster/cloud/aws-gpu.yaml: docker.pull_always: unknown field "
        "(not in the cluster launcher schema)",
    ]


def test_an_entrypoint_naming_a_missing_file_is_caught(copy: Path) -> None:
    edit(copy / "cluster/kuberay/rayjob-render.yaml", "/app/jobs/render.py", "/app/jobs/rendr.py")

    assert entrypoint_problems(copy) == [
        "cluster/kuberay/rayjob-render.yaml: spec.entrypoint: "
        "/app/jobs/rendr.py is not a file of the repository"
    ]


def test_a_stale_serve_config_v2_is_caught_and_regenerated(copy: Path) -> None:
    serve_yaml = copy / "jobs" / "configs" / "serve.yaml"
    manifest = copy / RAYSERVICE
    edit(serve_yaml, "max_adapters_per_replica: 16", "max_adapters_per_replica: 12")
    before = manifest.read_text(encoding="utf-8")

    # The line number is where the key sits in the generated document (it moves as configs grow).
    problems = rayservice_problems(copy)
    assert len(problems) == 1
    assert re.fullmatch(
        re.escape(
            f"{RAYSERVICE}: spec.serveConfigV2 is not what jobs/configs/serve.yaml generates "
        )
        + r"\(line \d+: 'max_adapters_per_replica: 16' != 'max_adapters_per_replica: 12'\); "
        + re.escape("run `python cluster/kuberay/generate_rayservice.py`"),
        problems[0],
    ), problems[0]
    script = generator()
    arguments = ["--serve-config", str(serve_yaml), "--manifest", str(manifest)]
    assert script.main([*arguments, "--check"]) == 1
    assert script.main(arguments) == 0

    assert rayservice_problems(copy) == []
    after = manifest.read_text(encoding="utf-8")
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert changed == [
        ("        max_adapters_per_replica: 16", "        max_adapters_per_replica: 12")
    ]
    spec = yaml.safe_load(after)["spec"]
    assert yaml.safe_load(spec["serveConfigV2"])["http_options"]["host"] == "0.0.0.0"


def test_only_the_serve_config_v2_block_is_replaced() -> None:
    manifest = "a: 1\nspec:\n  serveConfigV2: |\n    old: 1\n\n    more: 2\n\n  next: 3\n"

    assert replace_serve_config_v2(manifest, "new: 1\nlist:\n- x\n") == (
        "a: 1\nspec:\n  serveConfigV2: |\n    new: 1\n    list:\n    - x\n\n  next: 3\n"
    )


# ---------------------------------------------------------------- the CRD -> JSON Schema rules


def test_strict_schema_refuses_what_the_api_server_would_prune() -> None:
    crd = {
        "type": "object",
        "properties": {
            "kept": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "quantity": {
                "x-kubernetes-int-or-string": True,
                "anyOf": [{"type": "integer"}, {"type": "string"}],
            },
            "port": {"x-kubernetes-int-or-string": True},
            "when": {"type": "string", "nullable": True},
            "items": {
                "type": "array",
                "x-kubernetes-list-type": "atomic",
                "items": {"type": "object", "properties": {"type": {"type": "string"}}},
            },
        },
    }

    schema = strict_schema(crd)

    assert schema["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["kept"]
    assert schema["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert schema["properties"]["port"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert schema["properties"]["when"]["type"] == ["string", "null"]
    listed = schema["properties"]["items"]
    assert "x-kubernetes-list-type" not in listed
    assert listed["items"] == {
        "type": "object",
        "properties": {"type": {"type": "string"}},
        "additionalProperties": False,
    }
    assert "x-kubernetes-" not in json.dumps(schema)
