#!/usr/bin/env bash
# The ablations of the U-Net paper's ingredients on ISBI 2012, in one command:
#   bash reproduction/run_ablations.sh [--only NAME ...] [--fold K] [--data-dir DIR] [--full-from RUN_DIR]
#   bash reproduction/run_ablations.sh --gather JOB_RESULTS ... [--results DIR]   (one job per variant: docs/scaling_out.md)
# It prepares its own environment (.venv, pinned), fetches and verifies the data if needed, then
# trains and scores the full method (by default the `cpu` profile, `paper` with a CUDA GPU) and one variant per ingredient on
# one fold, and writes results/ablations/ (README table, ablations.csv, slice crops, figure).
# Resumable: run it again with the same options and finished variants are only re-read.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  echo
  "$py" -m paper_unet ablations --help | sed -n '/^options:/,$p'
}

die() { echo "run_ablations.sh: error: $*" >&2; echo "Try: bash reproduction/run_ablations.sh --help" >&2; exit 2; }

original_args="$*"
data_dir="" prev=""
for arg in "$@"; do
  [ "$prev" = "--data-dir" ] && data_dir="$arg"
  prev="$arg"
done
if [ -n "$data_dir" ] && [ ! -d "$data_dir" ]; then
  die "data directory '$data_dir' does not exist: create it (mkdir -p '$data_dir') to download the data there, or omit --data-dir to use the cache"
fi

source reproduction/env.sh
ensure_venv
py="$PY"
for arg in "$@"; do
  case "$arg" in -h|--help) usage; exit 0 ;; esac
done

data_args=() gathering=0
[ -n "$data_dir" ] && data_args=(--data-dir "$data_dir")
for arg in "$@"; do [ "$arg" = "--gather" ] && gathering=1; done  # gathering jobs' results trains nothing
[ "$gathering" = 1 ] || "$py" -m paper_unet download "${data_args[@]}" --quiet
start=$(date +%s)
"$py" -m paper_unet ablations "$@" --command-line "bash reproduction/run_ablations.sh $original_args"
echo "run_ablations.sh: finished in $(( $(date +%s) - start )) s" >&2
