#!/usr/bin/env bash
# CI check of every shell script in the repository: shellcheck (following what each
# script sources) over scripts/, ami/ and .ci/. A shell script is a *.sh file or one
# whose #! line names a shell; a new script is checked without being listed here.
# Installs Debian's shellcheck when it is missing. Exit 1 on any finding.
#
#   scripts/check-shell.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_TAG=check-shell
DIE_WORD="FAILED: "
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh  # the working directory is the repository root

have shellcheck || apt_install shellcheck

files=()
while IFS= read -r -d '' f; do
    if [[ "$f" == *.sh ]] || head -n 1 "$f" | grep -Eq '^#!.*[/ ](ba|da|k)?sh( |$)'; then
        files+=("$f")
    fi
done < <(find scripts ami .ci -type f -print0 | sort -z)
[ "${#files[@]}" -gt 0 ] || die "no shell scripts found under scripts/, ami/ or .ci/"

log "shellcheck $(shellcheck --version | sed -n 's/^version: //p'): ${files[*]}"
# -x: follow `. file` into the sourced file, as the `# shellcheck source=` lines say.
shellcheck -x "${files[@]}" || die "shellcheck found problems (above)"
log "${#files[@]} scripts clean"
