#!/usr/bin/env bash
# One short slot on a lent CUDA GPU: 15 minutes of machine time, its start (a few minutes) included, so
# about 11 minutes of command time, in two calls of at most 10 minutes each; only a few small files come
# back (8 of at most 16 MiB each). Measure first, then run what the measurement allows:
#
#   here, once:  bash reproduction/gpu_session.sh prepare
#                copies ../shared (the ISBI stacks, the metric references) to .gpu_shared/, which git
#                ignores and the device call carries (carry: [".gpu_shared"]), and prints the two calls
#   call 1:      bash reproduction/gpu_session.sh first SECONDS OUTDIR        (620 and timeout_s 590)
#                1. versions and the GPU (env.txt)
#                2. the CUDA tests alone, capped at 90 s, failures in full (tests_cuda.log)
#                3. profile_step.py, capped at 150 s: the step lever by lever (profile_step.json,
#                   performance.md with its section)
#                4. the plan (gpu_plan.py: the whole reproduction, else fold 2 as shipped, else fold 2
#                   shortened), sized to end SECONDS after this call started (plan.txt)
#                5. the run, started in its own process session so that it outlives the call
#                6. its progress, copied into OUTDIR every 20 s until 560 s after the start
#                   (progress.txt; val_logs.txt: every validation so far), so a cut-off loses nothing;
#                   a run that ended by then is packed as by `finish`
#   call 2:      bash reproduction/gpu_session.sh finish OUTDIR [SECONDS]    (timeout_s 150)
#                follows the run to its end (at most SECONDS, default 100), then packs its logs, scores
#                and report into OUTDIR/run.tgz (no checkpoints, no probability maps)
#   bash reproduction/gpu_session.sh plan PROFILE_JSON SECONDS   # only print what `first` would run
#
# Call 2 must follow call 1 within the machine's idle time (30 s on an H200): a machine given back in
# between takes the run with it; what call 1 copied into OUTDIR came back all the same. The budget, for a
# start of 2-3 minutes: call 1 560 s + call 2 up to 100 s + transfers, about 14 of the 15 minutes; the run
# gets what the tests and the profile leave of its 620 s (typically 400-450 s).
# Environment: PAPER_UNET_PYTHON (the interpreter with torch; default python3), PAPER_UNET_SHARED (the
# folder holding data/isbi2012 and metrics_reference; default .gpu_shared, else ../shared).
# Nothing is written to tracked paths except results/performance.md (profile_step.py's section, copied
# to OUTDIR): runs go to runs/gpu/.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
py="${PAPER_UNET_PYTHON:-python3}"
export PAPER_UNET_PYTHON="$py" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
shared="${PAPER_UNET_SHARED:-}"
[ -n "$shared" ] || { [ -d .gpu_shared/data/isbi2012 ] && shared="$PWD/.gpu_shared" || shared="$PWD/../shared"; }
export PAPER_UNET_SHARED="$shared"
data="$shared/data/isbi2012"
log=runs/gpu
run_dir=runs/gpu/paper
mkdir -p "$log"

