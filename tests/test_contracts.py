"""Configs and job overrides as contracts: bad input is one line before any work, and
`key=value` overrides mean what the config field's type says. No Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bluepri.cli import main
from bluepri.config import SearchConfig, TrainConfig, build_config, load_yaml
from bluepri.errors import BluepriError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", ".hidden", "", "x" * 101])
def test_search_config_refuses_an_unsafe_adapter_name_up_front(name: str) -> None:
    with pytest.raises(BluepriError, match="adapter_name"):
        build_config(SearchConfig, {"adapter_name": name})


def test_a_non_utf8_yaml_config_is_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "train.yaml"
    config.write_bytes(b"learning_rate: 1e-4\noutput_dir: caf\xe9\n")
    with pytest.raises(BluepriError, match="not UTF-8"):
        load_yaml(config, TrainConfig)
    code = main(["tune", "--config", str(config)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("bluepri: error:")


def test_overrides_follow_the_config_fields_types(tmp_path: Path) -> None:
    from bluepri.config import parse_overrides

    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump({"dataset_name": "Sisigoks/Blueprints", "mixed_precision": "bf16"})
    )
    overrides = parse_overrides(
        TrainConfig,
        [
            "mixed_precision=no",  # YAML 1.1 would make this False
            "dataset_name=null",  # unsets what the file sets
            "train_data_dir=data/no",  # a path is a string, whatever YAML thinks of it
            "learning_rate=5e-5",
            "train_text_encoder=false",
            "lora_targets=[to_q, to_v]",
            "validation_prompt=yes",
            "seed=7",
        ],
    )
    loaded = load_yaml(config, TrainConfig, overrides)
    assert loaded.mixed_precision == "no"
    assert loaded.dataset_name is None and loaded.train_data_dir == "data/no"
    assert loaded.learning_rate == 5e-5 and loaded.train_text_encoder is False
    assert loaded.lora_targets == ["to_q", "to_v"]
    assert loaded.validation_prompt == "yes" and loaded.seed == 7


def test_dotted_overrides_set_one_key_of_a_sub_config(tmp_path: Path) -> None:
    from bluepri.config import ModelsConfig, RenderConfig, SearchConfig, parse_overrides

    render_file = tmp_path / "render.yaml"
    render_file.write_text(
        yaml.safe_dump(
            {
                "catalogue": "c.csv",
                "out": "o",
                "models": {"base": "tiny:base", "refiner": "tiny:refiner", "dtype": "float16"},
            }
        )  # fmt: skip
    )
    render = load_yaml(
        render_file, RenderConfig, parse_overrides(RenderConfig, ["models.device=cuda:1",
                                                                  "models.refiner=null"])
    )  # fmt: skip
    # The file's other model keys stay; the dotted ones are typed by ModelsConfig, and null
    # unsets the file's refiner so ModelsConfig's default holds.
    assert (render.models.base, render.models.dtype) == ("tiny:base", "float16")
    assert render.models.device == "cuda:1"
    assert render.models.refiner == ModelsConfig().refiner != "tiny:refiner"

    search_file = tmp_path / "search.yaml"
    search_file.write_text(
        yaml.safe_dump(
            {
                "space": {"learning_rate": {"kind": "loguniform", "low": 1e-4, "high": 1e-3}},
                "train": {"resolution": 64, "num_workers": 2},
            }
        )  # fmt: skip
    )
    items = ["train.num_workers=4", "train.mixed_precision=no", "train.train_data_dir=/d/no"]
    search = load_yaml(search_file, SearchConfig, parse_overrides(SearchConfig, items))
    assert search.train == {"resolution": 64, "num_workers": 4, "mixed_precision": "no",
                            "train_data_dir": "/d/no"}  # fmt: skip


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("nonsense=1", "unknown key 'nonsense'"),
        ("no_equals_sign", "not key=value"),
        ("learning_rate.x=1", "'learning_rate' has no keys to set"),
    ],
)
def test_bad_overrides_are_one_line(item: str, message: str) -> None:
    from bluepri.config import parse_overrides

    with pytest.raises(BluepriError, match=message):
        parse_overrides(TrainConfig, [item])


def test_train_job_applies_typed_overrides(tiny_models, tmp_path: Path) -> None:
    """`jobs/train.py cfg mixed_precision=no` gets past config validation (it used to fail:
    YAML turned `no` into false); it stops at the missing data, one line, exit 2."""
    config = tmp_path / "train.yaml"
    values = {
        "train_data_dir": str(tmp_path / "none"),
        "pretrained_model_name_or_path": "tiny:base",
    }
    config.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [sys.executable, "jobs/train.py", str(config), "mixed_precision=no"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "does not exist" in errors[0], done.stderr


def test_resume_refuses_a_folder_without_a_matching_search(tmp_path: Path) -> None:
    """Tune's saved state is a pickle: only a folder that holds this very search is restored."""
    from bluepri.tune import tune

    experiment = tmp_path / "runs" / "nightly"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"\x80\x04crafted")
    config = build_config(
        SearchConfig,
        {
            "storage_path": str(tmp_path / "runs"),
            "experiment_name": "nightly",
            "train": {"cache": str(tmp_path / "no-cache")},
        },
    )
    with pytest.raises(BluepriError, match="not a bluepri search"):
        tune(config, resume=True, log=lambda _: None)
    other = config.model_copy(update={"num_trials": 99})
    (experiment / "search.json").write_text(json.dumps(other.model_dump(mode="json")))
    with pytest.raises(BluepriError, match="holds another search"):
        tune(config, resume=True, log=lambda _: None)


def test_a_remote_traceback_becomes_one_line(ray_session) -> None:
    """What the nightly job's JSON line carries when a search fails on the cluster."""
    import ray

    from bluepri.errors import error_line

    @ray.remote
    def fails() -> None:
        raise ValueError("the shard is corrupt")

    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(fails.remote())
    assert len(str(caught.value).splitlines()) > 3  # Ray's remote traceback
    line = error_line(caught.value)
    assert "\n" not in line and line.endswith("ValueError: the shard is corrupt")
