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

import sys


def train_stage(config):
    from bluepri.jobrun import OK, JobOutcome
    from bluepri.train import train

    result = train(config, log=lambda line: print(line, flush=True))
    return JobOutcome(OK, result, [f"adapter: {result.adapter}"])


def main(argv: list[str] | None = None) -> int:
    from bluepri.config import TrainConfig
    from bluepri.jobrun import run_config_job

    return run_config_job(argv, "Fine-tune SDXL LoRA on Ray Train.", TrainConfig, train_stage)


if __name__ == "__main__":
    sys.exit(main())
