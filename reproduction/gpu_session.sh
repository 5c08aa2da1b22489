#!/usr/bin/env bash
# One short slot on a lent CUDA GPU: 900 s of machine time, its start (about 3 minutes) included, in two calls
# of at most 10 minutes each; only 8 files of at most 16 MiB come back. Measure first, then run what the
# measurement allows, and end with a trained run whatever breaks in the first minutes:
#
#   here, once:  bash reproduction/gpu_session.sh prepare
#                copies ../shared (the ISBI stacks, the metric references) to .gpu_shared/, which git
#                ignores and the device call carries (carry: [".gpu_shared"]), and prints the two calls
#   call 1:      bash reproduction/gpu_session.sh first OUTDIR        (timeout_s CALL1_S)
#                1. versions and the GPU (env.txt); the data checked (a missing prerequisite stops here, loudly)
#                2. the CUDA tests, capped at TESTS_S, the torch.compile tests left out (tests_cuda.log)
#                3. profile_step.py, capped at PROFILE_S: the variants the plan needs first (H, I, E), then the
#                   rest; its JSON is written atomically after every variant (profile_step.json, performance.md)
#                4. the plan (gpu_plan.py, plan.txt): no graph when the graph tests failed or did not finish;
#                   the rate recorded in results/ when profiling measured nothing; sized to end by RUN_S
#                5. the run, in its own process session (it outlives the call), checkpoints sparse
#                6. a liveness check LIVENESS_S after the launch: a run that died or shows no step is
#                   relaunched eagerly (variant H, a fresh run folder), said in plan.txt
#                7. its progress every 20 s until FOLLOW_S (progress.txt; val_logs.txt), so a cut-off loses
#                   nothing; a run that ended by then is packed as by `finish`
#   call 2:      bash reproduction/gpu_session.sh finish OUTDIR       (timeout_s CALL2_S)
#                follows the run to its end (at most FINISH_S), then packs its logs, scores and report into
#                OUTDIR/run.tgz (no checkpoints, no probability maps)
#   bash reproduction/gpu_session.sh plan PROFILE_JSON SECONDS [TESTS_LOG]   # only print what `first` would run
#   bash reproduction/gpu_session.sh budget                                   # the time plan, checked
#   bash reproduction/gpu_session.sh rehearse                                 # the whole slot on this CPU
#
# OUTDIR never holds more than 8 files: env.txt tests_cuda.log profile_step.json performance.md plan.txt
# progress.txt val_logs.txt run.tgz. Call 2 must follow call 1 at once: a machine left idle goes back, and
# the run with it (what call 1 copied into OUTDIR came back all the same).
# Environment: PAPER_UNET_PYTHON (the interpreter with torch: the GPU image's own, offline; default python3),
# PAPER_UNET_SHARED (the folder holding data/isbi2012 and metrics_reference; default .gpu_shared, else
# ../shared). The rehearsal sets GPU_SESSION_DEVICE=cpu, GPU_SESSION_PROFILE=smoke, GPU_SESSION_FAULT and
# shorter times (GPU_SESSION_*_S). Nothing is written to tracked paths except results/performance.md
# (profile_step.py's section, copied to OUTDIR): runs go to runs/gpu/.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
PAPER_UNET_PYTHON_GIVEN="${PAPER_UNET_PYTHON:-}"
py="${PAPER_UNET_PYTHON:-python3}"
export PAPER_UNET_PYTHON="$py" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
shared="${PAPER_UNET_SHARED:-}"
[ -n "$shared" ] || { [ -d .gpu_shared/data/isbi2012 ] && shared="$PWD/.gpu_shared" || shared="$PWD/../shared"; }
export PAPER_UNET_SHARED="$shared"
data="$shared/data/isbi2012"
log="${GPU_SESSION_LOG:-runs/gpu}"
device="${GPU_SESSION_DEVICE:-cuda}" profile="${GPU_SESSION_PROFILE:-paper}" fault="${GPU_SESSION_FAULT:-none}"

