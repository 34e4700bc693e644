"""Nightly search as a Ray Job: prepare (a no-op when the data did not change) -> tune ->
promote only if better. Prints one JSON summary line last and exits with a code a
scheduler can act on:

    0  the search finished; the champion was promoted or kept (see "decision")
    1  the search finished but no trial completed (nothing to promote)
    2  bad configuration (nothing ran)
    3  the search failed

    ray job submit --working-dir . -- python jobs/nightly_tune.py jobs/configs/nightly_tune.yaml
    python jobs/nightly_tune.py jobs/configs/nightly_tune.yaml --resume   # after a crash
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from datetime import datetime

EXIT_OK, EXIT_NO_WINNER, EXIT_BAD_CONFIG, EXIT_FAILED = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Nightly LoRA hyperparameter search.")
    parser.add_argument("config", help="YAML with SearchConfig keys")
    parser.add_argument("--resume", action="store_true", help="continue tonight's search")
    parser.add_argument("--experiment_name", help="default: <config's name>-<date>")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from bluepri.config import SearchConfig, load_yaml
    from bluepri.errors import BluepriError, error_line
    from bluepri.tune import tune
    from bluepri.tune.results import summary_lines

    try:
        config = load_yaml(args.config, SearchConfig)
        name = args.experiment_name or f"{config.experiment_name}-{datetime.now():%Y%m%d}"
        config = config.model_copy(update={"experiment_name": name})
        result = tune(config, resume=args.resume, log=lambda line: print(line, flush=True))
    except BluepriError as err:
        print(json.dumps({"status": "bad_config", "error": error_line(err)}))
        return EXIT_BAD_CONFIG
    except Exception as err:  # a scheduler needs a code and a line, not only a traceback
        traceback.print_exc()  # the whole story goes to stderr, the JSON line gets one line
        print(json.dumps({"status": "failed", "error": error_line(err)}))
        return EXIT_FAILED
    for line in summary_lines(result):
        print(line)
    status = "ok" if result.best_trial else "no_completed_trial"
    print(json.dumps({"status": status, **json.loads(result.model_dump_json())}))
    return EXIT_OK if result.best_trial else EXIT_NO_WINNER


if __name__ == "__main__":
    sys.exit(main())
