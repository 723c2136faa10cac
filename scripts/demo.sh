#!/usr/bin/env bash
# End-to-end demo on local services (README command 1): generate media, put it
# in S3 (s3s-fs), let the trigger (`watch --reconcile`) route it to every
# pipeline, run one cell until the queues are drained, then show the ledger
# status, the outputs, and where each source's outputs are. Safe to re-run:
# media and uploads are skipped when present, and the trigger takes no object
# twice.
#
# Knobs: CELLFARM_BIN (use this binary and skip the build),
#        CELLFARM_CONFIG (default examples/local.toml).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONFIG="${CELLFARM_CONFIG:-examples/local.toml}"
# Must match the bucket and pipelines named in $CONFIG.
BUCKET=cellfarm-demo
MEDIA_DIR=/var/tmp/cellfarm-demo/media
VENV=/var/tmp/cellfarm-venv
IDLE_SECS=5

LOG_TAG=demo
LOG_HEAD="== "  # its log lines are section headings
DIE_WORD=""
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

log "local services"
scripts/services.sh
# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh

[ -f "$CONFIG" ] || die "config $CONFIG not found"

if [ -n "${CELLFARM_BIN:-}" ]; then
    BIN="$CELLFARM_BIN"
    log "using $BIN (CELLFARM_BIN set: no build)"
else
    BIN="$CARGO_TARGET_DIR/debug/cellfarm"
    # Debug build: much quicker to compile than --release, fast enough here.
    log "cargo build --locked"
    cargo build --locked
fi
[ -x "$BIN" ] || die "$BIN is not an executable"

log "sample media in $MEDIA_DIR"
scripts/media.sh "$MEDIA_DIR"

# No aws CLI is assumed: boto3 in a venv does the S3 side. services.sh makes
# this venv when it installs moto; a moto from elsewhere leaves it to us.
if [ ! -x "$VENV/bin/python" ]; then
    log "creating python venv $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import boto3' >/dev/null 2>&1; then
    log "pip install boto3 into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check boto3
fi
PY="$VENV/bin/python"

# Shared by both python snippets: a path-style client for s3s-fs.
S3_CLIENT_PY='
import os, boto3
from botocore.config import Config
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["CELLFARM_TEST_S3"],
    aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    region_name=os.environ["AWS_REGION"],
    config=Config(s3={"addressing_style": "path"}),
)
'

log "uploading to s3://$BUCKET/ ($CELLFARM_TEST_S3)"
# Quoted heredocs: python text is passed through untouched by the shell.
{ printf '%s\n' "$S3_CLIENT_PY"; cat <<'PYEOF'; } | "$PY" - "$BUCKET" "$MEDIA_DIR"
import sys
from botocore.exceptions import ClientError

bucket, media = sys.argv[1], sys.argv[2]
try:
    s3.head_bucket(Bucket=bucket)
except ClientError:
    s3.create_bucket(Bucket=bucket)
    print(f"created bucket {bucket}")

uploads = [(f"clip{i}.mp4", f"inbox/clip{i}.mp4") for i in (1, 2, 3)]
uploads += [("intro.mp4", "assets/intro.mp4"), ("outro.mp4", "assets/outro.mp4")]
for name, key in uploads:
    path = os.path.join(media, name)
    size = os.path.getsize(path)
    try:
        # Same size already there: keep it, so a re-run changes nothing.
        if s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size:
            print(f"kept     s3://{bucket}/{key} ({size} bytes)")
            continue
    except ClientError:
        pass
    # One PUT, not a multipart upload: s3s-fs gives multipart objects no ETag, and a job
    # id needs one.
    with open(path, "rb") as body:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    print(f"uploaded s3://{bucket}/{key} ({size} bytes)")
PYEOF

log "$BIN --config $CONFIG migrate"
"$BIN" --config "$CONFIG" migrate

# The trigger: one pass of `watch` turns every object under inbox/ into jobs by the
# config's routes (once: a re-run takes nothing it already took).
log "cellfarm watch s3://$BUCKET/inbox/ --reconcile"
"$BIN" --config "$CONFIG" watch "s3://$BUCKET/inbox/" --reconcile

log "running a cell until the queues are empty and it has idled ${IDLE_SECS} s"
"$BIN" --config "$CONFIG" cell --until-idle "$IDLE_SECS"

log "status"
"$BIN" --config "$CONFIG" status

log "outputs in s3://$BUCKET/outputs/"
{ printf '%s\n' "$S3_CLIENT_PY"; cat <<'PYEOF'; } | "$PY" - "$BUCKET"
import sys

bucket = sys.argv[1]
count = total = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="outputs/"):
    for obj in page.get("Contents", []):
        print(f"{obj['Size']:>12}  {obj['Key']}")
        count += 1
        total += obj["Size"]
print(f"{count} objects, {total} bytes under s3://{bucket}/outputs/")
PYEOF

# Outputs are found by the source's name: <pipeline prefix>/<source key>/<job id>/.
log "where each source's outputs are (cellfarm jobs --source)"
"$PY" - "$BIN" "$CONFIG" "$BUCKET" <<'PYEOF'
import json, subprocess, sys

bin_, config, bucket = sys.argv[1:4]
for i in (1, 2, 3):
    source = f"s3://{bucket}/inbox/clip{i}.mp4"
    out = subprocess.run([bin_, "--config", config, "jobs", "--source", source, "--json"],
                         check=True, capture_output=True, text=True).stdout
    print(source)
    for job in sorted(json.loads(out), key=lambda j: j["pipeline"]):
        print(f"  {job['pipeline']:<12} {job['state']:<9} {job['output']} "
              f"({len(job['outputs'])} object(s))")
PYEOF
log "one source's outputs, object by object: $BIN --config $CONFIG jobs --source s3://$BUCKET/inbox/clip1.mp4"
