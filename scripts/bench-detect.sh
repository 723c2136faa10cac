#!/usr/bin/env bash
# What the defect detectors cost, on one cell, in one run: the same encode with no
# detectors, with a detector pass over the source before it, and with the detectors
# inside its own FFmpeg; and the encode run raw on a local file, the physical limit.
# Prints each one's wall time and total CPU (the cell and every FFmpeg it ran).
#
#   scripts/bench-detect.sh                  # a 120 s 1280x720 clip
#   BENCH_SECS=30 scripts/bench-detect.sh    # quicker, rougher
#
# Not a test: it asserts nothing, and its figures move with the machine's load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=bench-detect
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

SECS="${BENCH_SECS:-120}"
SIZE="${BENCH_SIZE:-1280x720}"
WORK=/var/tmp/cellfarm-bench-detect
RUN="detect$(date +%s)"
BUCKET="cellfarm-bench"
ENCODE='"-i", "{input}", "-map", "0:v:0", "-map", "0:a:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-threads", "{threads}", "-c:a", "aac", "{out}/out.mp4"'
DETECT='{ black = "flag", freeze = "flag", silence = "flag", decode_errors = "flag" }'

scripts/services.sh >/dev/null
# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh
BIN="$(bench_binary)"  # BENCH_BIN=path measures that binary as it is

mkdir -p "$WORK"
CLIP="$WORK/clip-${SECS}s-$SIZE.mp4"
if [ ! -s "$CLIP" ]; then
    ffmpeg -nostdin -hide_banner -loglevel error -y \
        -f lavfi -i "testsrc2=size=$SIZE:rate=25" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
        -t "$SECS" -ac 2 -c:v libx264 -preset veryfast -g 50 -pix_fmt yuv420p -c:a aac -f mp4 "$CLIP.part"
    mv "$CLIP.part" "$CLIP"
fi
put_object "$BUCKET" detect/clip.mp4 "$CLIP"

CONFIG="$WORK/$RUN.toml"
private_config "$RUN" "$BUCKET" "$WORK/scratch" "$CONFIG"
sed -i -e "s/^slots = .*/slots = 1/" "$CONFIG"
cat >>"$CONFIG" <<TOML

[pipelines.plain]
pool = "default"
output = "s3://$BUCKET/$RUN/plain/"
steps = [{ args = [$ENCODE] }]
outputs = [{ path = "out.mp4" }]

[pipelines.pass]
pool = "default"
output = "s3://$BUCKET/$RUN/pass/"
steps = [{ detect = $DETECT }, { args = [$ENCODE] }]
outputs = [{ path = "out.mp4" }]

[pipelines.inside]
pool = "default"
output = "s3://$BUCKET/$RUN/inside/"
steps = [{ args = [$ENCODE], detect = $DETECT }]
outputs = [{ path = "out.mp4" }]
TOML
"$BIN" --config "$CONFIG" migrate >/dev/null

echo "== $SECS s $SIZE, $(nproc) cores, one cell with one slot"
mkdir -p "$WORK/raw"
raw_cmd=$("$BIN" --config "$CONFIG" args --pipeline plain --input "$CLIP" --out "$WORK/raw" --threads "$(nproc)")
start=$(date +%s.%N)
/usr/bin/time -f "%U %S" -o "$WORK/raw.time" bash -c "$(python3 -c '
import json, shlex, sys
print(" && ".join(shlex.join(json.loads(l)) for l in sys.argv[1].splitlines()))' "$raw_cmd")"
raw_wall=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
raw_cpu=$(awk '{ print $1 + $2 }' "$WORK/raw.time")
echo "raw encode          : wall $raw_wall s, cpu $raw_cpu s"

for p in plain pass inside; do
    "$BIN" --config "$CONFIG" submit "s3://$BUCKET/detect/clip.mp4" --pipeline "$p" >/dev/null
    cpu=$(timed_cell "$BIN" "$CONFIG" "$WORK/$RUN-$p.log")
    wall=$(psql -qtA "$CELLFARM_TEST_PG" -c \
        "SELECT round(extract(epoch FROM finished_at - started_at)::numeric, 2) FROM \"$RUN\".jobs WHERE pipeline = '$p' AND state = 'succeeded'")
    [ -n "$wall" ] || die "$p did not succeed; see $WORK/$RUN-$p.log"
    printf 'farm %-14s: wall %s s, cpu %s s (%s x raw cpu)\n' "$p" "$wall" "$cpu" \
        "$(python3 -c "print(f'{$cpu / $raw_cpu:.3f}')")"
done

psql -qtA "$CELLFARM_TEST_PG" -c "SET client_min_messages = warning; DROP SCHEMA \"$RUN\" CASCADE" >/dev/null
rm -rf "$WORK/raw" "$WORK/scratch" "$CONFIG"
