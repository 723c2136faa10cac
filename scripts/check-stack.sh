#!/usr/bin/env bash
# CI check of the stack as code, deploy/cellfarm.yaml: cfn-lint on the template, then
# parliament on its IAM policies (deploy/policies.py: a finding above LOW fails unless
# the script gives the reason it is accepted). Creating the stack on moto_server is a
# cargo test (tests/stack.rs). Installs cfn-lint and parliament from PyPI into the venv
# scripts/services.sh uses (/var/tmp/cellfarm-venv). Exit 1 on any finding.
#
#   scripts/check-stack.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_TAG=check-stack
DIE_WORD="FAILED: "
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

VENV=/var/tmp/cellfarm-venv
TEMPLATE=deploy/cellfarm.yaml

python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3 python3-venv
[ -x "$VENV/bin/python" ] || { log "python venv: creating $VENV"; python3 -m venv "$VENV"; }
if [ ! -x "$VENV/bin/cfn-lint" ] || ! "$VENV/bin/python" -c 'import parliament, yaml' 2>/dev/null; then
    log "pip install cfn-lint parliament into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        'cfn-lint>=1.20,<2' 'parliament>=1.6,<2'
fi

log "cfn-lint $("$VENV/bin/cfn-lint" --version | awk '{print $2}') $TEMPLATE"
"$VENV/bin/cfn-lint" "$TEMPLATE" || die "cfn-lint found problems in $TEMPLATE (above)"

log "parliament on the policies of $TEMPLATE (deploy/policies.py)"
"$VENV/bin/python" deploy/policies.py "$TEMPLATE" ||
    die "parliament found problems in the policies of $TEMPLATE (above)"
log "$TEMPLATE clean"
