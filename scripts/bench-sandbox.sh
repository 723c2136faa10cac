#!/usr/bin/env bash
# What the FFmpeg sandbox costs a process start: N one-frame encodes confined and N with
# no layer, alternating, in one run (`cellfarm sandbox --starts N`). Prints the layers
# in force, then milliseconds per start of each and the difference.
#
#   scripts/bench-sandbox.sh                     # 50 starts each
#   BENCH_STARTS=200 scripts/bench-sandbox.sh
#
# Not a test: it asserts nothing, and its figures move with the machine's load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=bench-sandbox
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

STARTS="${BENCH_STARTS:-50}"
# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh
cargo build --locked --quiet
BIN="$CARGO_TARGET_DIR/debug/cellfarm"
log "$STARTS one-frame encodes confined, $STARTS with no layer ($BIN sandbox --starts $STARTS)"
# The example config: only its [cell] keys matter here, and nothing is connected to.
"$BIN" --config examples/local.toml sandbox --starts "$STARTS"
