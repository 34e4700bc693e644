"""Catalogue render as a Ray Job: a YAML config plus `key=value` overrides. Prints the
summary, then one JSON line, and exits with a code a scheduler can act on:

    0  every row rendered (or was already done)
    1  the job finished, but some rows failed (each in the manifest with its reason)
    2  bad configuration or catalogue (nothing rendered)
    3  the job failed

    ray job submit --working-dir . -- python jobs/render.py jobs/configs/render_catalogue.yaml \
        catalogue=s3://bucket/catalogues/spring.csv out=s3://bucket/renders/spring

Run the same command again after a crash: rows already rendered (their image checked
against the manifest's sha256) are skipped, and the adapter versions pinned by the first
run are kept even if a promotion happened since.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

EXIT_OK, EXIT_ROWS_FAILED, EXIT_BAD_CONFIG, EXIT_FAILED = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a catalogue of prompts on Ray Data.")
    parser.add_argument("config", help="YAML with RenderConfig keys")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from bluepri.config import RenderConfig, load_yaml, parse_overrides
    from bluepri.errors import BluepriError, error_line

    try:
        config = load_yaml(args.config, RenderConfig, parse_overrides(RenderConfig, args.overrides))
        from bluepri.render import render

        result = render(config, log=lambda line: print(line, flush=True))
    except BluepriError as err:
        print(json.dumps({"status": "bad_config", "error": error_line(err)}))
        return EXIT_BAD_CONFIG
    except Exception as err:  # a scheduler needs a code and a line, not only a traceback
        traceback.print_exc()
        print(json.dumps({"status": "failed", "error": error_line(err)}))
        return EXIT_FAILED
    for line in result.summary_lines():
        print(line)
    status = "ok" if result.ok else "rows_failed"
    print(json.dumps({"status": status, **json.loads(result.model_dump_json())}))
    return EXIT_OK if result.ok else EXIT_ROWS_FAILED


if __name__ == "__main__":
    sys.exit(main())
