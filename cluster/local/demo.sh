#!/usr/bin/env bash
# The platform as Ray Jobs on the local multi-node cluster (`make cluster-demo`):
# start the cluster, make a synthetic dataset, then through `ray job submit`:
# train (2 workers) -> register the adapter -> nightly search (promotes its winner) ->
# render a small catalogue with the champion; then stop the cluster.
# Everything is written under OUT (default /tmp/bluepri), which the tiny job configs name.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/bluepri}
export STATE_DIR=${STATE_DIR:-$HOME/.bluepri/local-cluster}

cluster/local/start.sh
trap 'cluster/local/stop.sh' EXIT
# shellcheck disable=SC1091
source "$STATE_DIR/env.sh"

rm -rf "$OUT" && mkdir -p "$OUT"
bluepri data synth --out "$OUT/dataset" --num-images 16 --seed 0 >/dev/null
submit() {  # scripts by absolute path: see jobs/runtime_env.yaml
  local job=$1; shift
  echo "== ray job submit: jobs/$job $*"
  ray job submit --runtime-env jobs/runtime_env.yaml -- python "$PWD/jobs/$job" "$@" \
    | grep -v -E "(INFO|SUCC) (sdk|cli)\.py" | tail -n 4
}
submit train.py "$PWD/jobs/configs/train_tiny.yaml" "train_data_dir=$OUT/dataset" \
  "output_dir=$OUT/adapter"
bluepri adapters put "$OUT/adapter" --name blueprints --registry "$OUT/registry"
submit nightly_tune.py "$PWD/jobs/configs/nightly_tune_tiny.yaml" "registry=$OUT/registry" \
  "storage_path=$OUT/tune" "train.train_data_dir=$OUT/dataset"
printf 'id,prompt,seed\n' >"$OUT/catalogue.csv"
for i in 0 1 2 3 4 5 6 7; do
  printf 'row-%s,blueprint of a house with %s rooms,%s\n' "$i" "$((i + 2))" "$i" >>"$OUT/catalogue.csv"
done
submit render.py "$PWD/jobs/configs/render_tiny.yaml" "catalogue=$OUT/catalogue.csv" \
  "out=$OUT/renders" "registry=$OUT/registry"
ray job list 2>/dev/null | grep -o -E "submission_id='[^']+'|status=<JobStatus.[A-Z]+" \
  | paste - - || true
echo "renders: $OUT/renders/gallery.html"
