#!/usr/bin/env bash
# Start this instance's cell: find the config URL, then become `cellfarm cell`.
# Run by cellfarm.service, installed as /usr/local/bin/cellfarm-boot.
#
# The config URL comes from, in order:
#   1. CELLFARM_CONFIG, which /etc/default/cellfarm may set (the unit's EnvironmentFile);
#   2. the instance's user data, read with IMDSv2. A sibling launched by a cell gets
#      exactly one line there, the s3:// URL of the config (src/cloud/ec2.rs).
#
# Exit codes: 64 when the user data is missing or is not one s3:// URL (an operator
# must fix the launch), 1 when IMDS cannot be reached (systemd retries).
# CELLFARM_METADATA_URL (the same variable cellfarm reads) and CELLFARM_BIN point this
# script at a metadata server and a binary of a test.
set -euo pipefail

IMDS="${CELLFARM_METADATA_URL:-http://169.254.169.254}"
BIN="${CELLFARM_BIN:-/usr/local/bin/cellfarm}"
# Seconds the session token lives: long enough for one read.
TOKEN_TTL_SECS=60

log() { printf 'cellfarm-boot: %s\n' "$*" >&2; }

# Early in boot IMDS can refuse connections for a moment: retry for 30 s or more.
imds() {
    curl --silent --show-error --max-time 5 --retry 10 --retry-delay 3 \
        --retry-connrefused "$@"
}

# user_data: prints the user data; exit 64 if the instance has none, 1 if IMDS fails.
user_data() {
    local token body status
    token="$(imds --fail -X PUT \
        -H "X-aws-ec2-metadata-token-ttl-seconds: $TOKEN_TTL_SECS" \
        "$IMDS/latest/api/token")" || {
        log "no IMDSv2 token from $IMDS/latest/api/token"
        exit 1
    }
    # Without --fail, to tell "no user data" (404) from an outage. The status goes on
    # a line of its own after the body.
    body="$(imds -H "X-aws-ec2-metadata-token: $token" -w '\n%{http_code}' \
        "$IMDS/latest/user-data")" || {
        log "cannot read $IMDS/latest/user-data"
        exit 1
    }
    status="${body##*$'\n'}"
    body="${body%$'\n'*}"
    case "$status" in
        200) printf '%s' "$body" ;;
        404)
            log "this instance has no user data; launch it with the config's s3:// URL as" \
                "its user data, or set CELLFARM_CONFIG in /etc/default/cellfarm"
            exit 64
            ;;
        *)
            log "$IMDS/latest/user-data answered HTTP $status"
            exit 1
            ;;
    esac
}

url="${CELLFARM_CONFIG:-}"
origin=CELLFARM_CONFIG
if [ -z "$url" ]; then
    url="$(user_data)"
    origin="the user data"
fi

# One line, no blanks, s3://bucket/key. The value is not echoed back: user data meant
# for something else (cloud-init) can hold secrets, and this goes to the journal.
if [[ ! "$url" =~ ^s3://[^/[:space:]]+/[^[:space:]]+$ ]]; then
    log "the config URL in $origin is not one line of the form s3://bucket/key" \
        "(${#url} bytes); see 'cloud-init query userdata' or /etc/default/cellfarm"
    exit 64
fi

log "config $url (from $origin)"
exec "$BIN" --config "$url" cell
