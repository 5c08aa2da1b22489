#!/usr/bin/env bash
# The ISBI 2012 reproduction of the U-Net paper, in one command:
#   bash reproduction/run_isbi.sh [--profile paper|cpu|smoke] [--data-dir DIR] [--out DIR] [--results DIR]
# It prepares its own environment (.venv, pinned), fetches and verifies the data if needed, runs the
# 3-fold cross-validation, trains the final model, predicts test-volume.tif in the submission format
# (with TTA in paper and cpu, without in smoke), scores it when test-labels.tif is present, writes results/.
# An interrupted run resumes where it stopped when started again with the same options.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'TXT'

Options:
  --profile NAME   paper (full width, 572 tiles; needs a CUDA GPU), cpu (width 16, 572 tiles; for
                   2 CPU cores: bf16 on a CPU with native bf16, fp32 elsewhere), smoke (a pipeline
                   check in minutes). Default: paper when a CUDA GPU is available, else cpu. The
                   measured wall times per machine: results/measurements.json. Before the long
                   work the run measures a few steps and prints its estimate for this machine.
  --data-dir DIR   an existing folder for the ISBI 2012 stacks; they are downloaded into it if
                   missing (a folder that does not exist is an error, to catch typos). Default:
                   $PAPER_UNET_DATA, else $XDG_CACHE_HOME/paper_unet/isbi2012 (~/.cache/... when
                   XDG_CACHE_HOME is unset), created and filled on first use
  --out DIR        run directory: checkpoints, logs, submission (default runs/isbi2012_PROFILE)
  --results DIR    tables, CSVs and figures (default results/isbi2012_PROFILE)
  --set KEY=VALUE  override a config value, e.g. --set optim.iterations=2000 (repeatable)
  --lr-search DIR  include a learning-rate search (reproduction/tune_lr.py) in the report
  --gpus N         data-parallel training on N GPUs of this machine (torchrun, one tile per GPU
                   per step: the effective batch is N tiles; see docs/scaling_out.md)
  --parallel-folds run the cross-validation folds and the final model as independent processes
                   at the same time, fold k on GPU k mod N and the final model on GPU (folds mod N)
                   (with --gpus 1 all on one GPU, which a single tile per step does not fill), then
                   gather, score and report. On CUDA they share the GPU through CUDA MPS (their
                   kernels run at once, not by time-slicing) where the machine allows it: the
                   script starts the MPS daemon for the run and stops it afterwards, and falls back
                   to time-slicing, saying so, where it cannot start
  --no-mps         with --parallel-folds: never start CUDA MPS
  --cv-only        the cross-validation alone: no final model and no test-volume submission (the
                   report says so); with --parallel-folds, one process per fold
  --from-previous  resume each unfinished training from its last.prev.pt (the checkpoint before
                   last.pt), for a last.pt that does not load

Interruptions: Ctrl-C or SIGTERM (a cluster's preemption, docker stop) stops cleanly: each training
finishes its step and writes a checkpoint, and the script exits with 128 + the signal's number (130,
143); a second signal stops at once. The same command again resumes. One run per --out folder: a
second run on a folder in use stops at once and names the process that holds it.
  -h, --help       this help
TXT
}

die() { echo "run_isbi.sh: error: $*" >&2; echo "Try: bash reproduction/run_isbi.sh --help" >&2; exit 2; }

original_args="$*"
profile="" data_dir="" out="" results="" lr_search="" sets=() gpus=1 parallel_folds=0 cv_only=0 from_previous=0 mps=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || die "--profile needs a value"; profile="$2"; shift 2 ;;
    --data-dir) [ $# -ge 2 ] || die "--data-dir needs a value"; data_dir="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; out="$2"; shift 2 ;;
    --results) [ $# -ge 2 ] || die "--results needs a value"; results="$2"; shift 2 ;;
    --set) [ $# -ge 2 ] || die "--set needs KEY=VALUE"; sets+=(--set "$2"); shift 2 ;;
    --lr-search) [ $# -ge 2 ] || die "--lr-search needs a value"; lr_search="$2"; shift 2 ;;
    --gpus) [ $# -ge 2 ] || die "--gpus needs a number"; gpus="$2"; shift 2 ;;
    --parallel-folds) parallel_folds=1; shift ;;
    --no-mps) mps=0; shift ;;
    --cv-only) cv_only=1; shift ;;
    --from-previous) from_previous=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1'" ;;
  esac
done
case "$profile" in
  ""|paper|cpu|smoke) ;;
  *) [ -f "$profile" ] || die "unknown profile '$profile' (choose paper, cpu or smoke, or give a TOML file)" ;;
esac
case "$gpus" in ''|*[!0-9]*|0) die "--gpus needs a positive whole number, got '$gpus'" ;; esac
if [ -n "$data_dir" ] && [ ! -d "$data_dir" ]; then
  die "data directory '$data_dir' does not exist: create it (mkdir -p '$data_dir') to download the data there, or omit --data-dir to use the cache"
fi

source reproduction/env.sh
ensure_venv
py="$PY"

cuda=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ -z "$profile" ]; then
  profile=$("$py" -m paper_unet config --get name)  # the package's one rule (config.default_profile): by device
  if [ "$cuda" != 1 ]; then
    cat >&2 <<'TXT'