# The time plan, in seconds (checked by `budget` and the rehearsal): machine start + call 1 + gap + call 2 <= 900.
LIMIT_S=900 START_S=180 GAP_S=30 CALL1_S=480 CALL2_S=150
TESTS_S="${GPU_SESSION_TESTS_S:-60}" PROFILE_S="${GPU_SESSION_PROFILE_S:-120}"
LIVENESS_S="${GPU_SESSION_LIVENESS_S:-60}"
FOLLOW_S="${GPU_SESSION_FOLLOW_S:-440}"  # call 1 returns by then (KILL_S of margin below CALL1_S)
FINISH_S="${GPU_SESSION_FINISH_S:-110}"  # call 2 follows at most this long, then packs (< CALL2_S)
RUN_S=$((FOLLOW_S + GAP_S + FINISH_S))   # the run must end this long after call 1 started
KILL_S=10                                # timeout -k: a hang in C code or a compile worker cannot eat the call

budget() {
  local total=$((START_S + CALL1_S + GAP_S + CALL2_S))
  echo "budget: machine start ${START_S} + call 1 ${CALL1_S} + gap ${GAP_S} + call 2 ${CALL2_S} = ${total} s (limit ${LIMIT_S})"
  echo "budget: call 1 = tests <= ${TESTS_S} + profile <= ${PROFILE_S} + the run followed until ${FOLLOW_S} s"
  echo "budget: the run ends by ${RUN_S} s after call 1 started (call 2 follows it <= ${FINISH_S} s, then packs)"
  [ "$total" -le "$LIMIT_S" ] && [ "$FOLLOW_S" -le $((CALL1_S - 3 * KILL_S)) ] && [ "$FINISH_S" -le $((CALL2_S - 3 * KILL_S)) ]
}

