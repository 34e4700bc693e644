#!/usr/bin/env bash
# Stop the cluster cluster/local/start.sh started. `ray stop` stops every Ray node process
# on this machine (Ray has no per-cluster stop), so a local Ray that a bluepri command
# started on its own goes too.
set -euo pipefail
STATE_DIR=${STATE_DIR:-$HOME/.bluepri/local-cluster}
RAY=${RAY:-ray}
"$RAY" stop --force >/dev/null 2>&1 || true
rm -f "$STATE_DIR/env.sh" "$STATE_DIR/cluster.json"
echo "local Ray cluster stopped"
