#!/usr/bin/env bash
# CI check of the deployment artefacts: the static binary and ami/. Stops at the first
# failure with a message naming it, exit 1.
#
#   1. ami/: shellcheck on the boot script, `systemd-analyze verify` on the unit, `nft -c`
#      on the metadata firewall rule, and the boot script run against a fake IMDS on
#      loopback with a stub cellfarm.
#   2. `packer validate -syntax-only ami/` (Debian 12's packer 1.6.6).
#   3. scripts/build-static.sh with the dev profile (CELLFARM_STATIC_PROFILE overrides):
#      the binary must be statically linked and `--version` must print `cellfarm ...`.
#   4. `packer validate` in full, with that binary. -syntax-only only parses HCL: it
#      passes unknown arguments, undefined variables and blocks this packer's amazon-ebs
#      does not have (metadata_options). The full check catches them, and needs no
#      network or AWS credentials (checked with strace: it connects to nothing).
#
# Installs what is missing with apt-get: file, packer, shellcheck, curl, python3,
# nftables.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

LOG_TAG=check-deploy
DIE_WORD="FAILED: "
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root


pkgs=()
have file || pkgs+=(file)
have packer || pkgs+=(packer)
have shellcheck || pkgs+=(shellcheck)
have curl || pkgs+=(curl ca-certificates)
have python3 || pkgs+=(python3)
have systemd-analyze || pkgs+=(systemd)
have nft || pkgs+=(nftables)
if [ "${#pkgs[@]}" -gt 0 ]; then
    apt_install "${pkgs[@]}"
fi
# Packer 1.6 phones HashiCorp's checkpoint service unless told not to.
export CHECKPOINT_DISABLE=1

WORK="$(mktemp -d)"
IMDS_PID=""
cleanup() {
    [ -z "$IMDS_PID" ] || kill "$IMDS_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. ami/: boot script and unit ------------------------------------------
log "shellcheck ami/cellfarm-boot.sh scripts/build-static.sh scripts/check-deploy.sh"
shellcheck -x ami/cellfarm-boot.sh scripts/build-static.sh scripts/check-deploy.sh ||
    die "shellcheck found problems (above)"

# verify needs ExecStart to exist: point it at the script in this tree.
log "systemd-analyze verify ami/cellfarm.service"
sed "s#^ExecStart=.*#ExecStart=$ROOT/ami/cellfarm-boot.sh#" ami/cellfarm.service \
    >"$WORK/cellfarm.service"
# It exits 0 on unknown keys and bad values, only printing them: any output fails.
verify="$(systemd-analyze verify "$WORK/cellfarm.service" 2>&1)" || true
[ -z "$verify" ] || die "ami/cellfarm.service: $verify"

# The AMI makes the cellfarm user; this machine may have none: check with nobody.
log "nft -c -f ami/imds.nft"
sed 's/"cellfarm"/"nobody"/g' ami/imds.nft >"$WORK/imds.nft"
nft -c -f "$WORK/imds.nft" || die "ami/imds.nft does not load (above)"

# A fake IMDS that, like the real one, wants a PUT token (with a TTL header) before it
# serves user-data, and answers 404 when the instance has none.
cat >"$WORK/imds.py" <<'EOF'
import http.server, os, sys
TOKEN = "fake-imds-token"
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_PUT(self):
        if self.path != "/latest/api/token":
            return self.reply(404)
        if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "").isdigit():
            return self.reply(400)
        self.reply(200, TOKEN.encode())
    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            return self.reply(401)
        path = os.path.join(sys.argv[1], "user-data")
        if self.path != "/latest/user-data" or not os.path.exists(path):
            return self.reply(404)
        with open(path, "rb") as f:
            self.reply(200, f.read())
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), H)
with open(os.path.join(sys.argv[1], "port"), "w") as f:
    f.write(str(server.server_port))
server.serve_forever()
EOF
python3 "$WORK/imds.py" "$WORK" &
IMDS_PID=$!
for _ in $(seq 50); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || die "the fake IMDS did not start"
printf '#!/bin/sh\necho "$*"\n' >"$WORK/cellfarm"
chmod +x "$WORK/cellfarm"

# boot_case NAME USER_DATA|- EXPECTED_EXIT [EXPECTED_ARGS]: `-` means no user data.
boot_case() {
    local out rc=0
    rm -f "$WORK/user-data"
    [ "$2" = - ] || printf '%s' "$2" >"$WORK/user-data"
    out="$(CELLFARM_METADATA_URL="http://127.0.0.1:$(cat "$WORK/port")" \
        CELLFARM_BIN="$WORK/cellfarm" ami/cellfarm-boot.sh 2>"$WORK/boot.err")" || rc=$?
    [ "$rc" -eq "$3" ] ||
        die "cellfarm-boot.sh, $1: exit $rc, expected $3; stderr: $(cat "$WORK/boot.err")"
    [ "$#" -lt 4 ] || [ "$out" = "$4" ] ||
        die "cellfarm-boot.sh, $1: ran cellfarm with '$out', expected '$4'"
}
# The caller's own CELLFARM_CONFIG would skip the user data in every case.
unset CELLFARM_CONFIG
log "ami/cellfarm-boot.sh against a fake IMDS on 127.0.0.1:$(cat "$WORK/port")"
boot_case "one URL" "s3://cells/farm.toml" 0 "--config s3://cells/farm.toml cell"
boot_case "trailing newline" $'s3://cells/farm.toml\n' 0 "--config s3://cells/farm.toml cell"
boot_case "no user data" - 64
boot_case "cloud-config" $'#cloud-config\npackages: [ffmpeg]' 64
boot_case "two lines" $'s3://cells/a.toml\ns3://cells/b.toml' 64
boot_case "https URL" "https://cells.s3.amazonaws.com/farm.toml" 64
CELLFARM_CONFIG=s3://ops/override.toml \
    boot_case "CELLFARM_CONFIG set" "s3://cells/farm.toml" 0 "--config s3://ops/override.toml cell"

# --- 2. Packer template syntax ----------------------------------------------
log "packer validate -syntax-only ami/ ($(packer version | head -n 1))"
packer validate -syntax-only ami/ || die "packer validate -syntax-only ami/"

# --- 3. Static binary -------------------------------------------------------
BIN="$(CELLFARM_STATIC_PROFILE="${CELLFARM_STATIC_PROFILE:-dev}" scripts/build-static.sh)" ||
    die "scripts/build-static.sh"
# Rust's musl target links a static PIE: `file` says "static-pie linked" (and glibc's
# ldd "statically linked"); either way there is no interpreter and no shared library.
kind="$(file -b "$BIN")"
log "file: $kind"
case "$kind" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) die "$BIN is not statically linked: $kind" ;;
esac
version="$("$BIN" --version)" || die "$BIN --version exited $?"
case "$version" in
    "cellfarm "*) log "$BIN --version: $version" ;;
    *) die "$BIN --version printed '$version', expected 'cellfarm <version>'" ;;
esac

# --- 4. Packer template in full, with that binary ---------------------------
log "packer validate -var binary=$BIN ami/"
packer validate -var "binary=$BIN" ami/ || die "packer validate -var binary=$BIN ami/"

log "all deployment checks passed"
