#!/usr/bin/env bash
# Runs the whole test suite against real parts: installs and starts PostgreSQL,
# moto (S3, SQS) and scim2-server (scripts/services.sh), runs every test with
# cargo-nextest (cargo test where nextest is absent), then stops the services.
# Extra arguments go to the test runner, e.g. `scripts/test.sh sim::`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [[ $# -eq 0 ]]; then scripts/lint-deploy.sh; fi  # cfn-lint, checkov, hadolint (full runs only)
eval "$(scripts/services.sh start)"
trap 'scripts/services.sh stop' EXIT

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --no-fail-fast "$@"
  # nextest does not run doc tests.
  if [[ $# -eq 0 ]]; then cargo test --doc; fi
else
  cargo test --all-targets --no-fail-fast "$@"
fi
