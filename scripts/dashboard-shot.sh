#!/usr/bin/env bash
# The dashboard in a real browser: starts `cellfarm dashboard` against a farm's config,
# renders the page with headless Chromium (Debian's `chromium`, installed if missing),
# saves a screenshot, and fails unless the charts and tables drew and the console
# logged no error.
#
#   scripts/dashboard-shot.sh                              # examples/local.toml (the demo)
#   scripts/dashboard-shot.sh my.toml /tmp/farm.png        # another farm, another file
#   CELLFARM_DASHBOARD_TOKEN=s3cret scripts/dashboard-shot.sh my.toml
#
# Run scripts/demo.sh first for a farm with something to show. Not part of
# scripts/test.sh: tests/dashboard.rs checks the same page's content without a browser.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCRIPT_DIR=scripts
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$SCRIPT_DIR/lib.sh"

config="${1:-examples/local.toml}"
shot="${2:-/tmp/cellfarm-dashboard.png}"

apt_install chromium
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

start_dashboard "$bin" "$config" "$work"
url="$DASHBOARD_URL"
if [ -n "${CELLFARM_DASHBOARD_TOKEN:-}" ]; then
    url="${url}?token=${CELLFARM_DASHBOARD_TOKEN}"
fi
log "rendering $url"

size="1280,1800"
browser=(chromium --headless --no-sandbox --disable-gpu --hide-scrollbars
    --user-data-dir="$work/profile" "--window-size=$size" --virtual-time-budget=3000)
"${browser[@]}" --enable-logging=stderr --v=0 --dump-dom "$url" >"$work/dom.html" 2>"$work/console.log"
"${browser[@]}" --screenshot="$shot" "$url" >/dev/null 2>&1
[ -s "$shot" ] || die "no screenshot was saved to $shot"

if grep -Ei 'CONSOLE.*(error|uncaught)|Uncaught ' "$work/console.log"; then
    die "the page logged errors in the browser's console (above)"
fi
for part in 'id="jobs-chart"' 'id="cells-chart"' '<polyline class="alive"' 'id="pools"' \
    'id="running"' 'id="failures"' 'id="interruptions"' 'id="spend"'; do
    grep -q "$part" "$work/dom.html" || die "the rendered page lacks $part"
done
log "charts and tables drew, no console error; screenshot: $shot"
