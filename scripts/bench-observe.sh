#!/usr/bin/env bash
# The ledger's side of a mitosis observation at FERMI's scale, by the real code
# (examples/bench_observe.rs): `Ledger::pool_load` with 1,000 and with 1,000,000 queued
# jobs, beside the scan of the jobs it replaced, and what keeping the summary costs an
# insert. Prints the median read times and their ratios.
#
#   scripts/bench-observe.sh                         # 1,000 and 1,000,000 jobs
#   BENCH_SMALL=1000 BENCH_LARGE=100000 scripts/bench-observe.sh
#
# Not a test: it asserts nothing about speed, and its figures move with the machine's
# load. Queuing a million rows takes a minute or two here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh >/dev/null
# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh
# The debug build: the time is PostgreSQL's, not the caller's.
cargo build --locked --quiet --example bench_observe
"$CARGO_TARGET_DIR/debug/examples/bench_observe" "${BENCH_SMALL:-1000}" "${BENCH_LARGE:-1000000}"
