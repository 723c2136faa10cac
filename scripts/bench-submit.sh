#!/usr/bin/env bash
# How fast `cellfarm submit --prefix` enqueues a backlog (FERMI's is 1.5 million
# videos): N objects under one prefix, submitted with --no-probe (ledger rows and
# confirmed publishes only), then 1,000 of them with the ranged probe of each, for
# comparison. Prints jobs per second for both. The objects are small and not media: with
# --no-probe nothing reads them, and the probed run measures what a failed probe costs
# (a spawn), which is a floor for a real one.
#
#   scripts/bench-submit.sh                  # 20,000 objects
#   BENCH_OBJECTS=100000 scripts/bench-submit.sh
#   BENCH_BUILD=debug scripts/bench-submit.sh
#
# Not a test: it asserts nothing about speed, and its figures move with the machine's
# load. The submit's own log says how long the listing took and how fast the jobs were
# recorded and published: s3s-fs lists a thousand keys in about half a second, without
# ETags, so submit HEADs every object (32 at once); S3's listing carries them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=bench-submit
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

OBJECTS="${BENCH_OBJECTS:-20000}"
BUILD="${BENCH_BUILD:-release}"
WORK=/var/tmp/cellfarm-bench-submit
RUN="benchsubmit$(date +%s)"
BUCKET="cellfarm-bench-submit"

scripts/services.sh >/dev/null
# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh
case "$BUILD" in
    debug) cargo build --locked --quiet; BIN="$CARGO_TARGET_DIR/debug/cellfarm" ;;
    release) cargo build --locked --quiet --release; BIN="$CARGO_TARGET_DIR/release/cellfarm" ;;
    *) die "BENCH_BUILD must be release or debug, not $BUILD" ;;
esac
PY=/var/tmp/cellfarm-venv/bin/python
[ -x "$PY" ] || PY=python3

mkdir -p "$WORK"
CONFIG="$WORK/$RUN.toml"
sed -e "s/^name = \"demo\"/name = \"$RUN\"/" \
    -e "s/^schema = \"cellfarm_demo\"/schema = \"$RUN\"/" \
    -e "s#s3://cellfarm-demo/outputs/#s3://$BUCKET/$RUN/#" \
    -e "s#s3://cellfarm-demo/#s3://$BUCKET/#" \
    -e "s#/var/tmp/cellfarm-demo/scratch#$WORK/scratch#" \
    examples/local.toml >"$CONFIG"
"$BIN" --config "$CONFIG" migrate >/dev/null
cleanup() {
    psql -qtA "$CELLFARM_TEST_PG" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS \"$RUN\" CASCADE" >/dev/null || true
    for q in "$RUN.default.work" "$RUN.default.priority" "$RUN.default.dead" "$RUN.results"; do
        as_root rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
    rm -f "$CONFIG" "$WORK/$RUN.log"
}
trap cleanup EXIT

echo "== putting $OBJECTS objects under s3://$BUCKET/backlog/ (once; kept for later runs)"
"$PY" - "$BUCKET" "$OBJECTS" <<'PYEOF'
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
from botocore.config import Config
bucket, n = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=os.environ["CELLFARM_TEST_S3"],
                  config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
try:
    s3.create_bucket(Bucket=bucket)
except Exception as e:
    if "BucketAlready" not in str(e):
        raise
have = set()
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="backlog/"):
    have.update(o["Key"] for o in page.get("Contents", []))
keys = [f"backlog/{i:08d}.mp4" for i in range(n)]
missing = [k for k in keys if k not in have]
with ThreadPoolExecutor(max_workers=32) as pool:
    list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), missing))
# Exactly n objects under the prefix: more from an earlier, larger run are removed.
extra = sorted(have - set(keys))
for i in range(0, len(extra), 1000):
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in extra[i:i + 1000]]})
PYEOF

# Seconds one submit takes; its last line (the count) and its own account of where the
# time went (listing, probes, ledger and broker) go to stderr.
timed_submit() { # prefix pipeline [flags]
    local start end out
    start=$(date +%s.%N)
    out=$("$BIN" --config "$CONFIG" submit --prefix "$1" --pipeline "$2" "${@:3}" 2>"$WORK/$RUN.log" | tail -n 1)
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.2f}')"
    echo "$out" >&2
    grep -E "listed|probed|recorded and published" "$WORK/$RUN.log" | sed 's/^.*INFO //' >&2
}

secs=$(timed_submit "s3://$BUCKET/backlog/" h264_ladder --no-probe)
echo "RESULT submit --no-probe: $OBJECTS jobs in ${secs} s = $(python3 -c "print(round($OBJECTS / $secs))") jobs/s"
# The first 1,000 objects (backlog/00000000 to 00000999) again, as new jobs of another
# pipeline, each probed.
probed=$(( OBJECTS < 1000 ? OBJECTS : 1000 ))
secs=$(timed_submit "s3://$BUCKET/backlog/00000" thumbnails)
echo "RESULT submit with ranged probes: $probed jobs in ${secs} s = $(python3 -c "print(round($probed / $secs))") jobs/s"
