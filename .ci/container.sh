#!/usr/bin/env bash
# CI: a Docker engine of our own, a locally made Debian base image, and the app's image built on it.
#
#   .ci/container.sh start    install docker.io + debootstrap, start dockerd, build vbm-predict:ci
#   .ci/container.sh start-bg `start` in the background (own process group, log in $STATE/start.log);
#                             when it ends it writes $STATE/image.status: "ok" or "failed (exit N)"
#   .ci/container.sh stop     stop a background start and that dockerd (by PID), unmount what they left
#   .ci/container.sh env      print the variables the container tests read (eval "$(... env)")
#
# Why it looks like this: CI machines reach only the PyPI, Debian and npm registries (no Docker Hub),
# so the base image is debootstrapped here and `docker import`ed; the engine gets its own data root,
# exec root, socket and pidfile, and runs with --iptables=false --bridge=none (no firewall rules and
# no bridge on a shared machine); the legacy builder (DOCKER_BUILDKIT=0: Debian's docker.io ships no
# buildx) builds with --network host and the host's CA bundle and pip index settings; torch comes
# from the CPU wheel that the host's pip resolves (PyPI's default torch wheel is the multi-GB CUDA
# build). The flavour built is the one CI can build offline: ANTs backend only, demo models only.
# Timings of each step are printed ("[container] ... s") so the CI log shows where time goes.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."

STATE=${VBM_CI_DOCKER_STATE:-/tmp/vbm-predict-ci-docker}
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
STATUS="$STATE/image.status"            # written by start-bg when the build ends; tests/test_container.py waits for it
BG_PIDFILE="$STATE/start-bg.pid"
BASE_IMAGE=${VBM_CI_BASE_IMAGE:-vbm-localbase:bookworm}
IMAGE=${VBM_PREDICT_TEST_IMAGE:-vbm-predict:ci}
CONTEXT_EXTRA=docker/context-extra      # git-ignored: host CA bundle + pip.conf for the build
WHEELS=docker/wheels                    # git-ignored *.whl: torch CPU wheel for the build
DOCKER=/usr/bin/docker                  # the packaged client (not a wrapper on PATH), talking only to our socket
export DOCKER_HOST="unix://$SOCK"

log() { echo "[container] $*" >&2; }
elapsed() { echo $(( $(date +%s) - $1 )); }

install_tools() {
  if command -v dockerd >/dev/null && [ -x "$DOCKER" ] && command -v debootstrap >/dev/null; then return; fi
  local t0; t0=$(date +%s)
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends docker.io debootstrap debian-archive-keyring >/dev/null
  log "apt-get install docker.io debootstrap: $(elapsed "$t0") s"
}

start_engine() {
  mkdir -p "$STATE/data" "$STATE/exec"
  if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then log "dockerd already running"; return; fi
  PATH="$PATH:/usr/sbin" dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" --host "$DOCKER_HOST" \
    --pidfile "$PIDFILE" --iptables=false --ip6tables=false --bridge=none \
    --containerd-namespace vbm-ci --containerd-plugins-namespace vbm-ci-plugins \
    >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 60); do
    if "$DOCKER" version >/dev/null 2>&1; then log "dockerd up (pid $(cat "$PIDFILE"))"; return; fi
    sleep 1
  done
  tail -n 30 "$STATE/dockerd.log" >&2
  log "ERROR: dockerd did not answer on $SOCK within 60 s"
  return 1
}

make_base() {
  if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return; fi
  local t0; t0=$(date +%s)
  local root="$STATE/rootfs"
  rm -rf "$root"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
    http://deb.debian.org/debian >"$STATE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$STATE/debootstrap.log" >&2; log "ERROR: debootstrap failed"; return 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | "$DOCKER" import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  log "base image $BASE_IMAGE (debootstrap + import): $(elapsed "$t0") s"
}