follow() {  # follow UNTIL_EPOCH OUTDIR: progress into OUTDIR every 20 s until the run ends or UNTIL
  local until="$1" dir="$2" line f
  while [ "$(date +%s)" -lt "$until" ]; do
    line="$(date -u +%T)"
    for f in "$run_dir"/fold*/train_log.csv "$run_dir"/final/train_log.csv; do
      [ -f "$f" ] && line+=" | ${f#"$run_dir"/} $(tail -1 "$f" | cut -d, -f1,2,4)"
    done
    echo "$line" | tee -a "$dir/progress.txt"
    for f in "$run_dir"/fold*/val_log.csv "$run_dir"/final/val_log.csv; do
      [ -f "$f" ] && { echo "== ${f#"$run_dir"/}"; cat "$f"; }
    done > "$dir/val_logs.txt" 2>/dev/null
    running || break
    sleep 20
  done
  tail -5 "$log/reproduce.log" 2>/dev/null
}
running() { [ -f "$log/run.pid" ] && kill -0 "$(cat "$log/run.pid")" 2>/dev/null; }
pack() {  # pack OUTDIR: the run's logs, scores and report (no checkpoints, no probability maps)
  tail -40 "$log/reproduce.log" > "$1/reproduce_tail.log" 2>/dev/null
  tar czf "$1/run.tgz" --exclude='*.pt' --exclude='*.tif' "$run_dir" "$log"/*.log "$log/isbi2012_paper" 2>/dev/null
  ls -la "$1"
}

case "${1:-}" in
  prepare)
    src="${PAPER_UNET_SHARED:-$PWD/../shared}"
    mkdir -p .gpu_shared/data
    cp -r "$src/data/isbi2012" .gpu_shared/data/ && cp -r "$src/metrics_reference" .gpu_shared/
    grep -qx '/.gpu_shared/' .git/info/exclude 2>/dev/null || echo '/.gpu_shared/' >> .git/info/exclude
    du -sh .gpu_shared
    echo "call 1: run(command='bash reproduction/gpu_session.sh first 620 \$OUT', carry=['.gpu_shared'], timeout_s=590)"
    echo "call 2, at once: run(command='bash reproduction/gpu_session.sh finish \$OUT', carry=['.gpu_shared'], timeout_s=150)"
    ;;
  first)
    seconds="${2:?first needs SECONDS: from now to the end of the run}" out="${3:?first needs OUTDIR}"
    mkdir -p "$out"
    deadline=$((started + seconds))
    { date -u; nvidia-smi; "$py" -c "import torch, numpy, scipy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'numpy', numpy.__version__, 'scipy', scipy.__version__); print(torch.cuda.get_device_name(0))"; } > "$out/env.txt" 2>&1
    cat "$out/env.txt"
    # SIGINT: pytest still prints its failure summary when the cap is reached
    timeout -s INT 90 "$py" -m pytest -q -p no:cacheprovider -m cuda -rfE --tb=short > "$out/tests_cuda.log" 2>&1
    echo "CUDA tests exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests_cuda.log" | tail -15
    timeout -s INT 150 "$py" reproduction/benchmarks/profile_step.py --device cuda --out "$out/profile_step.json" \
      > "$log/profile_step.log" 2>&1
    echo "profile_step exit $?"; grep -v "^USDT\|SyncActivityProfiler" "$log/profile_step.log" | tail -20
    cp results/performance.md "$out/performance.md"
    "$py" reproduction/gpu_plan.py "$out/profile_step.json" $((deadline - $(date +%s))) | tee "$out/plan.txt" \
      || { echo "no plan: see above" >&2; exit 1; }
    scope=$(sed -n 's/^scope=//p' "$out/plan.txt") iterations=$(sed -n 's/^iterations=//p' "$out/plan.txt")
    sets=(--set "optim.iterations=$iterations")
    for o in $(sed -n 's/^overrides=//p' "$out/plan.txt"); do sets+=(--set "$o"); done
    if [ "$scope" = full ]; then
      cmd=(bash reproduction/run_isbi.sh --profile paper --data-dir "$data" --parallel-folds --out "$run_dir"
           --results "$log/isbi2012_paper" "${sets[@]}")
    else
      cmd=("$py" -m paper_unet reproduce --profile paper --data-dir "$data" --out "$run_dir" --only-fold 2 "${sets[@]}")
    fi
    echo "${cmd[*]}" | tee -a "$out/plan.txt"
    OMP_NUM_THREADS=2 setsid nohup "${cmd[@]}" > "$log/reproduce.log" 2>&1 < /dev/null &
    echo $! > "$log/run.pid"
    follow $((started + 560)) "$out"
    running || pack "$out"  # ended within this call: call 2 is not needed
    ;;
  finish)
    out="${2:?finish needs OUTDIR}"
    mkdir -p "$out"
    follow $((started + ${3:-100})) "$out"
    running && echo "the run is still going: packing what it has written so far"
    pack "$out"
    ;;
  plan)
    "$py" reproduction/gpu_plan.py "${2:?plan needs PROFILE_JSON}" "${3:?plan needs SECONDS}"
    ;;
  *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
