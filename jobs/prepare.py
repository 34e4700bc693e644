"""Dataset preparation as a Ray Job: a YAML config plus `key=value` overrides. Decodes,
validates, dedups, captions (BLIP) and encodes the dataset into a training cache on Ray
Data; a cache that is already complete for the same source and settings is reused.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/prepare.py jobs/configs/prepare.yaml out=s3://bucket/caches

Exit codes and the last JSON line: see `bluepri.jobrun` (0 ok, 2 bad config, 3 failed).
"""

from __future__ import annotations

import sys


def prepare_stage(config):
    from bluepri.data.prepare import prepare
    from bluepri.jobrun import OK, JobOutcome

    info = prepare(config, log=lambda line: print(line, flush=True))
    return JobOutcome(OK, info, [f"cache: {info.uri}"])


def main(argv: list[str] | None = None) -> int:
    from bluepri.config import PrepareConfig
    from bluepri.jobrun import run_config_job

    return run_config_job(
        argv, "Prepare a training cache on Ray Data.", PrepareConfig, prepare_stage
    )


if __name__ == "__main__":
    sys.exit(main())
