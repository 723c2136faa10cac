#!/usr/bin/env bash
# Throughput of one cell against the physical limit: the same FFmpeg work run raw on
# local files with the best parallelism found, in the same run. Prints both wall times
# and the ratio raw/farm (1.0 = the farm costs nothing), then the per-job overhead on
# tiny jobs, and for both where a job's time goes outside FFmpeg (the cell's
# `job timings` lines: claim, head, download, probe, checks, upload, commit, settle;
# `slot`, the wait of a job taken ahead for a running encode, is shown apart).
#
#   scripts/bench.sh                 # 12 x 30 s 720p clips through h264_ladder, 20 tiny jobs
#   BENCH_CLIPS=4 BENCH_SECS=10 scripts/bench.sh   # a quicker, rougher run
#   BENCH_RUNS=3 scripts/bench.sh    # the long comparison three times: the ratio's spread
#   BENCH_BUILD=static scripts/bench.sh  # the static musl binary an AMI carries
#   BENCH_CLIPS=0 scripts/bench.sh   # the tiny jobs alone
#
# BENCH_BUILD: release (default: the optimised binary), static (scripts/build-static.sh,
# release profile), debug, or given (the binary BENCH_BIN names, as it is).
#
# Not a test: it asserts nothing, and its figures move with the machine's load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=bench
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

CLIPS="${BENCH_CLIPS:-12}"
SECS="${BENCH_SECS:-30}"
TINY="${BENCH_TINY:-20}"
PIPELINE="${BENCH_PIPELINE:-h264_ladder}"
RUNS="${BENCH_RUNS:-1}"
BUILD="${BENCH_BUILD:-release}"
WORK=/var/tmp/cellfarm-bench
# One directory (and S3 prefix) per shape of clip, so that runs of other shapes do not mix.
MEDIA="media-${CLIPS}x${SECS}s"
RUN="bench$(date +%s)"
BUCKET="cellfarm-bench"

scripts/services.sh >/dev/null
# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh
case "$BUILD" in
    given) BIN="${BENCH_BIN:?BENCH_BUILD=given needs BENCH_BIN=path/to/cellfarm}" ;;
    debug) cargo build --locked --quiet; BIN="$CARGO_TARGET_DIR/debug/cellfarm" ;;
    release) cargo build --locked --quiet --release; BIN="$CARGO_TARGET_DIR/release/cellfarm" ;;
    static) BIN="$(scripts/build-static.sh --release)" ;;
    *) die "BENCH_BUILD must be release, static, debug or given, not $BUILD" ;;
esac
echo "== binary: $BIN ($BUILD)"
PY=/var/tmp/cellfarm-venv/bin/python
[ -x "$PY" ] || PY=python3

mkdir -p "$WORK/$MEDIA" "$WORK/tiny" "$WORK/raw"
make_clip() { # path secs pattern
    [ -s "$1" ] && return 0
    ffmpeg -nostdin -hide_banner -loglevel error -y \
        -f lavfi -i "$3=size=1280x720:rate=25" -f lavfi -i "sine=frequency=440:sample_rate=44100" \
        -t "$2" -ac 2 -c:v libx264 -preset veryfast -pix_fmt yuv420p -c:a aac -f mp4 "$1.part"
    mv "$1.part" "$1"
}
echo "== making $CLIPS x ${SECS} s 720p clips and $TINY x 1 s clips in $WORK"
for i in $(seq -w 1 "$CLIPS"); do make_clip "$WORK/$MEDIA/clip$i.mp4" "$SECS" testsrc2; done
for i in $(seq -w 1 "$TINY"); do make_clip "$WORK/tiny/tiny$i.mp4" 1 testsrc; done

# A private farm for this run: its own queues, schema and output prefix.
CONFIG="$WORK/$RUN.toml"
private_config "$RUN" "$BUCKET" "$WORK/scratch" "$CONFIG"
"$BIN" --config "$CONFIG" migrate >/dev/null

"$PY" - "$BUCKET" "$WORK" "$MEDIA" <<'PYEOF'
import os, sys, boto3
from botocore.config import Config
bucket, work, media = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client("s3", endpoint_url=os.environ["CELLFARM_TEST_S3"],
                  config=Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
except Exception as e:
    if "BucketAlready" not in str(e):
        raise
for sub in (media, "tiny"):
    for name in sorted(os.listdir(os.path.join(work, sub))):
        if name.endswith(".mp4"):
            with open(os.path.join(work, sub, name), "rb") as body:  # one PUT: an ETag
                s3.put_object(Bucket=bucket, Key=f"{sub}/{name}", Body=body)
PYEOF

# Runs the pipeline's exact FFmpeg commands (from `cellfarm args`, asked before the
# clock starts) on local files, P at a time with T threads each (T=0: FFmpeg's own
# choice). Prints the wall seconds.
raw() { # dir pipeline P T
    "$PY" - "$BIN" "$CONFIG" "$1" "$2" "$3" "$4" "$WORK/raw" <<'PYEOF'
import json, os, shutil, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
binary, config, src, pipeline, p, t, out = sys.argv[1:8]
inputs = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".mp4"))
intro = inputs[0]  # stands in for any pipeline asset ({intro}, {outro})
def argv(i, path):
    d = os.path.join(out, f"{pipeline}-{i}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    lines = subprocess.run([binary, "--config", config, "args", "--pipeline", pipeline,
                            "--input", path, "--out", d, "--threads", t,
                            "--asset", f"intro={intro}", "--asset", f"outro={intro}"],
                           check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in lines.splitlines()]
commands = [argv(i, path) for i, path in enumerate(inputs)]
def job(steps):
    for step in steps:
        subprocess.run(step, check=True)
