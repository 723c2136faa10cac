# shellcheck shell=bash
# Helpers shared by the scripts in scripts/: log, die, have, as_root, apt_install,
# start_dashboard.
# Source it, do not run it. Each script names itself before sourcing, so that every
# line it prints keeps that script's prefix:
#
#   LOG_TAG=services           # log "x" prints "[services] x" (default: the script's name)
#   . "$SCRIPT_DIR/lib.sh"
#
# and may also set, before or after sourcing:
#   LOG_HEAD  printed before the tag by log: "== " in test.sh and demo.sh, whose log
#             lines are section headings (default: nothing)
#   LOG_FD    where log and apt-get's output go: 1 (default), or 2 in build-static.sh,
#             whose stdout carries only its result
#   DIE_WORD  printed after the tag by die: "ERROR: " (default), "FAILED: " in
#             check-deploy.sh, "" for a bare message

: "${LOG_TAG:=$(basename "$0" .sh)}"

# log MESSAGE...: one line, "[tag] MESSAGE", on LOG_FD.
log() { printf '%s[%s] %s\n' "${LOG_HEAD-}" "$LOG_TAG" "$*" >&"${LOG_FD:-1}"; }

# die MESSAGE...: "[tag] ERROR: MESSAGE" on stderr, then exit 1.
die() {
    printf '[%s] %s%s\n' "$LOG_TAG" "${DIE_WORD-ERROR: }" "$*" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif have sudo; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# dpkg_installed PACKAGE: true when dpkg has it installed. `dpkg -s` alone also
# succeeds for a package removed but not purged ("deinstall ok config-files").
dpkg_installed() {
    dpkg -s "$1" 2>/dev/null | grep -Eq '^Status: [a-z]+ ok installed$'
}

# apt_install PACKAGE...: installs, with apt-get as root, those of the Debian packages
# that are not installed yet; does nothing when none is missing. `apt-get update` runs
# at most once per process, and only when something is really missing.
APT_UPDATED="${APT_UPDATED:-0}"
apt_install() {
    local pkg missing=()
    for pkg in "$@"; do
        dpkg_installed "$pkg" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    have apt-get || die "apt-get not found; install these yourself: ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq >&"${LOG_FD:-1}" || return
        APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&"${LOG_FD:-1}"
}

# start_dashboard BIN CONFIG DIR: starts `BIN --config CONFIG dashboard` on a free
# loopback port in the background, its output in DIR/out and DIR/err; sets
# DASHBOARD_PID and DASHBOARD_URL (from the line it prints first), or dies.
DASHBOARD_PID=""
start_dashboard() {
    "$1" --config "$2" dashboard --listen 127.0.0.1:0 >"$3/out" 2>"$3/err" &
    DASHBOARD_PID=$!
    DASHBOARD_URL=""
    local _
    for _ in $(seq 1 100); do
        DASHBOARD_URL="$(sed -n 's/^dashboard at //p' "$3/out")"
        [ -n "$DASHBOARD_URL" ] && return 0
        kill -0 "$DASHBOARD_PID" 2>/dev/null || die "the dashboard exited: $(cat "$3/err")"
        sleep 0.1
    done
    die "the dashboard did not say where it is: $(cat "$3/err")"
}

# private_config RUN BUCKET SCRATCH OUT: writes to OUT the example config for a farm of
# its own (name and schema RUN, outputs under s3://BUCKET/RUN/, scratch in SCRATCH), so
# that a benchmark's queues, ledger and objects do not mix with the demo's.
private_config() {
    sed -e "s/^name = \"demo\"/name = \"$1\"/" \
        -e "s/^schema = \"cellfarm_demo\"/schema = \"$1\"/" \
        -e "s#s3://cellfarm-demo/outputs/#s3://$2/$1/#" \
        -e "s#s3://cellfarm-demo/#s3://$2/#" \
        -e "s#/var/tmp/cellfarm-demo/scratch#$3#" \
        examples/local.toml >"$4"
}

# put_object BUCKET KEY FILE: creates BUCKET if needed and uploads FILE as KEY in one
# PUT, to the S3 server at $CELLFARM_TEST_S3 (scripts/env.sh), with the venv's boto3.
put_object() {
    local py=/var/tmp/cellfarm-venv/bin/python
    [ -x "$py" ] || py=python3
    "$py" - "$@" <<'PYEOF'
import os, sys, boto3
from botocore.config import Config
bucket, key, path = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=os.environ["CELLFARM_TEST_S3"],
                  config=Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket=bucket)
except Exception as e:
    if "BucketAlready" not in str(e):
        raise
with open(path, "rb") as body:
    s3.put_object(Bucket=bucket, Key=key, Body=body)
PYEOF
}

# timed_cell BIN CONFIG LOG: runs one cell until its queues are drained and it idled a
# second, its log in LOG; prints the user + system CPU seconds of the cell and of
# every process it waited for (its FFmpegs).
timed_cell() {
    /usr/bin/time -f "%U %S" -o "$3.time" "$1" --config "$2" cell --until-idle 1 2>"$3"
    awk '{ print $1 + $2 }' "$3.time"
}

# bench_binary: prints the cellfarm binary a benchmark measures: $BENCH_BIN as it is,
# else the optimised build (built first). Needs scripts/env.sh sourced.
bench_binary() {
    if [ -n "${BENCH_BIN:-}" ]; then
        echo "$BENCH_BIN"
        return
    fi
    cargo build --locked --quiet --release >&2
    echo "$CARGO_TARGET_DIR/release/cellfarm"
}
