#!/usr/bin/env bash
# Lints what ships to production: cfn-lint and checkov on the CloudFormation
# template in deploy/, hadolint and checkov on the Dockerfile. The linters are
# pinned in scripts/requirements-deploy.txt and installed idempotently into
# .venv-deploy (apart from the test services' .venv, which may be shared).
# Exits non-zero on any finding; fix it, or justify a checkov skip inline
# (Metadata checkov:skip with a comment) next to the resource.
#
#   scripts/lint-deploy.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-deploy"
want="$root/scripts/requirements-deploy.txt"
log() { printf '[lint-deploy] %s\n' "$*" >&2; }

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  python3 -m venv "$venv" >&2
  # Keep the environment out of git without touching .gitignore.
  printf '*\n' > "$venv/.gitignore"
fi
# Reinstall only when the pinned list changed since the last install.
if ! cmp -s "$want" "$venv/.installed-requirements" 2>/dev/null; then
  log "installing $(grep -cv '^#' "$want") pinned linters"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$want" >&2
  cp "$want" "$venv/.installed-requirements"
fi

cd "$root"
templates=(deploy/*.yaml)

log "cfn-lint ${templates[*]}"
# Informational rules too; every region the template may be deployed to is
# checked against its own resource specification.
"$venv/bin/cfn-lint" --include-checks I \
  --regions us-east-1 us-east-2 us-west-2 ca-central-1 eu-west-1 eu-west-2 eu-central-1 ap-southeast-2 ap-northeast-1 \
  -- "${templates[@]}"

log "checkov ${templates[*]} Dockerfile"
# --skip-download keeps checkov offline (no platform guidelines fetch); the
# secrets framework looks for credentials committed by mistake.
# Two runs: given both --directory and --file, checkov scans only the directory.
"$venv/bin/checkov" --quiet --compact --skip-download \
  --framework cloudformation secrets --directory deploy
"$venv/bin/checkov" --quiet --compact --skip-download \
  --framework dockerfile secrets --file Dockerfile

log "hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile

log "deploy/ and Dockerfile are clean"
