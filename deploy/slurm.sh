#!/usr/bin/env bash
# slurm.sh up|down STATE_DIR   (or STATE_DIR from $SLURM_STATE_DIR)
#
# A throwaway single-node Slurm cluster for `make test-cluster`: munged (as user munge),
# slurmctld and slurmd (as root), one partition `debug` holding this node.
# Needs: root, Debian, apt (up installs slurm-wlm and munge when missing).
# All state lives in STATE_DIR: slurm.conf, munge key + socket, spool/state folders, logs, pid files.
# Nothing is started through systemd; /etc/munge and /etc/slurm are left alone. A STATE_DIR
# reused after a crash recovers (and reruns) its jobs: use a fresh one for an empty queue.
#
#   up    install if needed, write the config, start the daemons that are not running, wait until
#         the node is idle (SLURM_UP_TIMEOUT, 60 s; on timeout print the logs, exit 1). Idempotent.
#         Then: export SLURM_CONF=STATE_DIR/slurm.conf  (clients need it: it names the munge socket)
#         Optional: export PATH=STATE_DIR/bin:$PATH, a `sacct` stand-in (see write_sacct_shim).
#   down  cancel every job, stop the daemons (pid files), then any slurmstepd they left. Idempotent.
#
# Requeue (`scontrol requeue` of a --requeue job, JobRequeue=1): Slurm holds the job until
# now + the credential lifetime, AuthInfo cred_expire (man slurm.conf; default 120 s, smallest
# accepted 5: below that slurmctld logs "invalid" and uses 120). SLURM_CRED_EXPIRE sets it here
# (default 10, measured restart ~11 s; 5 gives ~7 s); short sched_interval/bf_interval start the
# job as soon as the hold ends.
set -euo pipefail

ACTION=${1:-}
STATE=${2:-${SLURM_STATE_DIR:-}}
[[ $ACTION =~ ^(up|down)$ && -n $STATE ]] || { echo "usage: $0 up|down STATE_DIR" >&2; exit 2; }
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
CONF=$STATE/slurm.conf
RUN=$STATE/run            # pid files (ours) and logs
MUNGE=$STATE/munge        # key, socket, seed
MARK="SLURM_SH_STATE=$STATE"   # set in the daemons' environment: finds their leftover children
export SLURM_CONF=$CONF

log() { echo "[slurm.sh +${SECONDS}s] $*" >&2; }

