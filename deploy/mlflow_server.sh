#!/usr/bin/env bash
# The team tracking server: `mlflow server` on 127.0.0.1:PORT with a PostgreSQL backend store and
# the artifacts served by the server itself (--serve-artifacts: clients need no shared disk).
#
#   deploy/mlflow_server.sh run  STATE_DIR PORT   in the foreground (`make mlflow-server`)
#   deploy/mlflow_server.sh up   STATE_DIR PORT   in the background, until /health answers
#                                                 (exit 3: PORT is taken; 1: the server did not start)
#   deploy/mlflow_server.sh down STATE_DIR        stop it (and the PostgreSQL this script started)
#
# Backend store: $MLFLOW_BACKEND_STORE_URI if set (your team's PostgreSQL), else a PostgreSQL of its
#   own in STATE_DIR/postgres (deploy/postgres.sh). Artifacts: $MLFLOW_ARTIFACTS_DESTINATION if set
#   (s3://bucket/prefix, gs://..., with the cloud's usual credentials), else STATE_DIR/artifacts.
# MNIST_CNN_SERVER_AUTH=basic-auth: MLflow's password-protected app; the admin password is
#   generated into STATE_DIR/admin_password (mode 600). Passwords never reach the command line or logs.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MLFLOW="${MLFLOW:-$HERE/../.venv/bin/mlflow}"

backend() {  # exports MLFLOW_BACKEND_STORE_URI, mlflow's own variable (never an argument: ps would show it)
  local state=$1
  if [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
    "$HERE/postgres.sh" up "$state/postgres" >&2
    MLFLOW_BACKEND_STORE_URI="$(cat "$state/postgres/uri")"
  fi
  export MLFLOW_BACKEND_STORE_URI
}

auth() {  # basic-auth: an ini MLflow reads, with the admin's generated password
  local state=$1
  [ "${MNIST_CNN_SERVER_AUTH:-}" = "basic-auth" ] || return 0
  umask 077
  [ -s "$state/admin_password" ] || python3 -c "import secrets; print('Adm1n-' + secrets.token_hex(12))" > "$state/admin_password"
  [ -s "$state/flask_secret" ] || python3 -c "import secrets; print(secrets.token_hex(16))" > "$state/flask_secret"
  printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = %s\nadmin_username = admin\nadmin_password = %s\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' \
    "sqlite:///$state/basic_auth.db" "$(cat "$state/admin_password")" > "$state/auth.ini"  # users apart from runs
  export MLFLOW_AUTH_CONFIG_PATH="$state/auth.ini" MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$state/flask_secret")"
  ARGS+=(--app-name basic-auth)
}

prepare() {
  local state=$1 port=$2
  mkdir -p "$state"
  backend "$state"
  ARGS=(server --host 127.0.0.1 --port "$port" --serve-artifacts
        --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$state/artifacts}")
  auth "$state"
  export MLFLOW_DISABLE_TELEMETRY=true
}

up() {
  local state=$1 port=$2
  prepare "$state" "$port"
  setsid "$MLFLOW" "${ARGS[@]}" > "$state/server.log" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid" > "$state/server.pid"
  for _ in $(seq 120); do
    if curl -sf --max-time 2 "http://127.0.0.1:$port/health" > /dev/null; then
      echo "mlflow server on http://127.0.0.1:$port (log: $state/server.log)"; return 0
    fi
    kill -0 "$pid" 2> /dev/null || break  # it exited: no use waiting out the minute
    sleep 0.5
  done
  down "$state"
  if grep -q "Address already in use" "$state/server.log"; then
    echo "mlflow server: port $port on 127.0.0.1 is taken by another process; choose another PORT" >&2
    return 3
  fi
  tail -30 "$state/server.log" >&2; echo "mlflow server did not answer on port $port (log: $state/server.log)" >&2
  return 1
}

down() {
  local state=$1
  if [ -s "$state/server.pid" ]; then  # the server starts workers: stop its whole process group
    kill -TERM -- "-$(cat "$state/server.pid")" 2> /dev/null || true
    sleep 1; kill -KILL -- "-$(cat "$state/server.pid")" 2> /dev/null || true
    rm -f "$state/server.pid"
  fi
  [ ! -d "$state/postgres" ] || "$HERE/postgres.sh" down "$state/postgres"
}

case "${1:-}" in
  run) prepare "$2" "$3"; echo "mlflow server on http://127.0.0.1:$3 (Ctrl-C stops it; deploy/mlflow_server.sh down $2 stops PostgreSQL)"; exec "$MLFLOW" "${ARGS[@]}" ;;
  up) up "$2" "$3" ;;
  down) down "$2" ;;
  *) echo "usage: $0 run|up STATE_DIR PORT | down STATE_DIR" >&2; exit 2 ;;
esac