========================================================================================
 No CUDA GPU found: running the `cpu` profile (width 16, 572-px tiles). How long it
 took on 2 cores of a CPU with native bf16 and how long it takes on an AVX2-only one:
 results/measurements.json; the estimate for this machine follows.
 Its numbers are a CPU reproduction, NOT the paper setting.
 The paper profile (full width, 572 tiles) needs a CUDA GPU: --profile paper.
========================================================================================
TXT
  fi
fi
if [ "$profile" = paper ] && [ "$cuda" != 1 ]; then
  echo "run_isbi.sh: warning: the paper profile on a CPU takes days; use --profile cpu" >&2
fi

data_args=()
[ -n "$data_dir" ] && data_args=(--data-dir "$data_dir")
"$py" -m paper_unet download "${data_args[@]}" --quiet

args=(--profile "$profile" "${data_args[@]}" "${sets[@]}")
[ -n "$out" ] && args+=(--out "$out")
[ -n "$results" ] && args+=(--results "$results")
[ -n "$lr_search" ] && args+=(--lr-search "$lr_search")
[ "$cv_only" = 1 ] && args+=(--cv-only)
[ "$from_previous" = 1 ] && args+=(--from-previous)
if [ "$gpus" -gt 1 ]; then
  visible=$("$py" -c 'import torch; print(torch.cuda.device_count())')
  [ "$visible" -ge "$gpus" ] || die "--gpus $gpus asked for, but this machine has $visible CUDA GPU(s)"
fi
start=$(date +%s)
cmdline="bash reproduction/run_isbi.sh $original_args (profile $profile)"
# resolved by the package, with the user's --set (a bad key or value stops here, with the package's message)
folds=$("$py" -m paper_unet config --profile "$profile" "${sets[@]}" --get run.folds) || die "the configuration does not resolve (see above)"
if [ "$parallel_folds" = 1 ] || [ "$gpus" -gt 1 ]; then  # one estimate, before the processes start
  est_args=(--profile "$profile" "${data_args[@]}" "${sets[@]}" --parallel $(( parallel_folds ? folds + 1 - cv_only : 1 )))
  [ -n "$out" ] && est_args+=(--out "$out")
  [ "$cv_only" = 1 ] && est_args+=(--cv-only)
  "$py" -m paper_unet estimate "${est_args[@]}" || echo "run_isbi.sh: no estimate (see above); going on" >&2
  args+=(--no-estimate)
fi
# Interruptions: SIGTERM (a cluster's preemption, `docker stop`) and SIGINT (Ctrl-C) are passed on, once, to
# the training processes, which finish their step, checkpoint and exit 128 + the signal; this script then
# exits with that status. Job control (set -m, only while starting one) puts each child in its own process
# group, so a Ctrl-C reaches it only through us (not twice: a second signal ends a process at once).
children=()
forward() { local pid; for pid in "${children[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done; }
trap 'forward TERM' TERM
trap 'forward INT' INT
child() { set -m; "$@" & set +m; children+=($!); }  # start a process in the background; its PID is $!
wait_child() {  # wait for one, through forwarded signals (they interrupt `wait`); its exit status
  local status
  while :; do
    wait "$1" && status=0 || status=$?
    kill -0 "$1" 2>/dev/null || return "$status"
  done
}
failed() {  # a child's non-zero exit status: a clean stop on a signal, or a failure
  { [ "$1" = 130 ] || [ "$1" = 143 ]; } && {
    echo "run_isbi.sh: stopped cleanly (exit $1): what was done is saved; run the same command again to resume" >&2
    exit "$1"; }
  die "$2 failed (exit $1); run the same command again to resume"
}
# CUDA MPS for --parallel-folds (reproduction/mps.sh), stopped on exit
source reproduction/mps.sh
trap stop_mps EXIT
if [ "$parallel_folds" = 1 ]; then
  if [ "$cuda" = 1 ] && [ "$mps" = 1 ]; then start_mps "$py"; fi
  pids=()
  for ((k = 0; k < folds; k++)); do
    CUDA_VISIBLE_DEVICES=$((k % gpus)) child "$py" -m paper_unet reproduce "${args[@]}" --only-fold "$k" --quiet \
      --command-line "$cmdline"
    pids+=($!)
  done
  if [ "$cv_only" = 0 ]; then
    CUDA_VISIBLE_DEVICES=$((folds % gpus)) child "$py" -m paper_unet reproduce "${args[@]}" --only-final --quiet \
      --command-line "$cmdline"
    pids+=($!)
  fi
  worst=0  # wait for all of them (after a signal each saves its own state), then report
  for pid in "${pids[@]}"; do wait_child "$pid" || { status=$?; [ "$worst" != 0 ] || worst=$status; }; done
  [ "$worst" = 0 ] || failed "$worst" "a fold or final-model process"
  CUDA_VISIBLE_DEVICES=0 child "$py" -m paper_unet reproduce "${args[@]}" --command-line "$cmdline" --started-at "$start"
  wait_child $! || failed $? "gathering and reporting"
elif [ "$gpus" -gt 1 ]; then
  child "$py" -m torch.distributed.run --standalone --nproc_per_node="$gpus" -m paper_unet reproduce "${args[@]}" \
    --command-line "$cmdline"
  wait_child $! || failed $? "the data-parallel reproduction"
else
  child "$py" -m paper_unet reproduce "${args[@]}" --command-line "$cmdline"
  wait_child $! || failed $? "the reproduction"
fi
echo "run_isbi.sh: finished in $(( $(date +%s) - start )) s" >&2