install_packages() {
  local p missing=()
  for p in slurm-wlm munge util-linux; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

alive() {  # alive NAME: the process in RUN/NAME.pid is running (a zombie is not)
  local pid
  pid=$(cat "$RUN/$1.pid" 2>/dev/null) && [[ -n $pid && $(ps -o stat= -p "$pid") == [^Z]* ]]
}

start() {  # start NAME CMD...: run CMD in the foreground of its own session, pid to RUN/NAME.pid
  local name=$1; shift
  if alive "$name"; then log "$name already running (pid $(cat "$RUN/$name.pid"))"; return; fi
  env "$MARK" setsid "$@" </dev/null >>"$RUN/$name.out" 2>&1 &
  echo $! >"$RUN/$name.pid"
  log "started $name (pid $!)"
}

setup_dirs() {
  chmod a+x "$STATE"   # munged runs as munge and must reach $MUNGE
  runuser -u munge -- test -x "$STATE" || { log "user munge cannot enter $STATE (a parent folder is private)"; return 1; }
  mkdir -p "$RUN" "$STATE/ctld" "$STATE/spool" "$MUNGE"
  chown munge:munge "$MUNGE"
  chmod 0755 "$MUNGE"   # clients (root, job users) connect to the socket
}

start_munge() {
  if [[ ! -s $MUNGE/munge.key ]]; then
    mungekey --create --keyfile="$MUNGE/munge.key"
  fi
  chown munge:munge "$MUNGE/munge.key"
  chmod 0400 "$MUNGE/munge.key"
  start munged setpriv --reuid=munge --regid=munge --init-groups \
    munged --foreground --key-file="$MUNGE/munge.key" --socket="$MUNGE/munge.socket" \
    --pid-file="$MUNGE/munged.pid" --seed-file="$MUNGE/munge.seed"
  for _ in $(seq 50); do
    [[ -S $MUNGE/munge.socket ]] && munge -n -S "$MUNGE/munge.socket" | unmunge -S "$MUNGE/munge.socket" >/dev/null 2>&1 && return
    sleep 0.2
  done
  log "munged does not answer"; return 1
}

write_conf() {
  local node
  node=$(slurmd -C | head -n1)   # NodeName=<hostname -s> CPUs=.. Boards=.. ... RealMemory=..
  [[ $node == "NodeName=$(hostname -s) "* ]] || { log "unexpected slurmd -C: $node"; return 1; }
  cat >"$CONF.new" <<EOF
# Written by deploy/slurm.sh: a single-node test cluster; all paths inside $STATE
ClusterName=testcluster
SlurmctldHost=$(hostname -s)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE/munge.socket,cred_expire=${SLURM_CRED_EXPIRE:-10}
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/ctld/slurmctld.pid
SlurmdPidFile=$STATE/spool/slurmd.pid
SlurmctldLogFile=$RUN/slurmctld.log
SlurmdLogFile=$RUN/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=3600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
$node State=UNKNOWN
PartitionName=debug Nodes=$(hostname -s) Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.new" "$CONF"
}

write_sacct_shim() {
  # Accounting is off, so the real sacct fails; submitit then never learns that a job died
  # without a result (cancelled, killed): job.result() waits forever. This stand-in answers
  # submitit's `sacct -o JobID,State,NodeList --parsable2 -j ID...` from slurmctld's memory
  # of finished jobs (MinJobAge above); every other option is ignored.
  mkdir -p "$STATE/bin"
  cat >"$STATE/bin/sacct" <<'EOF'
#!/bin/sh
# sacct stand-in written by deploy/slurm.sh (see there)
jobs=
while [ $# -gt 0 ]; do case $1 in -j) jobs="$jobs${jobs:+,}$2"; shift ;; esac; shift; done
echo "JobID|State|NodeList"
exec squeue -t all -h -o '%i|%T|%N' ${jobs:+-j "$jobs"}
EOF
  chmod 0755 "$STATE/bin/sacct"
}

wait_idle() {
  local deadline=$((SECONDS + ${SLURM_UP_TIMEOUT:-60})) state='' name
  while ((SECONDS < deadline)); do
    for name in munged slurmctld slurmd; do alive $name || { log "$name exited"; break 2; }; done
    state=$(timeout 5 sinfo -h -N -o %T 2>/dev/null || true)
    [[ $state == idle ]] && { log "node $(hostname -s) idle"; return; }
    sleep 1
  done
  log "node not idle (sinfo: ${state:-no answer}); logs follow"
  tail -n 40 "$RUN"/*.log "$RUN"/*.out >&2 2>/dev/null || true
  return 1
}

up() {
  install_packages
  setup_dirs
  start_munge
  write_conf
  write_sacct_shim
  start slurmctld slurmctld -D -f "$CONF"
  start slurmd slurmd -D -f "$CONF"
  wait_idle
  echo "export SLURM_CONF=$CONF"
  echo "# optional, a sacct for submitit: export PATH=$STATE/bin:\$PATH"
}

stop() {  # stop NAME: TERM, up to 10 s, then KILL the process in RUN/NAME.pid
  alive "$1" || { rm -f "$RUN/$1.pid"; return 0; }
  local pid
  pid=$(cat "$RUN/$1.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$1" || break; sleep 0.2; done
  alive "$1" && { log "$1 ($pid) ignored TERM; killing"; kill -9 "$pid" 2>/dev/null || true; }
  rm -f "$RUN/$1.pid"
  log "stopped $1 ($pid)"
}

cancel_jobs() {
  alive slurmctld || return 0
  timeout 10 scancel --partition=debug 2>/dev/null || true
  for _ in $(seq 30); do
    [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && return
    sleep 1
  done
  log "jobs still listed after 30 s: stopping the daemons anyway"
}

kill_leftovers() {  # slurmstepd (they carry our daemons' environment) and the jobs under them
  local env pid found=()
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}; pid=${pid%/environ}
    grep -qzxF "$MARK" "$env" 2>/dev/null && found+=("$pid")
  done
  ((${#found[@]})) || return 0
  mapfile -t -O ${#found[@]} found < <(ps -e -o pid=,ppid= | awk -v roots="${found[*]}" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END { do { more = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; print p; more = 1 } } while (more) }')
  log "killing leftovers: $(ps -o pid=,comm= -p "$(IFS=,; echo "${found[*]}")" | xargs)"
  kill -9 "${found[@]}" 2>/dev/null || true
}

down() {
  [[ -d $RUN ]] || { log "nothing to stop in $STATE"; return 0; }
  cancel_jobs
  stop slurmd
  stop slurmctld
  stop munged
  kill_leftovers
}

"$ACTION"
