#!/usr/bin/env bash
# One command for the test suite on a fresh machine: creates (or reuses) .venv, installs the
# package with its pinned test extras, runs pytest. Extra arguments go to pytest, e.g.
#   bash tests/run.sh -m slow        # the long checks
#   bash tests/run.sh -m perf        # the timing comparisons (noisy on shared machines; not in CI)
#   bash tests/run.sh -k tiling -x
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduction/env.sh
ensure_venv test
exec "$PY" -m pytest "$@"
