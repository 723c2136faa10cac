#!/usr/bin/env bash
# Shellcheck every script, then build and run every test against real local services
# (README command 2), then the deployment checks (scripts/check-deploy.sh) and the
# stack's lint (scripts/check-stack.sh: cfn-lint and parliament on deploy/).
# Extra arguments go to `cargo test`, before its `--`, e.g. a name filter:
#   scripts/test.sh ledger
# CELLFARM_TEST_THREADS sets the test harness's parallelism (default 4). Every test
# binary runs even after one fails (--no-fail-fast), so that one run names every failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG="test"  # quoted: shellcheck reads a bare `test` as the command (SC2209)
LOG_HEAD="== "  # its log lines are section headings
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

log "shellcheck of every script (scripts/check-shell.sh)"
scripts/check-shell.sh

log "starting local services (scripts/services.sh)"
scripts/services.sh

# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh

log "cargo build --locked --all-targets (CARGO_TARGET_DIR=${CARGO_TARGET_DIR})"
cargo build --locked --all-targets

log "cargo test --locked --no-fail-fast --all-targets ${*:+$* }-- --test-threads=${CELLFARM_TEST_THREADS:-4}"
cargo test --locked --no-fail-fast --all-targets "$@" -- --test-threads="${CELLFARM_TEST_THREADS:-4}"
# Not with a name filter: that runs just those tests.
[ "$#" -gt 0 ] || scripts/check-deploy.sh
[ "$#" -gt 0 ] || scripts/check-stack.sh
