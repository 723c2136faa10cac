#!/usr/bin/env bash
# One long video, whole on one cell against chunked, side by side in one run: wall
# time, total CPU seconds (the cells and every FFmpeg they ran) and output size, at the
# same encoder settings, for chunks of 10, 60 and 180 s; and raw FFmpeg encoding it
# whole on local files, the physical limit. Prints each against whole.
#
#   scripts/bench-chunked.sh                       # a 10-minute 640x360 title
#   BENCH_SECS=120 scripts/bench-chunked.sh        # a quicker, rougher run
#   BENCH_SIZE=1280x720 scripts/bench-chunked.sh   # bigger frames
#   BENCH_CHUNKS="60" scripts/bench-chunked.sh     # one chunk length
#
# The title has a keyframe every 2 s, as a camera or an edit's export makes; cuts snap
# to a keyframe within a quarter of the chunk length. Whole runs on one cell with one
# slot (FFmpeg's threads on every core); chunked on one cell with a slot per core (one
# thread each), the most a farm of 2-core machines gets from each of them.
#
# Not a test: it asserts nothing, and its figures move with the machine's load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=bench-chunked
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

SECS="${BENCH_SECS:-600}"
SIZE="${BENCH_SIZE:-640x360}"
CHUNKS="${BENCH_CHUNKS:-10 60 180}"
WORK=/var/tmp/cellfarm-bench-chunked
RUN="chunks$(date +%s)"
BUCKET="cellfarm-bench"
VIDEO='"-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-threads", "{threads}"'
AUDIO='"-c:a", "aac", "-ac", "2", "-b:a", "128k"'

scripts/services.sh >/dev/null
# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh
BIN="$(bench_binary)"  # BENCH_BIN=path measures that binary as it is
PY=/var/tmp/cellfarm-venv/bin/python
[ -x "$PY" ] || PY=python3

mkdir -p "$WORK"
TITLE="$WORK/title-${SECS}s-$SIZE.mp4"
if [ ! -s "$TITLE" ]; then
    echo "== making a ${SECS} s $SIZE title (once)"
    ffmpeg -nostdin -hide_banner -loglevel error -y \
        -f lavfi -i "testsrc2=size=$SIZE:rate=25,noise=alls=6:allf=t" \
        -f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$SECS" -ac 2 \
        -c:v libx264 -preset veryfast -crf 18 -g 50 -pix_fmt yuv420p -c:a aac -f mp4 "$TITLE.part"
    mv "$TITLE.part" "$TITLE"
fi

CONFIG="$WORK/$RUN.toml"
private_config "$RUN" "$BUCKET" "$WORK/scratch" "$CONFIG"
cat >>"$CONFIG" <<TOML

[pipelines.whole]
pool = "default"
output = "s3://$BUCKET/$RUN/whole/"
steps = [{ args = ["-i", "{input}", "-map", "0:v:0", "-map", "0:a:0", $VIDEO, $AUDIO, "{out}/video.mp4"] }]
outputs = [{ path = "video.mp4", video_codec = "h264", audio_codec = "aac", duration = "source" }]
TOML
for c in $CHUNKS; do
    cat >>"$CONFIG" <<TOML

[pipelines.chunked_$c]
pool = "default"
output = "s3://$BUCKET/$RUN/chunked_$c/"
[pipelines.chunked_$c.chunked]
chunk_secs = $c
video = [$VIDEO]
audio = [$AUDIO]
TOML
done
"$BIN" --config "$CONFIG" migrate >/dev/null
put_object "$BUCKET" long/title.mp4 "$TITLE"

# Sets cell.slots in the config.
slots() { sed -i -e "s/^slots = .*/slots = $1/" "$CONFIG"; }

sql() { psql -qtA "$CELLFARM_TEST_PG" -c "$1"; }

# Submits the title to PIPELINE, runs one cell until idle under /usr/bin/time, and
# prints "wall cpu size": the title's first claim to its commit (from the ledger), the
# user+system seconds of the cell and every process it waited for, and the output's
# bytes.
farm() { # pipeline
    "$BIN" --config "$CONFIG" submit "s3://$BUCKET/long/title.mp4" --pipeline "$1" >/dev/null
    local cpu
    cpu=$(timed_cell "$BIN" "$CONFIG" "$WORK/$RUN-$1.log")
    local id state
    id=$(sql "SELECT id FROM \"$RUN\".jobs WHERE pipeline = '$1' AND parent IS NULL")
    state=$(sql "SELECT state FROM \"$RUN\".jobs WHERE id = '$id'")
    [ "$state" = succeeded ] || die "$1: the title is $state; see $WORK/$RUN-$1.log"
    local wall size
    wall=$(sql "SELECT round(extract(epoch FROM max(a.finished_at) - min(a.started_at))::numeric, 2)
                FROM \"$RUN\".job_attempts a JOIN \"$RUN\".jobs j ON j.id = a.job_id
                WHERE j.id = '$id' OR j.parent = '$id'")
    size=$(sql "SELECT (outputs->0->>'size') FROM \"$RUN\".jobs WHERE id = '$id'")
    echo "$wall $cpu $size"
}

echo "== raw FFmpeg, whole, on local files"
mkdir -p "$WORK/raw"
raw_cmd=$("$BIN" --config "$CONFIG" args --pipeline whole --input "$TITLE" --out "$WORK/raw" --threads "$(nproc)")
raw=$("$PY" - "$raw_cmd" <<'PYEOF'
import json, resource, subprocess, sys, time
steps = [json.loads(l) for l in sys.argv[1].splitlines()]
start = time.monotonic()
for step in steps:
    subprocess.run(step, check=True)
wall = time.monotonic() - start
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.2f} {r.ru_utime + r.ru_stime:.2f}")
PYEOF
)
raw_size=$(stat -c %s "$WORK/raw/video.mp4")
echo "raw whole: wall ${raw% *} s, cpu ${raw#* } s, $raw_size bytes"

slots 1
read -r w_wall w_cpu w_size <<<"$(farm whole)"
echo "farm whole (1 cell, 1 slot): wall $w_wall s, cpu $w_cpu s, $w_size bytes"
slots 0
for c in $CHUNKS; do
    read -r c_wall c_cpu c_size <<<"$(farm "chunked_$c")"
    n=$(sql "SELECT count(*) FROM \"$RUN\".jobs WHERE pipeline = 'chunked_$c' AND message->'part'->>'kind' = 'chunk'")
    echo "farm chunked ${c} s ($n chunks, 1 cell, $(nproc) slots): wall $c_wall s, cpu $c_cpu s, $c_size bytes"
    python3 - "$c" "$w_wall" "$w_cpu" "$w_size" "$c_wall" "$c_cpu" "$c_size" <<'PYEOF'
import sys
c, ww, wc, ws, cw, cc, cs = sys.argv[1], *map(float, sys.argv[2:])
print(f"RESULT chunked {c} s vs whole: wall {cw / ww:.3f}x  cpu {100 * (cc / wc - 1):+.1f} %  size {100 * (cs / ws - 1):+.2f} %")
PYEOF
done
python3 -c "print(f'RESULT farm whole vs raw: wall {$w_wall / ${raw% *}:.3f}x cpu {$w_cpu / ${raw#* }:.3f}x')"

sql "SET client_min_messages = warning; DROP SCHEMA \"$RUN\" CASCADE" >/dev/null
rm -rf "$WORK/raw" "$WORK/scratch" "$CONFIG"
