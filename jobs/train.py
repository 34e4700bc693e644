"""Ray Job entry point for `train`: a YAML config plus `key=value` overrides.

    ray job submit --working-dir . -- python jobs/train.py jobs/configs/train.yaml \
        num_workers=8 output_dir=s3://bucket/adapters/run-42 storage_path=s3://bucket/runs

Values are parsed as YAML (`learning_rate=5e-5`, `train_text_encoder=false`,
`lora_targets=[to_q,to_v]`). The job joins the cluster named by RAY_ADDRESS (set by
`ray job submit`), or starts a local Ray when run by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings -> {key: YAML-parsed value}."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"bluepri: error: override {item!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune SDXL LoRA on Ray Train.")
    parser.add_argument("config", help="YAML file with TrainConfig keys (the train flags)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from bluepri.config import TrainConfig, load_yaml
    from bluepri.errors import BluepriError

    try:
        config = load_yaml(args.config, TrainConfig, parse_overrides(args.overrides))
        from bluepri.train import train

        result = train(config)
    except BluepriError as err:
        print(f"bluepri: error: {err}", file=sys.stderr)
        return 2
    print(result.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
