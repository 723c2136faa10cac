#!/usr/bin/env bash
# Build a statically linked cellfarm for x86_64-unknown-linux-musl: the binary that
# ami/cellfarm.pkr.hcl bakes into the cell AMI. Logs go to stderr; the binary's path is
# the only line on stdout, so callers can take it with $(...).
#
#   scripts/build-static.sh                    # release profile: what goes into an AMI
#   scripts/build-static.sh --profile dev      # cheaper, unoptimised: what CI checks
#   CELLFARM_STATIC_PROFILE=dev scripts/build-static.sh
#
# Installs what is missing: the Rust target (rustup target add) and Debian's musl-tools,
# whose x86_64-linux-musl-gcc compiles the C in ring and aws-lc-sys (the AWS SDK's TLS).
# Nothing else is needed: aws-lc-sys 0.47 builds with its cc builder and ships
# pregenerated bindings for this target, so no cmake, clang or bindgen. Its probe for
# <linux/random.h> fails under musl-gcc (it prints a warning); that probe is optional.
#
# Measured on the 2-core Debian 12 machine (rustc 1.95, crates already downloaded, an
# empty CARGO_TARGET_DIR for the cold builds, wall time from `time`):
#   cold, release: 658 s (1047 s of CPU)      cold, dev: 471 s (572 s of CPU)
#   release after a change to cellfarm alone: 337 s (thin LTO of the one big crate)
#   warm, nothing changed: under 1 s
# Sharing the cores with another cargo build, the release dependencies alone took 20 min.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=x86_64-unknown-linux-musl
PROFILE="${CELLFARM_STATIC_PROFILE:-release}"

LOG_TAG=build-static
LOG_FD=2  # stdout carries only the binary's path
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root
usage() { printf 'usage: %s [--release | --profile NAME]\n' "$0" >&2; exit 2; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        --release) PROFILE=release ;;
        --profile) [ "$#" -ge 2 ] || usage; PROFILE="$2"; shift ;;
        --profile=*) PROFILE="${1#--profile=}" ;;
        *) usage ;;
    esac
    shift
done


# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh

have cargo || die "cargo not found; install Rust with rustup (see scripts/services.sh)"
have rustup || die "rustup not found: the $TARGET standard library comes from 'rustup target add $TARGET'"

if ! rustup target list --installed | grep -qx "$TARGET"; then
    log "rustup target add $TARGET"
    rustup target add "$TARGET" >&2
fi

# cc-rs looks for x86_64-linux-musl-gcc, then musl-gcc: Debian's musl-tools has both.
if ! have x86_64-linux-musl-gcc && ! have musl-gcc; then
    have apt-get || die "no musl C compiler (musl-gcc); install musl's tools yourself"
    apt_install musl-tools
fi

# Cargo's output directory per profile: dev builds land in "debug".
case "$PROFILE" in
    dev | test) OUT_DIR=debug ;;
    bench) OUT_DIR=release ;;
    *) OUT_DIR="$PROFILE" ;;
esac

log "cargo build --locked --target $TARGET --profile $PROFILE (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
start=$SECONDS
cargo build --locked --target "$TARGET" --profile "$PROFILE" --bin cellfarm
log "built in $((SECONDS - start)) s"

BIN="$CARGO_TARGET_DIR/$TARGET/$OUT_DIR/cellfarm"
[ -x "$BIN" ] || die "cargo succeeded but $BIN is missing"
printf '%s\n' "$BIN"
