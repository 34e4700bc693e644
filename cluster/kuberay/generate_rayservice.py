"""Write (or, with --check, compare) the serveConfigV2 of cluster/kuberay/rayservice.yaml.

    python cluster/kuberay/generate_rayservice.py           # regenerate the block
    python cluster/kuberay/generate_rayservice.py --check   # exit 1 if it is stale

The block is generated from jobs/configs/serve.yaml (bluepri.ops.rayservice); the rest of
the manifest is hand-written and kept as it is. Needs bluepri installed (the repo's .venv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    from bluepri.ops.rayservice import RAYSERVICE, SERVE_CONFIG, render_rayservice

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--serve-config", type=Path, default=ROOT / SERVE_CONFIG)
    parser.add_argument("--manifest", type=Path, default=ROOT / RAYSERVICE)
    args = parser.parse_args(argv)

    current = args.manifest.read_text(encoding="utf-8")
    wanted = render_rayservice(args.serve_config, args.manifest)
    if args.check:
        if current == wanted:
            return 0
        from bluepri.ops.rayservice import first_difference

        print(
            f"{args.manifest}: serveConfigV2 is stale ({first_difference(current, wanted)}); "
            f"run python {Path(__file__).relative_to(ROOT)}",
            file=sys.stderr,
        )
        return 1
    if current != wanted:
        args.manifest.write_text(wanted, encoding="utf-8")
        print(f"wrote {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
