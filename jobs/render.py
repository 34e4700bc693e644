"""Catalogue render as a Ray Job: a YAML config plus `key=value` overrides.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/render.py jobs/configs/render_catalogue.yaml \
        catalogue=s3://bucket/catalogues/spring.csv out=s3://bucket/renders/spring

Exit codes and the last JSON line: see `bluepri.jobrun` (0 every row rendered or already
done; 1 the job finished but some rows failed, each in the manifest with its reason;
2 bad configuration or catalogue, nothing rendered; 3 the job failed).

Run the same command again after a crash: rows already rendered (their image checked
against the manifest's sha256) are skipped, and the adapter versions pinned by the first
run are kept even if a promotion happened since.
"""

from __future__ import annotations

import sys


def render_stage(config):
    from bluepri.jobrun import OK, JobOutcome
    from bluepri.render import render

    result = render(config, log=lambda line: print(line, flush=True))
    return JobOutcome(OK if result.ok else "rows_failed", result, result.summary_lines())


def main(argv: list[str] | None = None) -> int:
    from bluepri.config import RenderConfig
    from bluepri.jobrun import run_config_job

    return run_config_job(
        argv, "Render a catalogue of prompts on Ray Data.", RenderConfig, render_stage
    )


if __name__ == "__main__":
    sys.exit(main())