prepare_context() {
  mkdir -p "$WHEELS" "$CONTEXT_EXTRA"
  if ! ls "$WHEELS"/torch-2.13.0*.whl >/dev/null 2>&1; then
    local t0; t0=$(date +%s)
    # the host's pip configuration decides where the wheel comes from (here: its CPU wheel folder)
    python3 -m pip download -q "torch==2.13.0" --no-deps --python-version 3.11 --only-binary=:all: \
      --platform manylinux_2_28_x86_64 -d "$WHEELS"
    log "torch wheel download: $(elapsed "$t0") s"
  fi
  local wheel; wheel=$(ls "$WHEELS"/torch-2.13.0*.whl | head -n 1)
  case "$wheel" in
    *+cpu*) ;;
    *) log "ERROR: $wheel is not a CPU build (PyPI's default torch is the CUDA one); give pip a CPU wheel source"
       return 1 ;;
  esac
  # pip inside the build: the host's CA bundle and index URLs (local file:// indexes cannot be seen)
  cp /etc/ssl/certs/ca-certificates.crt "$CONTEXT_EXTRA/ca-certificates.crt"
  {
    echo "[global]"
    echo "cert = /opt/vbm-build/ca-certificates.crt"
    local url; url=$(python3 -m pip config get global.index-url 2>/dev/null || true)
    if [ -n "$url" ] && [ "${url#file:}" = "$url" ]; then echo "index-url = $url"; fi
  } >"$CONTEXT_EXTRA/pip.conf"
}

build_image() {
  local t0; t0=$(date +%s)
  DOCKER_BUILDKIT=0 "$DOCKER" build --network host -q -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg WITH_SPM=0 --build-arg WITH_PUBLISHED_WEIGHTS=0 --build-arg BRAINIMAGENET_IMAGE= \
    --build-arg VCS_REF="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    . >"$STATE/build.log" 2>&1 || { tail -n 60 "$STATE/build.log" >&2; log "ERROR: docker build failed"; return 1; }
  log "docker build $IMAGE (ANTs only, demo models): $(elapsed "$t0") s;" \
      "size $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

stop_background() {
  # a build still running when the run ends (e.g. install failed): its process group, by its PID
  if [ -s "$BG_PIDFILE" ]; then
    local pid; pid=$(cat "$BG_PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
      log "background start $pid still running; stopping its process group"
      kill -- "-$pid" 2>/dev/null || kill "$pid"
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    rm -f "$BG_PIDFILE"
  fi
}

stop_engine() {
  stop_background
  if [ -s "$PIDFILE" ]; then
    local pid; pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && { log "dockerd $pid still running; SIGKILL"; kill -9 "$pid"; }
    fi
    rm -f "$PIDFILE"
  fi
  # dockerd leaves its network namespace (and overlay mounts after a crash) mounted under its roots
  if [ -d "$STATE" ]; then
    awk -v s="$STATE" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done
  fi
  log "engine stopped"
}

case "${1:-}" in
  start)
    t_all=$(date +%s)
    mkdir -p "$STATE"
    rm -f "$STATUS"
    # when it ends, for whatever reason, the status file says so: tests/test_container.py waits for it
    # (VBM_PREDICT_IMAGE_STATUS, from `env`) and fails with this text when it is not "ok"
    # ("ok" only once every step ran: a start killed by a signal can exit with status 0)
    built=0
    trap 'rc=$?; { [ $built = 1 ] && echo ok || echo "failed (exit $rc)"; } >"$STATUS.tmp"; mv "$STATUS.tmp" "$STATUS"' EXIT
    install_tools
    start_engine
    make_base
    prepare_context
    build_image
    built=1
    log "start total: $(elapsed "$t_all") s"
    ;;
  start-bg)
    # The build is mostly network and disk (debootstrap's downloads, pip inside the image), so it
    # overlaps well with the venv installs, the linters and the tests that do not need it. setsid: its
    # own process group (PGID = the PID written here), so `stop` ends the build's children too.
    mkdir -p "$STATE"
    rm -f "$STATUS" "$STATUS.tmp"
    setsid "$SELF" start >"$STATE/start.log" 2>&1 </dev/null &
    echo $! >"$BG_PIDFILE"
    log "image build started in the background (pid $!, log $STATE/start.log, status $STATUS)"
    ;;
  stop) stop_engine ;;
  env) echo "export DOCKER_HOST=$DOCKER_HOST VBM_PREDICT_TEST_IMAGE=$IMAGE VBM_PREDICT_DOCKER=$DOCKER" \
            "VBM_PREDICT_IMAGE_STATUS=$STATUS" ;;
  *) echo "usage: $0 start|start-bg|stop|env" >&2; exit 64 ;;
esac
