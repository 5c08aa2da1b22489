#!/usr/bin/env bash
# Build the project's image and check it the way a user runs it (docs/environments.md):
#   bash reproduction/docker_check.sh [--base IMAGE] [--engine docker|podman] [--shared DIR] [--keep]
#
# 1. The engine: docker when its daemon answers, else podman (Debian: apt-get install podman runc
#    debootstrap); --engine picks one.
# 2. The base image: --base IMAGE (the Dockerfile's official CUDA image, where a registry is reachable),
#    else a stand-in CPU base built here from Debian's own packages: debootstrap bookworm (its Python 3.11,
#    venv, pip), imported into the engine, plus a venv first on PATH with the pinned torch CPU wheel
#    (`pip download` on the host: its wheel store or index; the same version as pyproject.toml). The
#    host's CA bundle goes in only when the host names one (PIP_CERT / SSL_CERT_FILE), as behind a
#    TLS-inspecting proxy, so that pip inside the build reaches the package index. The stand-in proves the
#    Dockerfile's own steps, the entrypoint, the volumes and the offline run; the CUDA base and
#    `--gpus all` need a GPU host.
# 3. The project's image from the Dockerfile, on that base (--build-arg BASE_IMAGE).
# 4. Checks, each as a user runs it, with networking off (--network=none) and the ISBI stacks mounted
#    read-only at /data: `--help`; `--profile smoke`, whose report, CSVs and submission must appear on
#    the host through the volumes, owned by and writable for the calling user; a fast subset of the
#    tests inside the image (as uid 1000 when the caller is root: the image must run under any uid).
# Exit 0 when all pass; 77 when no engine is here (a test skips on it); otherwise the failing step's.
# --keep keeps the work folder (runs/docker_check/) and the images; --shared: the folder with
# data/isbi2012 and metrics_reference (default $PAPER_UNET_SHARED, else ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
base="" engine="" keep=0 shared="${PAPER_UNET_SHARED:-$repo/../shared}"
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    --shared) shared="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "docker_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "docker_check: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
shared=$(cd "$shared" && pwd) || fail "no shared folder $shared (--shared DIR)"
[ -f "$shared/data/isbi2012/train-volume.tif" ] || fail "no ISBI stacks in $shared/data/isbi2012"

