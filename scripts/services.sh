#!/usr/bin/env bash
# Make sure every service cellfarm's tests and demo talk to is installed and
# answering on loopback: PostgreSQL, Redis, RabbitMQ, s3s-fs (S3) and
# moto_server (EC2), plus FFmpeg. Idempotent: on a warm machine it only checks,
# which takes about a second. Installs with apt-get (as root, or via sudo).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

S3S_VERSION=0.14.1
S3_PORT=8014
S3_DIR="${CELLFARM_S3_DIR:-/var/tmp/cellfarm-s3}"
S3_LOG=/var/tmp/cellfarm-s3.log
S3_ACCESS_KEY=cellfarm
S3_SECRET_KEY=cellfarm-secret
MOTO_PORT=5000
MOTO_LOG=/var/tmp/cellfarm-moto.log
VENV=/var/tmp/cellfarm-venv

# Daemons and admin tools live in sbin, which a non-root PATH may lack; cargo
# installs into ~/.cargo/bin.
CARGO_BIN="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
PATH="${CARGO_BIN}:${PATH}:/usr/sbin:/sbin"
export PATH

LOG_TAG=services
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$SCRIPT_DIR/lib.sh"


# bash's /dev/tcp needs no extra tool; a closed loopback port refuses at once.
port_open() {
    # shellcheck disable=SC2016 # $0/$1 are expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" >/dev/null 2>&1
}

# Any HTTP status counts: we only want to know the server is serving.
http_answers() {
    curl -s -o /dev/null --max-time 2 "$1"
}

# wait_for SECONDS COMMAND...: poll every half second until COMMAND succeeds.
wait_for() {
    local tries=$(($1 * 2))
    shift
    until "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.5
    done
}

# wait_started NAME PID URL LOGFILE SECONDS: like wait_for, but gives up at
# once (showing the log) if the process we just started has died.
wait_started() {
    local name="$1" pid="$2" url="$3" logfile="$4" tries=$(($5 * 2))
    until http_answers "$url"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited during startup (log: $logfile)"
        fi
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            tail -n 20 "$logfile" >&2 || true
            die "$name did not answer on $url within $5 s (log: $logfile)"
        fi
        sleep 0.5
    done
}

# --- Rust toolchain: cannot be installed from here, only explained ----------
if ! have cargo; then
    die "$(cat <<'EOF'
cargo (the Rust toolchain) was not found, nor in ~/.cargo/bin.
Install it with rustup (https://rustup.rs), e.g.
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  or, where the distribution packages it (Debian 13, Ubuntu 24.04):
    apt-get install rustup && rustup default stable
then open a new shell (or `. ~/.cargo/env`) and run this script again.
EOF
)"
fi

S3S_BIN="$(command -v s3s-fs || true)"

# --- Work out every missing package first, so apt runs at most once ---------
pkgs=()
have psql || pkgs+=(postgresql-client)
if ! port_open 127.0.0.1 5432 && ! have pg_ctlcluster; then pkgs+=(postgresql); fi
have redis-cli || pkgs+=(redis-tools)
if ! port_open 127.0.0.1 6379 && ! have redis-server; then pkgs+=(redis-server); fi
if ! port_open 127.0.0.1 5672 && ! have rabbitmq-server; then pkgs+=(rabbitmq-server); fi
{ have ffmpeg && have ffprobe; } || pkgs+=(ffmpeg)
have curl || pkgs+=(curl ca-certificates)
# moto and the demo's boto3 go in a venv; Debian splits ensurepip out of python3.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3 python3-venv)
# cargo install s3s-fs needs cc: rustc links through it.
if [ -z "$S3S_BIN" ] && ! have cc; then pkgs+=(build-essential pkg-config); fi

if [ "${#pkgs[@]}" -gt 0 ]; then
    apt_install "${pkgs[@]}"
fi

# --- PostgreSQL: trust auth on loopback, database `test` -------------------
pg_ok() {
    PGCONNECT_TIMEOUT=2 psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -w -Atqc 'select 1'
}

if ! pg_ok >/dev/null 2>&1; then
    pg_ver="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$pg_ver" ] || die "PostgreSQL is not answering on 127.0.0.1:5432 and no cluster exists under /etc/postgresql"
    hba="/etc/postgresql/${pg_ver}/main/pg_hba.conf"
    # Tests connect as postgres without a password: trust socket and loopback.
    if ! as_root grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        log "PostgreSQL: trust auth for local, 127.0.0.1 and ::1 in $hba (old file: $hba.orig)"
        [ -e "$hba.orig" ] || as_root cp -p "$hba" "$hba.orig"
        printf '%s\n' \
            '# Written by cellfarm scripts/services.sh: a local test database.' \
            'local   all   all                 trust' \
            'host    all   all   127.0.0.1/32  trust' \
            'host    all   all   ::1/128       trust' |
            as_root tee "$hba" >/dev/null
    fi
    # No systemd in containers: drive the cluster directly.
    if as_root pg_ctlcluster --skip-systemctl-redirect "$pg_ver" main status >/dev/null 2>&1; then
        log "PostgreSQL $pg_ver: reloading configuration"
        as_root pg_ctlcluster --skip-systemctl-redirect "$pg_ver" main reload
    else
        log "PostgreSQL $pg_ver: starting cluster main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$pg_ver" main start
    fi
    wait_for 30 pg_ok || die "PostgreSQL did not accept trust logins on 127.0.0.1:5432 within 30 s"