run_folder() { cat "$log/run_dir" 2>/dev/null || echo "$log/none"; }
running() { [ -f "$log/run.pid" ] && kill -0 "$(cat "$log/run.pid")" 2>/dev/null; }
steps_logged() { cat "$(run_folder)"/*/train_log.csv 2>/dev/null | grep -c '^[0-9]'; }

follow() {  # follow UNTIL_EPOCH OUTDIR: progress into OUTDIR every 20 s until the run ends or UNTIL
  local until="$1" dir="$2" line f run_dir
  run_dir=$(run_folder)
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
    sleep "${GPU_SESSION_POLL_S:-20}"
  done
}

pack() {  # pack OUTDIR: the run's logs, scores and report (no checkpoints, no probability maps); <= 8 files
  { echo "== the run's log, last lines (exit $(cat "$log/run.exit" 2>/dev/null || echo 'none yet'))"
    tail -40 "$log/reproduce.log" 2>/dev/null; } >> "$1/progress.txt"
  tar czf "$1/run.tgz" --exclude='*.pt' --exclude='*.tif' "$log" 2>/dev/null
  local count
  count=$(find "$1" -maxdepth 1 -type f | wc -l)
  echo "OUTDIR holds $count files (at most 8 come back):"; ls -la "$1"
  [ "$count" -le 8 ]
}

launch() {  # launch RUN_DIR EXTRA_SETS...: the planned run in its own session, its exit status into run.exit
  local run_dir="$1" scope iterations every sets o cmd
  shift
  scope=$(sed -n 's/^scope=//p' "$out/plan.txt" | tail -1) iterations=$(sed -n 's/^iterations=//p' "$out/plan.txt" | tail -1)
  every=$(( iterations / 4 > 0 ? iterations / 4 : 1 ))  # sparse checkpoints: each full-width one costs seconds
  sets=(--set "optim.iterations=$iterations" --set "run.checkpoint_every=$every")
  for o in $(sed -n 's/^overrides=//p' "$out/plan.txt" | tail -1) "$@"; do sets+=(--set "$o"); done
  if [ "$scope" = full ]; then
    cmd=(bash reproduction/run_isbi.sh --profile "$profile" --data-dir "$data" --parallel-folds --out "$run_dir"
         --results "$log/results" "${sets[@]}")
    [ "${relaunch:-0}" = 1 ] && cmd+=(--no-mps)  # a killed first run may have left its MPS daemon
  else
    cmd=("$py" -m paper_unet reproduce --profile "$profile" --data-dir "$data" --out "$run_dir" --only-fold 2
         --no-estimate "${sets[@]}")
  fi
  echo "launch: ${cmd[*]}" | tee -a "$out/plan.txt"
  echo "$run_dir" > "$log/run_dir"
  rm -f "$log/run.exit"
  OMP_NUM_THREADS=2 setsid nohup bash -c '"$@" >> "$0/reproduce.log" 2>&1; echo $? > "$0/run.exit"' "$log" \
    "${cmd[@]}" < /dev/null > /dev/null 2>&1 &
  echo $! > "$log/run.pid"
}

stop_run() {  # the run's whole session (run_isbi.sh and its folds): TERM first, so that run_isbi.sh stops MPS
  local sid i
  running || return 0
  sid=$(cat "$log/run.pid")
  pkill -TERM -s "$sid" 2>/dev/null
  for i in 1 2 3 4 5 6 7 8 9 10; do pgrep -s "$sid" >/dev/null || return 0; sleep 1; done
  pkill -KILL -s "$sid" 2>/dev/null
}

alive_after() {  # alive_after SECONDS: the run still runs and has logged a step, or ended well, by then
  local until=$(( $(date +%s) + $1 ))
  while [ "$(date +%s)" -lt "$until" ]; do
    running || break
    sleep 2
  done
  if running; then [ "$(steps_logged)" -gt 0 ]; else [ "$(cat "$log/run.exit" 2>/dev/null)" = 0 ]; fi
}

cuda_tests() {
  if [ "$fault" = graph_tests ]; then  # the rehearsal: a graph test fails (on a CPU none of them can run)
    printf '%s\n' "FAILED tests/test_step.py::test_the_captured_graph_trains_as_eager_on_the_gpu - injected by the rehearsal" \
      "PASSED tests/test_step.py::test_a_graph_run_resumes_exactly_on_the_gpu" "1 failed, 4 passed in 9.9s"
    return 1
  fi
  # SIGINT: pytest still prints its failure summary when the cap is reached; -k: then SIGKILL
  timeout -k "$KILL_S" -s INT "$TESTS_S" "$py" -m pytest -q -p no:cacheprovider -m cuda -k "not compile" -rA --tb=short
}

profile_step() {
  local quick=()
  [ "$device" = cpu ] && quick=(--quick --steps 2 --warmup 1 --profile-steps 1 --no-write)
  if [ "$fault" = profile ]; then  # the rehearsal: profiling dies before it wrote anything
    timeout -k "$KILL_S" -s INT "$PROFILE_S" "$py" -c 'raise SystemExit("injected by the rehearsal: profile_step crashed")'
    return
  fi
  timeout -k "$KILL_S" -s INT "$PROFILE_S" "$py" reproduction/benchmarks/profile_step.py --device "$device" \
    --variants HIEABCDFG --out "$out/profile_step.json" "${quick[@]}"
}

first() {
  mkdir -p "$out" "$log"
  rm -f "$log/run.pid" "$log/run.exit" "$log/run_dir"
  { date -u; budget; command -v nvidia-smi >/dev/null && timeout -k 5 20 nvidia-smi
    "$py" -c "import platform, torch, numpy, scipy; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'numpy', numpy.__version__, 'scipy', scipy.__version__); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
  } > "$out/env.txt" 2>&1
  cat "$out/env.txt"
  local name missing=()
  for name in train-volume.tif train-labels.tif test-volume.tif; do [ -f "$data/$name" ] || missing+=("$name"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "PREREQUISITE MISSING: ${missing[*]} not in $data. Run 'bash reproduction/gpu_session.sh prepare' here and carry .gpu_shared with the call; nothing was run" \
      | tee "$out/plan.txt" >&2
    return 3
  fi
  cuda_tests > "$out/tests_cuda.log" 2>&1
  echo "CUDA tests exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests_cuda.log" | tail -15
  profile_step > "$log/profile_step.log" 2>&1
  echo "profile_step exit $?"; grep -v "^USDT\|SyncActivityProfiler" "$log/profile_step.log" | tail -20
  cp results/performance.md "$out/performance.md"
  "$py" reproduction/gpu_plan.py "$out/profile_step.json" $((started + RUN_S - $(date +%s))) \
    --tests "$out/tests_cuda.log" --profile "$profile" | tee "$out/plan.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "no plan: see above" >&2; pack "$out"; return 1; }
  local first_run="$log/${profile}_$(date +%s)"  # a fresh folder per attempt: a rerun of `first` resumes nothing stale
  if [ "$fault" = run_dies ]; then launch "$first_run" run.no_such_key=1; else launch "$first_run"; fi
  if ! alive_after "$LIVENESS_S"; then
    echo "liveness: the run died or logged no step within ${LIVENESS_S} s (exit $(cat "$log/run.exit" 2>/dev/null || echo 'none'); its log: $log/reproduce.log); relaunched eagerly" \
      | tee -a "$out/plan.txt"
    stop_run
    echo "relaunch plan (eager, variant H; launch reads the last plan lines):" >> "$out/plan.txt"
    "$py" reproduction/gpu_plan.py "$out/profile_step.json" $((started + RUN_S - $(date +%s))) --eager \
      --profile "$profile" | tee -a "$out/plan.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "no eager plan: see above; nothing relaunched" | tee -a "$out/plan.txt" >&2
                                    pack "$out"; return 1; }
    relaunch=1 launch "$log/${profile}_eager_$(date +%s)"
  fi
  follow $((started + FOLLOW_S)) "$out"
  running || pack "$out"  # ended within this call: call 2 is not needed
}

case "${1:-}" in
  prepare)
    src="${PAPER_UNET_SHARED:-$PWD/../shared}"
    [ -f "$src/data/isbi2012/train-volume.tif" ] || { echo "no ISBI stacks in $src/data/isbi2012" >&2; exit 3; }
    mkdir -p .gpu_shared/data
    cp -r "$src/data/isbi2012" .gpu_shared/data/ && cp -r "$src/metrics_reference" .gpu_shared/
    grep -qx '/.gpu_shared/' .git/info/exclude 2>/dev/null || echo '/.gpu_shared/' >> .git/info/exclude
    du -sh .gpu_shared
    budget
    echo "call 1: run(command='bash reproduction/gpu_session.sh first \$OUT', carry=['.gpu_shared'], timeout_s=$CALL1_S)"
    echo "call 2, at once: run(command='bash reproduction/gpu_session.sh finish \$OUT', carry=['.gpu_shared'], timeout_s=$CALL2_S)"
    ;;
  first)
    out="${2:?first needs OUTDIR}"
    first
    ;;
  finish)
    out="${2:?finish needs OUTDIR}"
    mkdir -p "$out"
    follow $((started + FINISH_S)) "$out"
    running && echo "the run is still going: packing what it has written so far"
    pack "$out"
    ;;
  plan)
    "$py" reproduction/gpu_plan.py "${2:?plan needs PROFILE_JSON}" "${3:?plan needs SECONDS}" ${4:+--tests "$4"}
    ;;
  budget)
    budget
    ;;
  rehearse)  # here, not on the GPU machine: the project's own environment unless PAPER_UNET_PYTHON names one
    if [ -z "${PAPER_UNET_PYTHON_GIVEN:-}" ]; then
      unset PAPER_UNET_PYTHON
      source reproduction/env.sh && ensure_venv test && py="$PY"
    fi
    PAPER_UNET_PYTHON="$py" exec "$py" reproduction/gpu_rehearsal.py "${@:2}"
    ;;
  *) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
