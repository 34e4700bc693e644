"""Evaluation as a Ray Job: the base model and adapters on one held-out split and prompt set,
fixed seeds (held-out loss, blueprint score, CLIP score, FID/KID), and an HTML report.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/eval.py jobs/configs/eval.yaml adapters='[blueprints@champion]'

Exit codes and the last JSON line: see `bluepri.jobrun` (0 measured and reported; 2 bad
configuration or input: an unknown adapter, an adapter for another base, no prompts;
3 the job failed). Generation runs on the render stages, so a rerun into the same folder
renders only the images that are missing.
"""

from __future__ import annotations

import sys


def eval_stage(config):
    from bluepri.eval import evaluate
    from bluepri.jobrun import OK, JobOutcome

    result = evaluate(config, log=lambda line: print(line, flush=True))
    return JobOutcome(OK, result, result.summary_lines())


def main(argv: list[str] | None = None) -> int:
    from bluepri.config import EvalConfig
    from bluepri.jobrun import run_config_job

    return run_config_job(
        argv, "Evaluate the base model and adapters; write the report.", EvalConfig, eval_stage
    )


if __name__ == "__main__":
    sys.exit(main())
