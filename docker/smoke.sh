#!/usr/bin/env bash
# CPU smoke test of docker/compose.yaml, with no image registry: builds a Debian base image from
# scratch, builds docker/Dockerfile on it offline, runs `ray-head` and the `runner` on the digits
# experiment, and checks the run against a local Ray run of the same experiment on this host
# (metrics.jsonl byte for byte). No GPU is needed (ray-worker is not started).
#
#   sudo bash docker/smoke.sh [--rebuild] [--keep-wheels]     # from the repository root
#
#   --rebuild      rebuild the base image even when it exists
#   --keep-wheels  keep docker/wheels (the wheels of the image build) after the run
#
# Steps:
#  1. Docker: installs docker.io, Compose (v2 plugin where the apt sources have one, else docker-compose
#     1.29) and debootstrap with apt-get where missing; starts dockerd when `docker info` fails (log:
#     /var/log/dfl-sim-smoke-dockerd.log).
#  2. Base image $SMOKE_BASE_IMAGE (default dfl-sim-base:smoke), cached: a minimal root file system of the
#     Debian release and mirror of this host's apt sources (debootstrap), a virtual environment in
#     /opt/venv (first on PATH: `python`, `pip`) with the torch and torchvision of the host's $SMOKE_VENV
#     (default .venv), from wheels pip downloads here for the image's Python and glibc; `docker import`.
#     The same torch wheel as the venv's, so that the numerics match: PyPI's is a CUDA build, which runs
#     on the CPU as well.
#     Rebuilt when missing, with --rebuild, or when its torch/torchvision labels differ from the venv's.
#  3. Image $SMOKE_IMAGE (default dfl-sim:smoke): the wheels of `.[ray]` that the base lacks are
#     downloaded into docker/wheels (ignored by git, in the build context; pinned to the venv's
#     versions), then `docker build -f docker/Dockerfile --build-arg PYTORCH_IMAGE=<base>
#     --build-arg WHEELS=docker/wheels` (pip installs with --no-index from that folder).
#  4. Compose project dfl-sim-smoke: `up -d ray-head`, then `run --rm runner` with
#     EXPERIMENT=experiments/ring_digits.yaml GPUS_PER_ACTOR=0 and DFL_SIM_ARGS setting rounds, device=cpu
#     and engine.ray.actors, writing into runs/smoke-<time>/compose/ through the runs/ bind mount.
#  5. Checks: the run's STATUS is `complete`; its metrics.jsonl equals, byte for byte, that of
#     `$SMOKE_VENV/bin/dfl-sim run` with engine.name=ray and the same settings on this host
#     (runs/smoke-<time>/host/); the dashboard is not reachable from the host with compose.yaml alone,
#     and answers on 127.0.0.1:$RAY_DASHBOARD_PORT (default 8265) with docker/compose.dashboard.yaml.
#  6. One line: PASS or FAIL, with the time of each step. Logs: runs/smoke-<time>/logs/.
# The containers and volumes go (`down -v`) on exit, whatever happened; the images stay, and so does a
# dockerd this script started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

REBUILD=0
KEEP_WHEELS=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        --keep-wheels) KEEP_WHEELS=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "smoke.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

BASE_IMAGE=${SMOKE_BASE_IMAGE:-dfl-sim-base:smoke}
IMAGE=${SMOKE_IMAGE:-dfl-sim:smoke}
VENV=${SMOKE_VENV:-.venv}
PROJECT=dfl-sim-smoke
EXPERIMENT=experiments/ring_digits.yaml
ROUNDS=2
ACTORS=2
WHEELS=docker/wheels
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
DOCKERD_LOG=/var/log/dfl-sim-smoke-dockerd.log
export DEBIAN_FRONTEND=noninteractive

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=runs/smoke-$STAMP
LOGS=$OUT/logs
WORK=""          # temporary folder (root file system, resolver report), removed on exit
ROOTFS=""
COMPOSE=()
WHEELS_MADE=0
STEP="start"
TIMES=()
T0=$SECONDS
STEP_T0=$SECONDS
RESULT=""

log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

