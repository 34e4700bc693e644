"""Ray Job entry point for `train`: a YAML config plus `key=value` overrides.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/train.py jobs/configs/train.yaml \
        num_workers=8 output_dir=s3://bucket/adapters/run-42 storage_path=s3://bucket/runs

Values follow the config field's type (`mixed_precision=no` is the string "no",
`learning_rate=5e-5` a float, `lora_targets=[to_q,to_v]` a list); `key=null` unsets a key
the YAML file sets. The job joins the cluster named by RAY_ADDRESS (set by
`ray job submit`), or starts a local Ray when run by hand. Exit codes and the last JSON
line: see `bluepri.jobrun` (0 ok, 2 bad config, 3 failed).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune SDXL LoRA on Ray Train.")
    parser.add_argument("config", help="YAML file with TrainConfig keys (the train flags)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)

    from bluepri.config import TrainConfig, load_yaml, parse_overrides
    from bluepri.jobrun import OK, JobOutcome, run_job

    def work() -> JobOutcome:
        config = load_yaml(args.config, TrainConfig, parse_overrides(TrainConfig, args.overrides))
        from bluepri.train import train

        result = train(config, log=lambda line: print(line, flush=True))
        return JobOutcome(OK, result, [f"adapter: {result.adapter}"])

    return run_job(work)


if __name__ == "__main__":
    sys.exit(main())
