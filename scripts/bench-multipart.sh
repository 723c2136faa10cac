#!/usr/bin/env bash
# Large files through the object store, by the real code (examples/bench_multipart.rs):
# one file uploaded by a single PUT and by a multipart upload, downloaded by a single
# GET and by parallel byte ranges. Prints the four wall times and the ratios
# single/parts (above 1.0 = parts are faster), after checking both downloads byte for
# byte against the file.
#
#   scripts/bench-multipart.sh                          # 512 MiB, 64 MiB parts, 8 at once
#   BENCH_MIB=128 BENCH_PART_MIB=16 scripts/bench-multipart.sh
#
# Not a test: it asserts nothing about speed, and its figures move with the machine's
# load. Against s3s-fs on loopback the network costs nothing and s3s-fs copies every
# part once more when it completes an upload, so parts gain far less than against S3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=bench-multipart
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

MIB="${BENCH_MIB:-512}"
PART_MIB="${BENCH_PART_MIB:-64}"
CONCURRENCY="${BENCH_CONCURRENCY:-8}"
WORK=/var/tmp/cellfarm-bench-multipart
BUCKET=cellfarm-bench

scripts/services.sh >/dev/null
# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh
cargo build --locked --quiet --example bench_multipart
BIN="$CARGO_TARGET_DIR/debug/examples/bench_multipart"

mkdir -p "$WORK"
FILE="$WORK/random-${MIB}m.bin"
if [ ! -s "$FILE" ]; then
    log "making $MIB MiB of random bytes in $FILE"
    head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$FILE.part"
    mv "$FILE.part" "$FILE"
fi
trap 'rm -f "$FILE.get" "$FILE.ranged"' EXIT

log "$MIB MiB, parts of $PART_MIB MiB, $CONCURRENCY at once, $(nproc) cores, s3 $CELLFARM_TEST_S3"
out=$("$BIN" "$FILE" "$BUCKET" "$PART_MIB" "$CONCURRENCY")
for copy in get ranged; do
    cmp -s "$FILE" "$FILE.$copy" || die "the $copy download differs from $FILE"
done
secs() { awk -v way="$1" '$1 == way { print $2 }' <<<"$out"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
put_single=$(secs put_single)
put_multipart=$(secs put_multipart)
get_single=$(secs get_single)
get_ranged=$(secs get_ranged)
echo "upload   single PUT ${put_single} s, multipart ${put_multipart} s"
echo "download single GET ${get_single} s, ranged    ${get_ranged} s"
echo "RESULT ${MIB}MiB upload single/multipart = $(ratio "$put_single" "$put_multipart")" \
    "download single/ranged = $(ratio "$get_single" "$get_ranged")"
