# shellcheck shell=bash
# Helpers shared by the scripts in scripts/: log, die, have, as_root, apt_install.
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