fi
has_test_db="$(PGCONNECT_TIMEOUT=2 psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -w -Atqc \
    "select 1 from pg_database where datname = 'test'")"
if [ "$has_test_db" != 1 ]; then
    log "PostgreSQL: creating database test"
    createdb -h 127.0.0.1 -U postgres -w test
fi
log "PostgreSQL ok (127.0.0.1:5432, database test)"

# --- Redis: nothing kept on disk --------------------------------------------
redis_ok() {
    [ "$(timeout 3 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]
}
if ! redis_ok; then
    log "Redis: starting on 127.0.0.1:6379"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
        --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for 20 redis_ok || die "Redis did not answer PING within 20 s (log: /var/log/redis/ci.log)"
fi
log "Redis ok (127.0.0.1:6379)"

# --- RabbitMQ: default guest/guest works from loopback -----------------------
if ! port_open 127.0.0.1 5672; then
    # A node that is still booting must not be started twice.
    if pgrep -u rabbitmq -x beam.smp >/dev/null 2>&1; then
        log "RabbitMQ: node is already booting, waiting"
    else
        log "RabbitMQ: starting (rabbitmq-server -detached)"
        as_root rabbitmq-server -detached
    fi
    wait_for 90 port_open 127.0.0.1 5672 ||
        die "RabbitMQ did not open 127.0.0.1:5672 within 90 s (logs: /var/log/rabbitmq/)"
fi
log "RabbitMQ ok (127.0.0.1:5672)"

log "FFmpeg ok ($(command -v ffmpeg), $(command -v ffprobe))"

# --- s3s-fs: S3 API over a plain directory -----------------------------------
if ! port_open 127.0.0.1 "$S3_PORT"; then
    if [ -z "$S3S_BIN" ]; then
        log "s3s-fs: cargo install s3s-fs $S3S_VERSION (compiles; takes minutes)"
        cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked
        S3S_BIN="$(command -v s3s-fs)" || die "s3s-fs not on PATH after cargo install"
    fi
    mkdir -p "$S3_DIR"
    log "s3s-fs: starting on 127.0.0.1:$S3_PORT, data $S3_DIR, log $S3_LOG"
    # setsid + nohup + no inherited fds: it must outlive this script and CI.
    RUST_LOG=info setsid nohup "$S3S_BIN" --host 127.0.0.1 --port "$S3_PORT" \
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" \
        "$S3_DIR" >>"$S3_LOG" 2>&1 </dev/null &
    wait_started s3s-fs "$!" "http://127.0.0.1:$S3_PORT/" "$S3_LOG" 30
fi
log "s3s-fs ok (http://127.0.0.1:$S3_PORT)"

# --- moto_server: EC2 API mock -----------------------------------------------
if ! port_open 127.0.0.1 "$MOTO_PORT"; then
    # A pyenv shim can be on PATH without a working moto behind it: try it.
    if have moto_server && moto_server --help >/dev/null 2>&1; then
        moto_bin="$(command -v moto_server)"
    else
        if [ ! -x "$VENV/bin/moto_server" ]; then
            [ -x "$VENV/bin/python" ] || { log "python venv: creating $VENV"; python3 -m venv "$VENV"; }
            log "moto: pip install 'moto[server]' into $VENV"
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]'
        fi
        moto_bin="$VENV/bin/moto_server"
    fi
    log "moto_server: starting on 127.0.0.1:$MOTO_PORT, log $MOTO_LOG"
    setsid nohup "$moto_bin" -H 127.0.0.1 -p "$MOTO_PORT" >>"$MOTO_LOG" 2>&1 </dev/null &
    wait_started moto_server "$!" "http://127.0.0.1:$MOTO_PORT/" "$MOTO_LOG" 60
fi
log "moto_server ok (http://127.0.0.1:$MOTO_PORT)"

# --- What a test or the demo needs ------------------------------------------
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$SCRIPT_DIR/env.sh"
log "all services up. Environment (or: source scripts/env.sh):"
for var in CELLFARM_TEST_AMQP CELLFARM_TEST_PG CELLFARM_TEST_REDIS CELLFARM_TEST_S3 \
    CELLFARM_TEST_EC2 AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION \
    AWS_DEFAULT_REGION AWS_EC2_METADATA_DISABLED CARGO_TARGET_DIR; do
    printf 'export %s=%q\n' "$var" "${!var}"
done