step() {  # step NAME: closes the previous step's timer and opens NAME's
    [ "$STEP" = start ] || TIMES+=("$STEP $((SECONDS - STEP_T0))s")
    STEP=$1
    STEP_T0=$SECONDS
    log "== $STEP"
}

times_text() { local IFS='|' s; s="${TIMES[*]}"; echo "${s//|/, }"; }

compose() { "${COMPOSE[@]}" -p "$PROJECT" -f docker/compose.yaml "$@"; }
compose_dashboard() { "${COMPOSE[@]}" -p "$PROJECT" -f docker/compose.yaml -f docker/compose.dashboard.yaml "$@"; }

cleanup() {
    local rc=$?
    set +e
    if [ ${#COMPOSE[@]} -gt 0 ]; then
        compose_dashboard --profile run down -v --remove-orphans > "$LOGS/down.log" 2>&1
    fi
    if [ -n "$ROOTFS" ] && mountpoint -q "$ROOTFS/proc" 2>/dev/null; then
        umount "$ROOTFS/proc"
    fi
    [ -z "$WORK" ] || rm -rf "$WORK"
    if [ "$WHEELS_MADE" = 1 ] && [ "$KEEP_WHEELS" = 0 ]; then
        rm -rf "$WHEELS"
    fi
    # what the containers and root wrote under runs/ goes back to the owner of runs/
    [ ! -d "$OUT" ] || chown -R "$(stat -c %u:%g runs)" "$OUT"
    if [ -z "$RESULT" ]; then
        TIMES+=("$STEP $((SECONDS - STEP_T0))s")
        RESULT="FAIL smoke: step '$STEP' failed (exit $rc); $(times_text); total $((SECONDS - T0))s; logs: $LOGS"
        [ "$rc" -ne 0 ] || rc=1
    fi
    echo "$RESULT"
    exit "$rc"
}

[ "$(id -u)" -eq 0 ] || { echo "smoke.sh: run as root: sudo bash docker/smoke.sh" >&2; exit 2; }
[ -x "$VENV/bin/dfl-sim" ] || { echo "smoke.sh: $VENV/bin/dfl-sim is missing (make install-dev, or SMOKE_VENV=...)" >&2; exit 2; }
"$VENV/bin/python" -c 'import ray' 2> /dev/null || { echo "smoke.sh: Ray is not installed in $VENV (pip install -e '.[ray]')" >&2; exit 2; }

mkdir -p runs "$LOGS"
trap cleanup EXIT
trap 'exit 130' INT TERM
WORK=$(mktemp -d /var/tmp/dfl-sim-smoke.XXXXXX)

# ------------------------------------------------------------------------------------ 1. Docker
step docker

apt_install() {
    log "apt-get install $*"
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -q > "$LOGS/apt.log" 2>&1 || { tail -20 "$LOGS/apt.log" >&2; die "apt-get update failed"; }
        APT_UPDATED=1
    fi
    apt-get install -y -q --no-install-recommends "$@" >> "$LOGS/apt.log" 2>&1 \
        || { tail -20 "$LOGS/apt.log" >&2; die "apt-get install $* failed"; }
}
apt_has() { apt-cache show "$1" > /dev/null 2>&1; }

if ! command -v dockerd > /dev/null || ! command -v docker > /dev/null; then
    apt_install docker.io
fi

find_compose() {
    if docker compose version > /dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose > /dev/null; then
        COMPOSE=(docker-compose)
    else
        return 1
    fi
}
if ! find_compose; then
    [ -n "${APT_UPDATED:-}" ] || { apt-get update -q > "$LOGS/apt.log" 2>&1; APT_UPDATED=1; }
    for pkg in docker-compose-v2 docker-compose-plugin docker-compose; do
        if apt_has "$pkg"; then apt_install "$pkg"; break; fi
    done
    find_compose || die "no Docker Compose after installing it"
fi
log "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version 2>/dev/null | head -1))"

if ! docker info > /dev/null 2>&1; then
    if [ -d /run/systemd/system ] && command -v systemctl > /dev/null; then
        log "starting docker.service"
        systemctl start docker
    else
        log "starting dockerd (log: $DOCKERD_LOG)"
        setsid dockerd >> "$DOCKERD_LOG" 2>&1 < /dev/null &
    fi
    for _ in $(seq 120); do
        docker info > /dev/null 2>&1 && break
        sleep 1
    done
    docker info > /dev/null 2>&1 || { tail -20 "$DOCKERD_LOG" >&2 || true; die "the Docker engine does not answer"; }
fi
log "engine: Docker $(docker version --format '{{.Server.Version}}')"

# --------------------------------------------------------------------------------- 2. base image
step base-image

venv_version() { "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
TORCH=$(venv_version torch)
TORCHVISION=$(venv_version torchvision)

# The venv's versions, as constraints for every download: the image gets the same numerics.
"$VENV/bin/python" -m pip freeze --all 2> /dev/null | grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' \
    | grep -viE '^dfl-sim==' > "$WORK/venv-constraints.txt"

# pip options that select wheels for the image's interpreter and glibc, e.g. 3.11 and 2.36
target_options() {
    local py=$1 glibc=$2 minor
    printf -- '--only-binary=:all:\n--implementation\ncp\n--python-version\n%s\n--abi\ncp%s\n' "$py" "${py/./}"
    for minor in $(seq "${glibc#2.}" -1 17); do
        printf -- '--platform\nmanylinux_2_%s_x86_64\n' "$minor"
    done
    printf -- '--platform\n%s\n' manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64
}

# The release and mirror of this host's apt sources (deb822 .sources or one-line .list), e.g.
# "bookworm http://deb.debian.org/debian": the first `deb` source with the `main` component whose suite
# is the release of /etc/os-release (any plain suite, not -updates or -security, when it names none).
apt_release() {
    local codename f
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release 2> /dev/null && echo "${VERSION_CODENAME:-}")
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v want="$codename" 'BEGIN { RS = ""; FS = "\n" }
             { types = uris = suites = comps = ""; enabled = "yes"
               for (i = 1; i <= NF; i++) {
                 if ($i ~ /^#/) continue
                 split($i, kv, /:/); key = tolower(kv[1]); val = substr($i, length(kv[1]) + 2)
                 sub(/^[ \t]+/, "", val)
                 if (key == "types") types = val; else if (key == "uris") uris = val
                 else if (key == "suites") suites = val; else if (key == "components") comps = val
                 else if (key == "enabled") enabled = tolower(val) }
               if (enabled == "no" || types !~ /(^| )deb( |$)/ || comps !~ /(^| )main( |$)/) next
               split(uris, u, /[ \t]+/); n = split(suites, s, /[ \t]+/)
               for (j = 1; j <= n; j++)
                 if ((want == "" ? s[j] !~ /[-\/]/ : s[j] == want) && u[1] !~ /security/) { print s[j], u[1]; exit } }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v want="$codename" '$1 == "deb" {
                 i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                 main = 0; for (k = i + 2; k <= NF; k++) if ($k == "main") main = 1
                 if (main && (want == "" ? $(i + 1) !~ /[-\/]/ : $(i + 1) == want) && $i !~ /security/) {
                   print $(i + 1), $i; exit } }' "$f"
    done
}

base_labels() { docker image inspect -f '{{index .Config.Labels "dfl-sim.torch"}} {{index .Config.Labels "dfl-sim.torchvision"}}' "$BASE_IMAGE" 2> /dev/null; }

build_base() {
    local release mirror py glibc
    read -r release mirror < <(apt_release | head -1) || true
    if [ -z "${release:-}" ]; then
        # shellcheck disable=SC1091
        release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
        mirror=http://deb.debian.org/debian
    fi
    [ -n "$release" ] || die "cannot tell this host's Debian release from /etc/apt/sources.list*"
    command -v debootstrap > /dev/null || apt_install debootstrap
    ROOTFS=$WORK/rootfs
    log "debootstrap $release from $mirror (log: $LOGS/debootstrap.log)"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates,procps,util-linux,passwd \
        "$release" "$ROOTFS" "$mirror" > "$LOGS/debootstrap.log" 2>&1 \
        || { tail -20 "$LOGS/debootstrap.log" >&2; die "debootstrap failed"; }
    mount -t proc proc "$ROOTFS/proc"
    py=$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    glibc=$(chroot "$ROOTFS" getconf GNU_LIBC_VERSION | awk '{print $2}')
    log "base: Python $py, glibc $glibc; host venv: Python $("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])'), torch $TORCH, torchvision $TORCHVISION"
    chroot "$ROOTFS" python3 -m venv /opt/venv
    log "pip download torch==$TORCH torchvision==$TORCHVISION for cp${py/./} (log: $LOGS/base-wheels.log)"
    mapfile -t target < <(target_options "$py" "$glibc")
    "$VENV/bin/python" -m pip download --no-cache-dir -d "$ROOTFS/tmp/wheels" "${target[@]}" \
        -c "$WORK/venv-constraints.txt" "torch==$TORCH" "torchvision==$TORCHVISION" > "$LOGS/base-wheels.log" 2>&1 \
        || { tail -20 "$LOGS/base-wheels.log" >&2; die "pip download of torch failed"; }
    chroot "$ROOTFS" /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        "torch==$TORCH" "torchvision==$TORCHVISION" >> "$LOGS/base-wheels.log" 2>&1 \
        || { tail -20 "$LOGS/base-wheels.log" >&2; die "pip install of torch in the base failed"; }
    chroot "$ROOTFS" /opt/venv/bin/python -c 'import torch, torchvision; print("base: torch", torch.__version__, "torchvision", torchvision.__version__)' >&2
    umount "$ROOTFS/proc"
    rm -rf "$ROOTFS/tmp/wheels" "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    log "docker import $BASE_IMAGE"
    tar --numeric-owner --one-file-system -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL dfl-sim.torch=$TORCH dfl-sim.torchvision=$TORCHVISION dfl-sim.debian=$release" \
        --change 'CMD ["python"]' \
        --message "dfl-sim smoke base: debootstrap $release, torch $TORCH" - "$BASE_IMAGE" > /dev/null
    rm -rf "$ROOTFS"
    ROOTFS=""
}

