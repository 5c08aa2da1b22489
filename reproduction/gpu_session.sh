#!/usr/bin/env bash
# What one short session on a lent CUDA GPU runs, step by step (a machine held for minutes, not hours):
#   bash reproduction/gpu_session.sh check              # versions, the CUDA tests, bench_train.py alone
#   bash reproduction/gpu_session.sh launch DEADLINE    # in the background: run_isbi.sh --profile paper
#                                                       # --parallel-folds (fp32, as shipped; CUDA graphs if
#                                                       # the bench found them faster), sized to end by
#                                                       # DEADLINE (epoch s)
#   bash reproduction/gpu_session.sh tests [SECONDS]    # the whole test suite, capped (default 400 s)
#   bash reproduction/gpu_session.sh watch SECONDS      # progress every 30 s until done or SECONDS passed
#   bash reproduction/gpu_session.sh plan DEADLINE      # only print the iterations that launch would choose
# Logs go to runs/gpu/ ($GPU_SESSION_LOG; bench, tests, progress, the chosen iterations, the report);
# `pack DIR` writes them and the run directory's logs and scores to DIR as two archives.
# Environment: PAPER_UNET_PYTHON (the interpreter with torch; default python3), PAPER_UNET_SHARED (the
# folder holding data/isbi2012 and metrics_reference; default ../shared).
#
# The iteration count: the bench's single-process rate of the full-width fp32 step (eager, or replayed as
# CUDA graphs with run.compile_mode="reduce-overhead" when that measured at least 10 % faster) times the
# seconds left before DEADLINE, less 150 s for the last predictions, scores and the report (graphs: 270 s,
# with the compilation), times the parallel gain (eager: 1.2, four processes on one H100 ran 1.37x one
# process's rate on 2026-11-25, less a margin; graphs: 1.0, not measured), over 4 networks (3 folds + final), rounded down to 1,000 and capped
# at the profile's 50,000. When that falls short of 50,000 it runs the cross-validation alone (--cv-only,
# 3 networks): closer to the paper's schedule. Everything it chose is in
# runs/gpu/plan.txt. A device machine re-sends the tracked files with every call, so nothing is written
# to tracked paths there: the reproduction's report goes to runs/gpu/isbi2012_paper/, performance.md
# is copied to runs/gpu/ at once (`pack` takes them from there; copy them to results/ here).
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PAPER_UNET_PYTHON:-python3}"
export PAPER_UNET_PYTHON="$py" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
shared="${PAPER_UNET_SHARED:-$PWD/../shared}"
export PAPER_UNET_SHARED="$shared"
data="$shared/data/isbi2012"
log="${GPU_SESSION_LOG:-runs/gpu}"
mkdir -p "$log"

