# CUDA MPS (Multi-Process Service) for processes that share one GPU (run_isbi.sh --parallel-folds): with it
# their kernels run at the same time instead of taking turns (time-slicing). Sourced, not run:
#   start_mps PYTHON   starts a daemon for this run in its own folder and checks that a CUDA process
#                      reaches its server; on success CUDA_MPS_PIPE_DIRECTORY / CUDA_MPS_LOG_DIRECTORY are
#                      exported (the processes started afterwards use it), else it says why and leaves
#                      nothing behind (the processes then share the GPU by time-slicing)
#   stop_mps           stops that daemon (nothing when none was started)
# A machine where the daemon cannot start, or where no client reaches it (containers often hide it),
# falls back. Every call of the control pipe has a timeout (a daemon that hangs cannot stall the run).
# tests/test_environment.py checks each branch with stand-in commands.
mps_dir=""
stop_mps() {
  [ -n "$mps_dir" ] || return 0
  echo quit | timeout -k 5 10 nvidia-cuda-mps-control >/dev/null 2>&1 || true
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  rm -rf "$mps_dir"
  mps_dir=""
}
start_mps() {
  local py="$1" why="nvidia-cuda-mps-control not found"
  if command -v nvidia-cuda-mps-control >/dev/null; then
    mps_dir=$(mktemp -d "${TMPDIR:-/tmp}/paper_unet_mps.XXXXXX")
    export CUDA_MPS_PIPE_DIRECTORY="$mps_dir/pipe" CUDA_MPS_LOG_DIRECTORY="$mps_dir/log"
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    why="the daemon did not start"
    if timeout -k 5 20 nvidia-cuda-mps-control -d >/dev/null 2>&1; then
      why="no CUDA process reached its server"
      # a CUDA client first (it makes the daemon start a server), then the server must be listed
      if timeout -k 5 60 "$py" -c 'import torch; torch.ones(1, device="cuda").sum().item()' >/dev/null 2>&1 \
          && [ -n "$(echo get_server_list | timeout -k 5 10 nvidia-cuda-mps-control 2>/dev/null)" ]; then
        echo "run_isbi.sh: CUDA MPS started for this run: the processes' kernels share the GPU at once" >&2
        return 0
      fi
    fi
    stop_mps
  fi
  echo "run_isbi.sh: no CUDA MPS ($why): the processes share the GPU by time-slicing" >&2
}
