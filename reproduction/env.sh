# Shared by tests/run.sh and reproduction/run_isbi.sh: create or reuse a virtual environment with
# the package and its pinned dependencies. Re-installs only when pyproject.toml changes.
# PAPER_UNET_VENV overrides the location (default: .venv in the repository).
# PAPER_UNET_PYTHON=/path/to/python uses that interpreter as it is, with no virtual environment
# (the Docker image and conda environments, where the package is already installed).
VENV="${PAPER_UNET_VENV:-$PWD/.venv}"
PY="$VENV/bin/python"

ensure_venv() {
  local extra="${1:-}" python="${PYTHON:-python3}" spec="." stamp
  if [ -n "${PAPER_UNET_PYTHON:-}" ]; then
    PY="$PAPER_UNET_PYTHON"
    "$PY" -c "import paper_unet" 2>/dev/null \
      || { echo "error: PAPER_UNET_PYTHON=$PY cannot import paper_unet; pip install -e . with it" >&2; return 1; }
    return 0
  fi
  [ -n "$extra" ] && spec=".[$extra]"
  local hash
  hash=$(sha256sum pyproject.toml | cut -c1-16)
  stamp="$VENV/.paper_unet-$hash-${extra:-base}"
  if [ -f "$stamp" ]; then return 0; fi
  if [ -z "$extra" ] && [ -n "$(ls "$VENV"/.paper_unet-"$hash"-* 2>/dev/null)" ]; then
    return 0  # an install with extras includes the base install
  fi
  if ! command -v "$python" >/dev/null; then
    echo "error: $python not found; install Python >= 3.11 or set PYTHON=/path/to/python" >&2
    return 1
  fi
  local version
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $(command -v "$python") is Python $version; paper_unet needs Python >= 3.11 (tomllib in" \
         "config.py, and numpy 2.4). Install 3.11 or newer, or set PYTHON=/path/to/python3.11" >&2
    return 1
  fi
  [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
  echo "Setting up $VENV (pinned dependencies from pyproject.toml) ..." >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  "$VENV/bin/python" -c "import paper_unet, torch" \
    || { echo "error: installing into $VENV failed (see pip output above)" >&2; return 1; }
  find "$VENV" -maxdepth 1 -name ".paper_unet-*" ! -name ".paper_unet-$hash-*" -delete
  touch "$stamp"
}