if [ "$REBUILD" = 1 ] || ! docker image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
    build_base
elif [ "$(base_labels)" != "$TORCH $TORCHVISION" ]; then
    log "$BASE_IMAGE has torch/torchvision $(base_labels), the venv $TORCH $TORCHVISION: rebuilding it"
    build_base
else
    log "$BASE_IMAGE exists (torch $TORCH, torchvision $TORCHVISION); --rebuild rebuilds it"
fi

# ---------------------------------------------------------------------------------------- 3. image
step image

PY=$(docker run --rm "$BASE_IMAGE" python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
GLIBC=$(docker run --rm "$BASE_IMAGE" getconf GNU_LIBC_VERSION | awk '{print $2}')
mapfile -t TARGET < <(target_options "$PY" "$GLIBC")
docker run --rm "$BASE_IMAGE" python -m pip list --format=freeze 2> /dev/null > "$WORK/base-packages.txt"

# Resolve `.[ray]` (and the build's setuptools) for the image's Python, pinned to the venv's versions,
# then download what the base does not already have, without dependencies: the resolution is complete.
# setuptools is downloaded in any case: pip builds dfl-sim in an isolated environment, from the wheels.
log "resolving .[ray] for cp${PY/./} (log: $LOGS/wheels.log)"
"$VENV/bin/python" -m pip install --dry-run --ignore-installed --no-cache-dir "${TARGET[@]}" \
    -c "$WORK/venv-constraints.txt" --report "$WORK/report.json" '.[ray]' 'setuptools>=77' > "$LOGS/wheels.log" 2>&1 \
    || { tail -20 "$LOGS/wheels.log" >&2; die "pip cannot resolve .[ray] for the image"; }
"$VENV/bin/python" - "$WORK/report.json" "$WORK/base-packages.txt" > "$WORK/wheels.txt" << 'EOF'
import json, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
base = {norm(n): v for n, _, v in (ln.strip().partition("==") for ln in open(sys.argv[2])) if v}
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if norm(name) == "setuptools" or (norm(name) != "dfl-sim" and base.get(norm(name)) != version):
        print(f"{name}=={version}")
EOF
rm -rf "$WHEELS"
mkdir -p "$WHEELS"
WHEELS_MADE=1
log "pip download $(wc -l < "$WORK/wheels.txt") wheels into $WHEELS"
"$VENV/bin/python" -m pip download --no-deps --no-cache-dir -d "$WHEELS" "${TARGET[@]}" -r "$WORK/wheels.txt" \
    >> "$LOGS/wheels.log" 2>&1 || { tail -20 "$LOGS/wheels.log" >&2; die "pip download failed"; }

DFL_UID=${DFL_SIM_UID:-1000}
DFL_GID=${DFL_SIM_GID:-1000}
log "docker build $IMAGE on $BASE_IMAGE (log: $LOGS/build.log)"
OLD_IMAGE=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2> /dev/null || true)
docker build --force-rm -f docker/Dockerfile --build-arg PYTORCH_IMAGE="$BASE_IMAGE" --build-arg WHEELS="$WHEELS" \
    --build-arg DFL_UID="$DFL_UID" --build-arg DFL_GID="$DFL_GID" -t "$IMAGE" . > "$LOGS/build.log" 2>&1 \
    || { tail -30 "$LOGS/build.log" >&2; die "docker build failed"; }
