#!/usr/bin/env bash
# Start a real multi-node Ray cluster on this machine: one head node and WORKERS worker
# nodes, each its own raylet with its own resources, the worker nodes carrying the custom
# resource `bluepri_worker`. The head holds no CPUs (as on KubeRay), so tasks and actors
# land on the worker nodes while drivers (submitted jobs) run on the head.
#
#   cluster/local/start.sh            # then follow what it prints (make cluster-demo: all of it)
#   WORKERS=2 WORKER_CPUS=2 cluster/local/start.sh
#   cluster/local/stop.sh
#
# Token authentication is on (the pinned Ray's default for a cluster on a machine that has
# a token): the token is made if missing (~/.ray/auth_token) and every client needs
# RAY_AUTH_MODE=token, which `env.sh` (written next to the state below) exports.
#
# Settings (environment): WORKERS (1), WORKER_CPUS (2), HEAD_CPUS (0), GCS_PORT (6379),
# DASHBOARD_PORT (8265), METRICS_PORT (8080; worker node i uses METRICS_PORT+i),
# OBJECT_STORE_MB (512 per node), STATE_DIR (~/.bluepri/local-cluster), RAY (ray on PATH).
# Ray reads RAY_* settings from the environment too, e.g. RAY_metrics_report_interval_ms.
set -euo pipefail

WORKERS=${WORKERS:-1}
WORKER_CPUS=${WORKER_CPUS:-2}
HEAD_CPUS=${HEAD_CPUS:-0}
GCS_PORT=${GCS_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
METRICS_PORT=${METRICS_PORT:-8080}
OBJECT_STORE_MB=${OBJECT_STORE_MB:-512}
STATE_DIR=${STATE_DIR:-$HOME/.bluepri/local-cluster}
RAY=${RAY:-ray}
HOST=127.0.0.1

die() { echo "cluster/local/start.sh: $*" >&2; exit 2; }
command -v "$RAY" >/dev/null || die "no '$RAY' command: activate the venv (make setup) or set RAY="
[[ "$WORKERS" =~ ^[0-9]+$ && "$WORKERS" -ge 1 ]] || die "WORKERS must be a number >= 1"
export RAY_AUTH_MODE=token
"$RAY" get-auth-token --generate >/dev/null 2>&1
if "$RAY" status --address "$HOST:$GCS_PORT" >/dev/null 2>&1; then
  die "a Ray cluster already runs at $HOST:$GCS_PORT (cluster/local/stop.sh stops it)"
fi
object_store=$((OBJECT_STORE_MB * 1024 * 1024))
mkdir -p "$STATE_DIR"

echo "starting the head node ($HOST:$GCS_PORT, dashboard :$DASHBOARD_PORT, metrics :$METRICS_PORT)"
"$RAY" start --head --node-ip-address "$HOST" --port "$GCS_PORT" \
  --num-cpus "$HEAD_CPUS" --object-store-memory "$object_store" \
  --include-dashboard true --dashboard-host "$HOST" --dashboard-port "$DASHBOARD_PORT" \
  --metrics-export-port "$METRICS_PORT" --disable-usage-stats >"$STATE_DIR/head.log" 2>&1 \
  || { cat "$STATE_DIR/head.log" >&2; die "the head node did not start"; }
# The session the head just made: Ray writes its Prometheus service-discovery file there.
session_dir=$(readlink -f "${RAY_TMPDIR:-/tmp}/ray/session_latest")

for i in $(seq 1 "$WORKERS"); do
  # Nodes on one machine need their own agent and metrics ports.
  echo "starting worker node $i ($WORKER_CPUS CPUs, resource bluepri_worker, metrics :$((METRICS_PORT + i)))"
  "$RAY" start --address "$HOST:$GCS_PORT" --node-ip-address "$HOST" \
    --num-cpus "$WORKER_CPUS" --resources '{"bluepri_worker": 1}' \
    --object-store-memory "$object_store" \
    --metrics-export-port "$((METRICS_PORT + i))" \
    --dashboard-agent-listen-port "$((DASHBOARD_PORT + 100 + 2 * i))" \
    --dashboard-agent-grpc-port "$((DASHBOARD_PORT + 101 + 2 * i))" \
    --runtime-env-agent-port "$((DASHBOARD_PORT + 200 + i))" \
    --disable-usage-stats >"$STATE_DIR/worker-$i.log" 2>&1 \
    || { cat "$STATE_DIR/worker-$i.log" >&2; die "worker node $i did not start"; }
done

cat >"$STATE_DIR/env.sh" <<ENV
# Written by cluster/local/start.sh: \`source\` it to submit jobs to the local cluster.
export RAY_AUTH_MODE=token
export RAY_ADDRESS=http://$HOST:$DASHBOARD_PORT
ENV
cat >"$STATE_DIR/cluster.json" <<JSON
{"gcs_address": "$HOST:$GCS_PORT", "dashboard_url": "http://$HOST:$DASHBOARD_PORT",
 "workers": $WORKERS, "session_dir": "$session_dir",
 "service_discovery": "$session_dir/prom_metrics_service_discovery.json"}
JSON

cat <<TXT

Ray cluster up: head + $WORKERS worker node(s).
  GCS address (bluepri commands: RAY_ADDRESS=$HOST:$GCS_PORT)
  dashboard   http://$HOST:$DASHBOARD_PORT
  metrics     Prometheus file_sd: $session_dir/prom_metrics_service_discovery.json

Submit a job (token authentication is on; scripts by absolute path, see jobs/README.md):
  source $STATE_DIR/env.sh
  ray job submit --runtime-env jobs/runtime_env.yaml -- \\
      python \$PWD/jobs/train.py \$PWD/jobs/configs/train_tiny.yaml
Stop it:
  cluster/local/stop.sh
TXT
