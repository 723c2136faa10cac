#!/usr/bin/env bash
# What the dashboard costs with a real backlog: fills a farm of its own (farm
# `dashbench`, schema `cellfarm_dashbench`) with N jobs (default 10,000) spread over
# every state and the last hour, then prints the page's weight, the server's time to
# the first byte and to the last, and headless Chromium's time to a rendered
# screenshot (scripts/dashboard-shot.sh's browser).
#
#   scripts/bench-dashboard.sh            # 10,000 jobs
#   scripts/bench-dashboard.sh 100000
#
# Not a test: it asserts nothing about speed. It drops and refills its own schema.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCRIPT_DIR=scripts
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$SCRIPT_DIR/lib.sh"

jobs="${1:-10000}"
apt_install chromium curl
scripts/services.sh >/dev/null
# shellcheck source-path=SCRIPTDIR source=env.sh
. scripts/env.sh
cargo build --locked --quiet --bin cellfarm
bin="$CARGO_TARGET_DIR/debug/cellfarm"

work="$(mktemp -d)"
cleanup() {
    if [ -n "$DASHBOARD_PID" ]; then kill "$DASHBOARD_PID" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

sed -e 's/^name = "demo"/name = "dashbench"/' -e 's/^schema = "cellfarm_demo"/schema = "cellfarm_dashbench"/' \
    examples/local.toml >"$work/farm.toml"
grep -q '^schema = "cellfarm_dashbench"' "$work/farm.toml" || die "examples/local.toml changed shape"
pg="postgres://postgres@127.0.0.1:5432/test"
psql -q "$pg" -c 'DROP SCHEMA IF EXISTS cellfarm_dashbench CASCADE'
"$bin" --config "$work/farm.toml" migrate >/dev/null
log "inserting $jobs jobs"
psql -q "$pg" <<SQL
SET search_path TO cellfarm_dashbench;
INSERT INTO jobs (id, pipeline, pool, source_bucket, source_key, source_etag, message, state,
                  lease_expires, error, probe, started_at, finished_at, attempts)
SELECT 'job' || i, (ARRAY['hls', 'thumbnails', 'fermi'])[1 + i % 3], 'default', 'b', 'k' || i, 'e',
       jsonb_build_object('work_secs', 30), s,
       CASE WHEN s = 'running' THEN now() + interval '1 hour' END,
       CASE WHEN s IN ('failed', 'dead') THEN 'bad media ' || i END,
       '{"duration": 10}'::jsonb,
       now() - make_interval(secs => i % 3600 + 40),
       CASE WHEN s NOT IN ('queued', 'running') THEN now() - make_interval(secs => i % 3600) END, 1
FROM (SELECT i, (ARRAY['succeeded', 'succeeded', 'succeeded', 'succeeded', 'queued', 'running',
                       'failed', 'dead', 'cancelled'])[1 + i % 9] AS s
      FROM generate_series(1, $jobs) AS i) AS g;
INSERT INTO cell_events (at, pool, kind, cell_id, cells, reason, instance_id, instance_type, az,
                         lifecycle, price_per_hour, on_demand_per_hour)
SELECT now() - make_interval(secs => 3000 - c * 60), 'default', 'alive', 'i-' || c, 1, 'up',
       'i-' || c, 'c5.large', 'us-east-1' || (ARRAY['a', 'b'])[1 + c % 2], 'spot', 0.04, 0.085
FROM generate_series(1, 20) AS c;
SQL

start_dashboard "$bin" "$work/farm.toml" "$work"
url="$DASHBOARD_URL"
curl -fsS -o /dev/null "$url" # warm the connections
for path in "" api/snapshot metrics; do
    curl -fsS -o /dev/null -w "/$path: %{size_download} bytes, first byte %{time_starttransfer} s, all %{time_total} s\n" "$url$path"
done
start=$(date +%s.%N)
chromium --headless --no-sandbox --disable-gpu --user-data-dir="$work/profile" \
    --screenshot="$work/shot.png" "$url" >/dev/null 2>&1
end=$(date +%s.%N)
log "chromium: rendered and saved a screenshot in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }') s (browser start included)"
