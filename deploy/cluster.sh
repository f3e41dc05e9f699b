#!/usr/bin/env bash
# Run COMMAND against real engines started here, and stop them all afterwards, whatever COMMAND did:
# a single-node Slurm cluster (deploy/slurm.sh) and a PostgreSQL-backed MLflow server with
# basic-auth on a free 127.0.0.1 port (deploy/mlflow_server.sh). `make test-cluster` runs the
# tests marked `cluster` this way. COMMAND sees MNIST_CNN_CLUSTER_URI (the server),
# MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD and SLURM_CONF.
#   deploy/cluster.sh COMMAND [ARGS...]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="$(mktemp -d /tmp/mnist-cnn-cluster.XXXXXX)"
chmod 755 "$STATE"  # PostgreSQL runs as its own user inside it

stop() {
  "$HERE/mlflow_server.sh" down "$STATE/server" || true
  "$HERE/slurm.sh" down "$STATE/slurm" || true
}
trap stop EXIT

started=$(date +%s)
"$HERE/slurm.sh" up "$STATE/slurm" > /dev/null
# A port found free can be taken before the server binds it (PostgreSQL, started in between, picks
# its own the same way): on exit 3 (port taken) try another.
for attempt in 1 2 3 4 5; do
  PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  rc=0; MNIST_CNN_SERVER_AUTH=basic-auth "$HERE/mlflow_server.sh" up "$STATE/server" "$PORT" || rc=$?
  [ "$rc" = 3 ] || break
  echo "port $PORT was taken (attempt $attempt of 5)" >&2
done
[ "$rc" = 0 ] || exit "$rc"
echo "cluster set up in $(( $(date +%s) - started )) s (state in $STATE)"

export SLURM_CONF="$STATE/slurm/slurm.conf"
export PATH="$STATE/slurm/bin:$PATH"  # slurm.sh's sacct stand-in: submitit learns of a job that died (accounting is off)
export MNIST_CNN_CLUSTER_URI="http://127.0.0.1:$PORT" MLFLOW_TRACKING_URI="http://127.0.0.1:$PORT"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(cat "$STATE/server/admin_password")"
"$@"
