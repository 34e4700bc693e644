"""Dataset preparation as a Ray Job: a YAML config plus `key=value` overrides. Decodes,
validates, dedups, captions (BLIP) and encodes the dataset into a training cache on Ray
Data; a cache that is already complete for the same source and settings is reused.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/prepare.py jobs/configs/prepare.yaml out=s3://bucket/caches

Exit codes and the last JSON line: see `bluepri.jobrun` (0 ok, 2 bad config, 3 failed).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare a training cache on Ray Data.")
    parser.add_argument("config", help="YAML with PrepareConfig keys (the `data prepare` flags)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)

    from bluepri.config import PrepareConfig, load_yaml, parse_overrides
    from bluepri.jobrun import OK, JobOutcome, run_job

    def work() -> JobOutcome:
        config = load_yaml(
            args.config, PrepareConfig, parse_overrides(PrepareConfig, args.overrides)
        )
        from bluepri.data.prepare import prepare

        info = prepare(config, log=lambda line: print(line, flush=True))
        return JobOutcome(OK, info, [f"cache: {info.uri}"])

    return run_job(work)


if __name__ == "__main__":
    sys.exit(main())
