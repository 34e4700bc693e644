"""Nightly search as a Ray Job: prepare (a no-op when the data did not change) -> tune ->
promote only if better. Exit codes and the last JSON line: see `bluepri.jobrun` (0 the
champion was promoted or kept, see "decision"; 1 no trial completed, nothing to promote;
2 bad configuration, nothing ran; 3 the search failed).

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/nightly_tune.py jobs/configs/nightly_tune.yaml
    python jobs/nightly_tune.py jobs/configs/nightly_tune.yaml --resume   # after a crash

Overrides (`key=value`, typed as the SearchConfig field) follow the config file.
"""

from __future__ import annotations

import sys
from datetime import datetime


def main(argv: list[str] | None = None) -> int:
    from bluepri.jobrun import config_job_parser

    parser = config_job_parser("Nightly LoRA hyperparameter search.", "YAML with SearchConfig keys")
    parser.add_argument("--resume", action="store_true", help="continue tonight's search")
    parser.add_argument("--experiment_name", help="default: <config's name>-<date>")
    args = parser.parse_args(argv)

    from bluepri.config import SearchConfig, load_yaml, parse_overrides
    from bluepri.jobrun import OK, JobOutcome, run_job

    def work() -> JobOutcome:
        config = load_yaml(args.config, SearchConfig, parse_overrides(SearchConfig, args.overrides))
        name = args.experiment_name or f"{config.experiment_name}-{datetime.now():%Y%m%d}"
        config = config.model_copy(update={"experiment_name": name})
        from bluepri.tune import tune
        from bluepri.tune.results import summary_lines

        result = tune(config, resume=args.resume, log=lambda line: print(line, flush=True))
        status = OK if result.best_trial else "no_completed_trial"
        return JobOutcome(status, result, summary_lines(result))

    return run_job(work)


if __name__ == "__main__":
    sys.exit(main())