if [ -n "$OLD_IMAGE" ] && [ "$OLD_IMAGE" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
    docker rmi "$OLD_IMAGE" > /dev/null 2>&1 || true  # the image this build replaced, unless still in use
fi
grep -E '^(torch|torchvision)==|^ray [0-9]' "$LOGS/build.log" | sed 's/^/[smoke] image: /' >&2 || true
if [ "$KEEP_WHEELS" = 0 ]; then rm -rf "$WHEELS"; fi

# ------------------------------------------------------------------------------ 4. ray-head, runner
step compose-run

SETS=(--set "rounds=$ROUNDS" --set device=cpu --set "engine.ray.actors=$ACTORS")
mkdir -p "$OUT/compose" "$OUT/host" "$WORK/data"
chown "$DFL_UID:$DFL_GID" "$OUT/compose"  # the runner's user writes here through the runs/ bind mount
export DFL_SIM_IMAGE="$IMAGE" EXPERIMENT GPUS_PER_ACTOR=0 DFL_SIM_DATA="$WORK/data" \
    DFL_SIM_ARGS="${SETS[*]} --out $OUT/compose" DFL_SIM_UID="$DFL_UID" DFL_SIM_GID="$DFL_GID"
compose_dashboard --profile run down -v --remove-orphans > "$LOGS/down.log" 2>&1  # leftovers of an earlier run
compose up -d --no-build ray-head > "$LOGS/compose.log" 2>&1 || { cat "$LOGS/compose.log" >&2; die "up ray-head failed"; }

wait_healthy() {
    local id status
    id=$(compose ps -q ray-head)
    for _ in $(seq 90); do
        status=$(docker inspect -f '{{.State.Health.Status}}' "$id")
        [ "$status" = healthy ] && return 0
        [ "$status" != unhealthy ] || break
        sleep 2
    done
    docker logs "$id" 2>&1 | tail -30 >&2
    die "ray-head is $status"
}
wait_healthy
log "ray-head is healthy; runner: dfl-sim run $EXPERIMENT ... $DFL_SIM_ARGS (log: $LOGS/runner.log)"
compose run --rm -T runner > "$LOGS/runner.log" 2>&1 || { tail -30 "$LOGS/runner.log" >&2; die "the runner failed"; }

# ------------------------------------------------------------------------------------ 5. checks
step host-run

log "host: $VENV/bin/dfl-sim run $EXPERIMENT --set engine.name=ray ... (log: $LOGS/host-run.log)"
"$VENV/bin/dfl-sim" run "$EXPERIMENT" --set engine.name=ray --set device=auto --set engine.ray.gpus_per_actor=0 \
    "${SETS[@]}" --out "$OUT/host" --quiet > "$LOGS/host-run.log" 2>&1 \
    || { tail -30 "$LOGS/host-run.log" >&2; die "the host run failed"; }

step compare
one_run() {  # the single run directory under $1
    local dirs=("$1"/*/)
    if [ ${#dirs[@]} -ne 1 ] || [ ! -d "${dirs[0]}" ]; then
        die "expected one run directory in $1, found: ${dirs[*]}"
    fi
    echo "${dirs[0]%/}"
}
RUN_C=$(one_run "$OUT/compose")
RUN_H=$(one_run "$OUT/host")
[ "$(cat "$RUN_C/STATUS")" = complete ] || die "$RUN_C/STATUS is '$(cat "$RUN_C/STATUS")', not complete"
[ "$(cat "$RUN_H/STATUS")" = complete ] || die "$RUN_H/STATUS is '$(cat "$RUN_H/STATUS")', not complete"
if ! cmp "$RUN_C/metrics.jsonl" "$RUN_H/metrics.jsonl" >&2; then
    diff "$RUN_C/config.yaml" "$RUN_H/config.yaml" >&2 || true
    diff "$RUN_C/metrics.jsonl" "$RUN_H/metrics.jsonl" | head -20 >&2 || true
    die "metrics.jsonl differs between the compose run and the host run"
fi
LINES=$(wc -l < "$RUN_C/metrics.jsonl")
log "metrics.jsonl identical ($LINES lines): $RUN_C, $RUN_H"

step dashboard
HEAD_ID=$(compose ps -q ray-head)
[ -z "$(docker port "$HEAD_ID")" ] || die "compose.yaml alone publishes: $(docker port "$HEAD_ID")"
http_ok() {  # http_ok URL: the URL answers 200 within 2 s
    "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read(1)' "$1" 2> /dev/null
}
up=0
for _ in $(seq 60); do  # the dashboard is up inside the head (it starts after `ray status` answers)
    if compose exec -T ray-head python -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8265", timeout=2)' > /dev/null 2>&1; then
        up=1; break
    fi
    sleep 2
done
[ "$up" = 1 ] || die "the dashboard does not answer inside ray-head"
# from another container of the project, by service name on the project's own network: refused
from_project() {  # from_project COMPOSE_FN: ray-head:8265 answers a container of the project (exit 0)
    "$1" run --rm --no-deps -T --entrypoint python runner -c \
        'import urllib.request; urllib.request.urlopen("http://ray-head:8265", timeout=2).read(1)' > /dev/null 2>&1
}
! from_project compose || die "compose.yaml alone: the dashboard answers on the project network at ray-head:8265"
! http_ok "http://127.0.0.1:$DASHBOARD_PORT" || log "warning: something else answers on 127.0.0.1:$DASHBOARD_PORT"
log "compose.yaml: no port published, dashboard only on the head's loopback (ray-head:8265 refused on the project network)"

compose_dashboard up -d --no-build ray-head >> "$LOGS/compose.log" 2>&1 || { tail "$LOGS/compose.log" >&2; die "up with compose.dashboard.yaml failed"; }
wait_healthy
HEAD_ID=$(compose ps -q ray-head)
PORTS=$(docker port "$HEAD_ID")
[ "$PORTS" = "8265/tcp -> 127.0.0.1:$DASHBOARD_PORT" ] || die "compose.dashboard.yaml publishes: $PORTS"
up=0
for _ in $(seq 60); do
    if http_ok "http://127.0.0.1:$DASHBOARD_PORT"; then up=1; break; fi
    sleep 2
done
[ "$up" = 1 ] || die "with compose.dashboard.yaml, http://127.0.0.1:$DASHBOARD_PORT does not answer"
# the same probe as above now answers, so its refusal above was the dashboard's, not the probe's
from_project compose_dashboard || die "with compose.dashboard.yaml, ray-head:8265 does not answer on the project network"
log "compose.dashboard.yaml: dashboard at http://127.0.0.1:$DASHBOARD_PORT ($PORTS)"

# ------------------------------------------------------------------------------------ 6. summary
step summary
RESULT="PASS smoke: ring_digits rounds=$ROUNDS actors=$ACTORS on ray-head+runner ($IMAGE, torch $TORCH);"
RESULT+=" metrics.jsonl identical to the host's Ray run ($LINES lines); dashboard opt-in checked;"
RESULT+=" $(times_text); total $((SECONDS - T0))s; runs: $OUT"