case "${1:-}" in
  check)
    { date -u; nvidia-smi; "$py" -c "import torch, numpy, numba, scipy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'numpy', numpy.__version__, 'numba', numba.__version__, 'scipy', scipy.__version__); print(torch.cuda.get_device_name(0))"; } > "$log/env.txt" 2>&1
    cat "$log/env.txt"
    # the CUDA tests first, alone (seconds), with their failure messages
    "$py" -m pytest -q -p no:cacheprovider -m cuda -rfE --tb=short 2>&1 | tee "$log/tests_cuda.log" | tail -40
    "$py" reproduction/benchmarks/bench_train.py --device cuda 2>&1 | tee "$log/bench_train.log" | tail -25
    cp results/performance.md "$log/performance.md"
    ;;
  tests)
    # the whole default suite; SECONDS (default 400) caps it with SIGINT, on which pytest still prints
    # its failure summary (SIGTERM or a killed call would print none)
    OMP_NUM_THREADS=4 timeout -s INT "${2:-400}" "$py" -m pytest -q -p no:cacheprovider -rfE --tb=short \
      > "$log/tests.log" 2>&1
    echo "tests exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$log/tests.log" | tail -30
    ;;
  plan|launch)
    deadline="${2:?$1 needs DEADLINE (epoch seconds by which the reproduction must have ended)}"
    # the one-process rates of the full-width fp32 step from the bench: eager, and replayed as CUDA graphs
    read -r eager graphs < <("$py" - "$log/bench_train.log" <<'PY'
import ast, sys
rates = {}
for line in open(sys.argv[1]):
    if line.startswith("('`paper`"):
        name, tile, variant, rate, _ = ast.literal_eval(line.strip())
        rates[variant] = rate
print(rates.get((False, False, False), ""), rates.get((False, False, "reduce-overhead"), 0))
PY
)
    [ -n "$eager" ] || { echo "no full-width fp32 rate in $log/bench_train.log: run check first" >&2; exit 1; }
    now=$(date +%s)
    # CUDA graphs when the bench measured them at least 10 % faster; parallel processes are assumed to add
    # 1.2x to eager (measured 1.37x for four) and nothing to graphs (not measured)
    # (graphs: 120 s more kept back, for each process's compilation)
    read -r mode rate factor reserve < <("$py" -c "
e, g = $eager, $graphs
print(*(('graphs', g, 1.0, 270) if g > 1.1 * e else ('eager', e, 1.2, 150)))")
    fit() { "$py" -c "print(min(50000, int($factor * $rate * ($deadline - $now - $reserve) / $1 / 1000) * 1000))"; }
    # the whole run (3 folds + final model) when it reaches the profile's 50,000 iterations, else the
    # cross-validation alone (--cv-only: 3 networks), which gets closer to the schedule; the final model and
    # the submission were shown at 19,000 iterations on 2026-11-25
    iterations=$(fit 4) scope=full
    [ "$iterations" -lt 50000 ] && { iterations=$(fit 3) scope=cv-only; }
    [ "$iterations" -ge 1000 ] || { echo "too little time left ($((deadline - now)) s) for 1,000 iterations" >&2; exit 1; }
    echo "rates (one process, bench): eager $eager, CUDA graphs $graphs steps/s (0: failed or not measured); using $mode" \
      "($rate x $factor); deadline in $((deadline - now)) s; $scope run, iterations $iterations" | tee "$log/plan.txt"
    [ "$1" = plan ] && exit 0
    extra=()
    [ "$mode" = graphs ] && extra+=(--set run.compile=true --set 'run.compile_mode="reduce-overhead"')
    [ "$scope" = cv-only ] && extra+=(--cv-only)
    # fp32, the profile's default: on an H100 bf16 + channels_last is no faster (0.97x, 2026-11-25)
    OMP_NUM_THREADS=2 setsid nohup bash reproduction/run_isbi.sh --profile paper --data-dir "$data" \
      --parallel-folds --set optim.iterations="$iterations" "${extra[@]}" --results "$log/isbi2012_paper" \
      > "$log/reproduce.log" 2>&1 < /dev/null &
    echo "launched"
    ;;
  watch)
    end=$(( $(date +%s) + ${2:?watch needs SECONDS} ))
    while [ "$(date +%s)" -lt "$end" ]; do
      line="$(date -u +%T)"
      for f in runs/isbi2012_paper/fold*/train_log.csv runs/isbi2012_paper/final/train_log.csv; do
        [ -f "$f" ] && line+=" | ${f#runs/} $(tail -1 "$f" | cut -d, -f1,2,4)"
      done
      echo "$line" | tee -a "$log/progress.txt"
      grep -q "run_isbi.sh: finished\|run_isbi.sh: error" "$log/reproduce.log" 2>/dev/null && break
      sleep 30
    done
    tail -5 "$log/reproduce.log"
    ;;
  pack)
    dir="${2:?pack needs DIR}"
    tar czf "$dir/gpu_logs.tgz" runs/gpu 2>/dev/null
    tar czf "$dir/isbi2012_paper.tgz" --exclude='*.pt' --exclude='*.tif' runs/isbi2012_paper 2>/dev/null
    ls -la "$dir"
    ;;
  *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
