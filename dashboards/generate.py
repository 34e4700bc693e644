"""Write this folder's Grafana dashboards and prometheus.yml from bluepri.ops.dashboards.

    python dashboards/generate.py            # (re)write them
    python dashboards/generate.py --check    # exit 1 naming every file that differs

The dashboards are defined in Python (panels, PromQL, units, legends); the files here are
what Grafana imports, committed so that they can be read, diffed and imported without
running anything. `make test` runs the check: edit the Python, then regenerate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bluepri.ops.dashboards import generated_files, stale_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming the files that differ from what would be written",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="the folder to write or check (default: this one)",
    )
    args = parser.parse_args(argv)
    files = generated_files()
    if args.check:
        stale = stale_files(args.out, files)
        for name in stale:
            print(f"{args.out / name}: differs from generate.py's output", file=sys.stderr)
        if stale:
            print("run: python dashboards/generate.py", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
