#!/usr/bin/env bash
# Installs (idempotently) and starts the real parts the integration tests use:
# a throw-away PostgreSQL cluster, moto's S3/SQS server and scim2-server. Prints
# `export NAME=value` lines for the environment the tests read; `stop` ends them.
#
#   eval "$(scripts/services.sh start)"   # start, then export the variables
#   scripts/services.sh stop
#
# Everything lives under .test-services/ in the repository (ignored by git).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state="$root/.test-services"
venv="$root/.venv"
log() { printf '[services] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() { # url, name
  for _ in $(seq 1 150); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.2
  done
  log "$2 did not answer at $1; its log:"; cat "$state/$2.log" >&2 || true
  return 1
}

ensure_python() {
  local want="$root/scripts/requirements-test.txt"
  if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv"
    python3 -m venv "$venv" >&2
  fi
  # Reinstall only when the pinned list changed since the last install.
  if ! cmp -s "$want" "$venv/.installed-requirements" 2>/dev/null; then
    log "installing $(grep -cv '^#' "$want") pinned Python packages"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$want" >&2
    cp "$want" "$venv/.installed-requirements"
  fi
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -z $d || ! -x $d/initdb ]]; then
    log "installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    d=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  printf '%s' "$d"
}

start_postgres() {
  local bin port data user
  bin=$(pg_bin)
  data="$state/pg"
  port=$(free_port)
  user=$(id -un)
  local run=()
  if [[ $(id -u) == 0 ]]; then
    # PostgreSQL refuses to run as root: use the package's service account.
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    run=(runuser -u postgres --)
    user=postgres
  fi
  rm -rf "$data"; mkdir -p "$data"
  [[ $(id -u) == 0 ]] && chown -R postgres "$state/pg"
  "${run[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$state/initdb.log" 2>&1 \
    || "${run[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >"$state/initdb.log" 2>&1
  "${run[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >&2
  echo "$port" > "$state/pg.port"
  echo "export TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
}

start_moto() {
  local port; port=$(free_port)
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$state/moto.log" 2>&1 &
  echo $! > "$state/moto.pid"
  wait_http "http://127.0.0.1:$port/moto-api/" moto
  echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$port"
  echo "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1"
}

start_scim2() {
  local port; port=$(free_port)
  # Dynamic tenants give every test its own in-memory store under /TENANT.
  "$venv/bin/scim2-server" --hostname 127.0.0.1 --port "$port" \
    --bearer-token scim2-test-token --dynamic-tenants >"$state/scim2.log" 2>&1 &
  echo $! > "$state/scim2.pid"
  wait_http "http://127.0.0.1:$port/" scim2
  echo "export TEST_SCIM2_URL=http://127.0.0.1:$port TEST_SCIM2_TOKEN=scim2-test-token"
}

stop() {
  local bin
  for p in moto scim2; do
    if [[ -f $state/$p.pid ]]; then kill "$(cat "$state/$p.pid")" 2>/dev/null || true; rm -f "$state/$p.pid"; fi
  done
  if [[ -f $state/pg/postmaster.pid ]]; then
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ $(id -u) == 0 ]]; then
      runuser -u postgres -- "$bin/pg_ctl" -D "$state/pg" -m fast -w stop >/dev/null 2>&1 || true
    else
      "$bin/pg_ctl" -D "$state/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
  fi
}

case "${1:-start}" in
  start)
    stop
    mkdir -p "$state"
    [[ $(id -u) == 0 ]] && chmod 755 "$state"
    command -v curl >/dev/null || { apt-get update -qq >&2 && apt-get install -y -qq curl >&2; }
    ensure_python
    start_postgres
    start_moto
    start_scim2
    ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