if [ -z "$engine" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  else say "no container engine here (docker's daemon does not answer, podman is not installed)"; exit 77
  fi
fi
command -v "$engine" >/dev/null || { say "$engine not found"; exit 77; }
say "engine: $engine ($($engine --version | head -1))"

# Flags for restricted hosts, only where the plain call fails (seen on VMs with hybrid cgroups and low
# rlimits): builds in a chroot instead of an OCI runtime, runs with runc and cgroupfs and explicit rlimits.
build_flags=() run_flags=()
if [ "$engine" = podman ]; then
  build_flags+=(--network=host)  # pip inside the build reaches the package index the host reaches
  if ! podman info --format '{{.Host.CgroupsVersion}}' 2>/dev/null | grep -q v2; then
    build_flags+=(--isolation=chroot)
    run_flags+=(--runtime runc --cgroup-manager cgroupfs --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
    say "restricted host (cgroups v1 or hybrid): chroot builds, runc + cgroupfs runs"
  fi
fi
# outputs on the host owned by the calling user: its uid inside (rootless podman: mapped with keep-id)
user_flags=(--user "$(id -u):$(id -g)")
if [ "$engine" = podman ] && [ "$(id -u)" != 0 ]; then user_flags=(--userns=keep-id "${user_flags[@]}"); fi

work="$repo/runs/docker_check"
rm -rf "$work" && mkdir -p "$work"
torch_pin=$(sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml | head -1)
[ -n "$torch_pin" ] || fail "no torch pin in pyproject.toml"

if [ -z "$base" ]; then
  base=localhost/paper-unet-base:torch-$torch_pin
  if "$engine" image exists "$base" 2>/dev/null || "$engine" image inspect "$base" >/dev/null 2>&1; then
    say "stand-in base $base: already built"
  else
    command -v debootstrap >/dev/null || fail "debootstrap not found (apt-get install debootstrap)"
    say "stand-in base: debootstrap bookworm (a few minutes, once)"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$rootfs" \
      > "$work/debootstrap.log" 2>&1 || fail "debootstrap (log: $work/debootstrap.log)"
    tar -C "$rootfs" -c . | "$engine" import - localhost/paper-unet-bookworm >/dev/null
    rm -rf "$rootfs"
    ctx="$work/base"
    mkdir -p "$ctx"
    python3 -m pip download --no-deps --only-binary=:all: -d "$ctx" "torch==$torch_pin" > "$work/torch.log" 2>&1 \
      || fail "pip download torch==$torch_pin (log: $work/torch.log)"
    wheel=$(cd "$ctx" && ls torch-*.whl | head -1)
    cert="${PIP_CERT:-${SSL_CERT_FILE:-}}"
    cert_lines=""
    if [ -n "$cert" ] && [ -f "$cert" ]; then
      cp "$cert" "$ctx/host-ca.crt"
      cert_lines=$'COPY host-ca.crt /etc/ssl/certs/host-ca.crt\nENV PIP_CERT=/etc/ssl/certs/host-ca.crt SSL_CERT_FILE=/etc/ssl/certs/host-ca.crt'
    fi
    cat > "$ctx/Containerfile" <<EOF
FROM localhost/paper-unet-bookworm
$cert_lines
COPY $wheel /tmp/
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir /tmp/$wheel && rm /tmp/$wheel
ENV PATH=/opt/venv/bin:\$PATH
EOF
    "$engine" build "${build_flags[@]}" -t "$base" "$ctx" > "$work/base_build.log" 2>&1 \
      || fail "building the stand-in base (log: $work/base_build.log)"
    rm -rf "$ctx"
  fi
fi

image=localhost/paper_unet:check
say "the project's image on $base"
start=$(date +%s)
"$engine" build "${build_flags[@]}" --build-arg BASE_IMAGE="$base" -t "$image" . > "$work/build.log" 2>&1 \
  || fail "docker build (log: $work/build.log)"
say "built in $(( $(date +%s) - start )) s; size $("$engine" image inspect "$image" --format '{{.Size}}' | awk '{printf "%.0f MB", $1 / 1e6}')"

run() { "$engine" run --rm --network=none "${run_flags[@]}" "${user_flags[@]}" "$@"; }
mkdir -p "$work/results" "$work/runs"
run "$image" --help > "$work/help.txt" 2>&1 || fail "--help (see $work/help.txt)"
grep -q "run_isbi.sh" "$work/help.txt" || fail "--help printed no usage"
say "--help: ok"

start=$(date +%s)
run -v "$shared/data/isbi2012:/data:ro" -v "$work/results:/opt/paper_unet/results" \
  -v "$work/runs:/opt/paper_unet/runs" "$image" --profile smoke > "$work/smoke.log" 2>&1 \
  || fail "--profile smoke (log: $work/smoke.log)"
for f in README.md cv_folds.csv summary.json; do
  [ -f "$work/results/isbi2012_smoke/$f" ] || fail "results/isbi2012_smoke/$f did not appear on the host"
done
[ -f "$work/runs/isbi2012_smoke/submission/test-volume-probabilities.tif" ] || fail "no submission (runs/isbi2012_smoke/submission/) on the host"
owner=$(stat -c %u "$work/results/isbi2012_smoke/README.md")
[ "$owner" = "$(id -u)" ] || fail "results owned by uid $owner, not the calling user $(id -u)"
touch "$work/results/isbi2012_smoke/README.md" "$work/runs/isbi2012_smoke" || fail "the outputs are not writable"
say "--profile smoke, offline, data read-only: ok in $(( $(date +%s) - start )) s (report, CSVs, submission on the host, owned by uid $owner)"

# the tests as an unprivileged uid when the caller is root (the image must run under any uid)
tests_user=("${user_flags[@]}")
if [ "$(id -u)" = 0 ]; then tests_user=(--user 1000:1000); fi
"$engine" run --rm --network=none "${run_flags[@]}" "${tests_user[@]}" -v "$shared:/opt/shared:ro" -e PAPER_UNET_SHARED=/opt/shared --entrypoint python "$image" \
  -m pytest -q -p no:cacheprovider tests/test_tiling.py tests/test_weights.py tests/test_data.py \
  > "$work/tests.log" 2>&1 \
  || fail "tests inside the image (log: $work/tests.log)"
say "tests inside the image: $(tail -1 "$work/tests.log")"

if [ "$keep" = 0 ]; then
  rm -rf "$work"
  "$engine" rmi "$image" >/dev/null 2>&1 || true
fi
say "all checks passed"
