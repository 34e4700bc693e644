"""The `bluepri` command: the demo end to end, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from bluepri.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "data", "synth", "--out", str(tmp_path / "s"), "--num-images", "6", "--seed", "1"
    )
    assert code == 0
    assert len(list((tmp_path / "s").glob("*.png"))) == 6
    assert out.strip().splitlines()[-1] == str(tmp_path / "s")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--num-images", "0"], "num_images"),
        (["generate", "--prompt", "x", "--out", "o.png", "--base", "tiny:nope"], "tiny:nope"),
        (["generate", "--prompt", "x", "--out", "o.png", "--base", "{tmp}"], "not a diffusers"),
        (["demo", "--out", "{tmp}/a-file"], "is a file"),
        (["data", "synth", "--out", "{tmp}/a-file"], "file"),
        (
            ["data", "prepare", "--source", "{tmp}", "--out", "{tmp}/c", "--model_stage", "gpu"],
            "model_stage: Input should be 'auto', 'driver' or 'actors'",
        ),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    code, _, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bluepri: error:") and message in lines[0]
    assert "Traceback" not in err
