# shellcheck shell=bash
# Helpers shared by the setup scripts (services.sh, build-static.sh, check-deploy.sh).
# Source it after defining die(), which as_root calls when it cannot get root.

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
