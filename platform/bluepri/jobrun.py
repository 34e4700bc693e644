"""What every Ray Job entry point in jobs/ shares: how it ends.

A job prints its human summary, then ONE JSON line last (`{"status": ..., ...}`), and exits
with a code a scheduler (KubeRay, cron, Airflow) can act on:

    0  ok: the stage did all its work
    1  finished, but not wholly: some rows failed, no trial completed (see "status")
    2  bad configuration or input: nothing ran
    3  the job failed (the traceback is on stderr, its last line in the JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from bluepri.errors import BluepriError, error_line

EXIT_OK, EXIT_PARTIAL, EXIT_BAD_CONFIG, EXIT_FAILED = 0, 1, 2, 3
OK = "ok"


@dataclass
class JobOutcome:
    """A stage's result as a job reports it: "ok" or the name of what was left undone."""

    status: str
    result: BaseModel
    summary: list[str] = field(default_factory=list)


def summary_json(status: str, result: BaseModel | None = None, **extra: Any) -> str:
    """The job's last line: its status and the stage's typed result, as one JSON object."""
    body = json.loads(result.model_dump_json()) if result is not None else {}
    return json.dumps({"status": status, **body, **extra})


def run_job(work: Callable[[], JobOutcome]) -> int:
    """Run a job's work; print its summary and JSON line; return the exit code."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        outcome = work()
    except BluepriError as err:
        print(f"bluepri: error: {error_line(err)}", file=sys.stderr)
        print(summary_json("bad_config", error=error_line(err)), flush=True)
        return EXIT_BAD_CONFIG
    except Exception as err:  # a scheduler needs a code and a line, not only a traceback
        traceback.print_exc()
        print(summary_json("failed", error=error_line(err)), flush=True)
        return EXIT_FAILED
    for line in outcome.summary:
        print(line)
    print(summary_json(outcome.status, outcome.result), flush=True)
    return EXIT_OK if outcome.status == OK else EXIT_PARTIAL


def config_job_parser(description: str, config_help: str) -> argparse.ArgumentParser:
    """`JOB CONFIG.yaml [key=value ...]`: what every job's command line starts with."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help=config_help)
    parser.add_argument("overrides", nargs="*", help="key=value overrides (a.b=value: nested)")
    return parser


def run_config_job(
    argv: list[str] | None,
    description: str,
    model: type[BaseModel],
    stage: Callable[[Any], JobOutcome],
) -> int:
    """Parse `CONFIG.yaml key=value ...` into `model` and run `stage` on it as a job."""
    args = config_job_parser(description, f"YAML with {model.__name__} keys").parse_args(argv)

    def work() -> JobOutcome:
        from bluepri.config import load_yaml, parse_overrides

        return stage(load_yaml(args.config, model, parse_overrides(model, args.overrides)))

    return run_job(work)
