#!/usr/bin/env bash
# A PostgreSQL of its own for the MLflow server: a fresh cluster in STATE_DIR (owned by the postgres
# user), on 127.0.0.1 only, with a database `mlflow` for a user `mlflow` whose random password is
# kept in STATE_DIR/password and the SQLAlchemy URI in STATE_DIR/uri (both mode 600, never printed).
# Installs Debian's `postgresql` first if it is missing (as root).
#   deploy/postgres.sh up STATE_DIR [PORT]     (PORT: a free one by default)
#   deploy/postgres.sh down STATE_DIR
set -euo pipefail

install() {
  ls /usr/lib/postgresql/*/bin/pg_ctl > /dev/null 2>&1 && return 0
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql > /dev/null
}

bin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1; }
as_postgres() { runuser -u postgres -- "$@"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

up() {
  local state=$1 port=${2:-}
  install
  mkdir -p "$state" && chown postgres "$state" && chmod 700 "$state"
  if [ ! -s "$state/data/PG_VERSION" ]; then
    # the postgres user over the local socket only (peer); everyone over TCP with a password
    as_postgres "$(bin)/initdb" -D "$state/data" --auth-local=peer --auth-host=scram-sha-256 -U postgres > "$state/initdb.log"
  fi
  if ! as_postgres "$(bin)/pg_ctl" -D "$state/data" status > /dev/null 2>&1; then
    port=${port:-$(cat "$state/port" 2> /dev/null || free_port)}
    echo "$port" > "$state/port"
    as_postgres "$(bin)/pg_ctl" -D "$state/data" -l "$state/postgres.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $state" start > /dev/null
  fi
  port=$(cat "$state/port")
  [ -s "$state/password" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_hex(16))' > "$state/password")
  as_postgres psql -h "$state" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -v pw="$(cat "$state/password")" <<'SQL' > /dev/null
SELECT 'CREATE ROLE mlflow LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') \gexec
ALTER ROLE mlflow PASSWORD :'pw';
SELECT 'CREATE DATABASE mlflow OWNER mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow') \gexec
SQL
  (umask 077; echo "postgresql://mlflow:$(cat "$state/password")@127.0.0.1:$port/mlflow" > "$state/uri")
  echo "postgresql on 127.0.0.1:$port (URI in $state/uri)"
}

down() {
  local state=$1
  [ -d "$state/data" ] || return 0
  as_postgres "$(bin)/pg_ctl" -D "$state/data" -m fast -w stop > /dev/null 2>&1 || true
}

case "${1:-}" in
  up) up "$2" "${3:-}" ;;
  down) down "$2" ;;
  *) echo "usage: $0 up STATE_DIR [PORT] | down STATE_DIR" >&2; exit 2 ;;
esac