start = time.monotonic()
with ThreadPoolExecutor(max_workers=int(p)) as pool:
    list(pool.map(job, commands))
print(f"{time.monotonic() - start:.2f}")
PYEOF
}

# Where the jobs' time went, from the cell's `job timings` lines in LOG: the mean of
# each phase per job, and the time outside FFmpeg.
breakdown() { # log
    python3 - "$1" <<'PYEOF'
import re, sys
phases, jobs = {}, 0
for line in open(sys.argv[1], errors="replace"):
    if "job timings" not in line:
        continue
    jobs += 1
    for name, ms in re.findall(r"(\w+)=([0-9.]+)ms", line):
        phases[name] = phases.get(name, 0.0) + float(ms)
if not jobs:
    sys.exit("no job timings in " + sys.argv[1])
mean = {k: v / jobs for k, v in phases.items()}
slot = mean.get("slot", 0.0)
outside = mean["total"] - mean["ffmpeg"] - slot
parts = " ".join(f"{k}={v:.1f}" for k, v in mean.items() if k not in ("ffmpeg", "total", "slot"))
print(f"per job (ms, mean of {jobs}): ffmpeg={mean['ffmpeg']:.1f} slot={slot:.1f} outside={outside:.1f} [{parts}]")
PYEOF
}

# Submits every object under PREFIX, runs one cell until done, prints the wall seconds
# from the first job's start to the last job's commit (from the ledger); the cell's
# start-up before its first job (connections, the sandbox's checks) is shown apart.
# The submit's ranged probes (which spare the cell its own) are timed apart, on stderr.
farm() { # prefix pipeline [--force: again, for a later run]
    local start
    start=$(date +%s.%N)
    "$BIN" --config "$CONFIG" submit --prefix "s3://$BUCKET/$1/" --pipeline "$2" ${3:+"$3"} >/dev/null
    echo "submit with ranged probes: $(python3 -c "import time; print(f'{time.time() - $start:.2f}')") s" >&2
    start=$(date +%s.%N)
    "$BIN" --config "$CONFIG" cell --until-idle 1 2>"$WORK/$RUN-$2.log"
    local failed
    failed=$(psql -qtA "$CELLFARM_TEST_PG" -c "SELECT count(*) FROM \"$RUN\".jobs WHERE pipeline = '$2' AND state <> 'succeeded'")
    [ "$failed" = 0 ] || die "$failed $2 job(s) did not succeed; see $WORK/$RUN-$2.log"
    local boot
    boot=$(psql -qtA "$CELLFARM_TEST_PG" -c \
        "SELECT round((extract(epoch FROM min(started_at)) - $start)::numeric, 2) FROM \"$RUN\".jobs WHERE pipeline = '$2'")
    echo "cell start to its first job: ${boot} s (once a cell's life, not counted below)" >&2
    psql -qtA "$CELLFARM_TEST_PG" -c \
        "SELECT round(extract(epoch FROM max(finished_at) - min(started_at))::numeric, 2) FROM \"$RUN\".jobs WHERE pipeline = '$2'"
}

best() { printf '%s\n' "$@" | sort -g | head -n 1; }
CORES=$(nproc)

ratios=()
[ "$CLIPS" -gt 0 ] || RUNS=0  # BENCH_CLIPS=0: the tiny jobs alone
for run in $(seq 1 "$RUNS"); do
    echo "== $PIPELINE: $CLIPS x ${SECS} s 720p, $CORES cores (run $run of $RUNS)"
    seq_auto=$(raw "$WORK/$MEDIA" "$PIPELINE" 1 0);      echo "raw  1 at a time, FFmpeg's threads : ${seq_auto} s"
    par_one=$(raw "$WORK/$MEDIA" "$PIPELINE" "$CORES" 1); echo "raw  $CORES at a time, 1 thread each  : ${par_one} s"
    par_auto=$(raw "$WORK/$MEDIA" "$PIPELINE" "$CORES" 0); echo "raw  $CORES at a time, FFmpeg's threads: ${par_auto} s"
    farm_s=$(farm "$MEDIA" "$PIPELINE" --force);            echo "farm one cell (config defaults)     : ${farm_s} s"
    breakdown "$WORK/$RUN-$PIPELINE.log"
    raw_s=$(best "$seq_auto" "$par_one" "$par_auto")
    ratio=$(python3 -c "print(f'{$raw_s / $farm_s:.3f}')")
    ratios+=("$ratio")
    echo "RESULT $PIPELINE raw_best=${raw_s}s farm=${farm_s}s ratio raw/farm = $ratio"
done
[ "$RUNS" -le 1 ] || echo "RESULT $PIPELINE ratio over $RUNS runs: min $(best "${ratios[@]}") max $(printf '%s\n' "${ratios[@]}" | sort -g | tail -n 1) (${ratios[*]})"

echo "== thumbnails: $TINY x 1 s 720p (per-job overhead)"
tiny_raw=$(raw "$WORK/tiny" thumbnails "$CORES" 1); echo "raw  $CORES at a time : ${tiny_raw} s"
tiny_farm=$(farm tiny thumbnails);                  echo "farm one cell       : ${tiny_farm} s"
breakdown "$WORK/$RUN-thumbnails.log"
echo "RESULT thumbnails overhead per job = $(python3 -c "print(round(($tiny_farm - $tiny_raw) * 1000 / $TINY))") ms wall ($CORES slots)"

psql -qtA "$CELLFARM_TEST_PG" -c "SET client_min_messages = warning; DROP SCHEMA \"$RUN\" CASCADE" >/dev/null
rm -rf "$WORK/raw" "$CONFIG"
