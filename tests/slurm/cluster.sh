# A private Slurm cluster on this host, for testing the job scripts (sourced).
#   slurm_up DIR     start munged, slurmctld and two slurmd (node1, node2) as
#                    root, everything (config, state, spool, logs, sockets)
#                    under DIR, on free private ports; waits until both nodes
#                    are idle. Exports SLURM_CONF for sbatch/squeue/sinfo.
#   slurm_down DIR   stop them (by the pids they wrote) and say so.
# Debian's slurm-wlm 22.05 and munge. Two slurmd on one host need their own
# port each (slurmd -N), their own TmpFS (pmix puts its per-node server
# directory there), and Open MPI over TCP between the "nodes". Tasks are not
# bound to cores (task/none): two "nodes" share the host's cores, and binding
# would put both nodes' first ranks on core 0.

free_port() { # a port nobody listens on, from 20000-59999
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
}

slurm_up() {
  local d=$1 host ctl_port n1_port n2_port
  host=$(hostname -s)
  mkdir -p "$d"/{etc,state,spool/node1,spool/node2,tmp/node1,tmp/node2,log,run,munge}
  chmod 700 "$d/munge"
  # munge: its own key and socket, so nothing else on the host is involved.
  mungekey --create --keyfile="$d/munge/munge.key" --bits=1024 >/dev/null
  chmod 600 "$d/munge/munge.key"
  munged --key-file="$d/munge/munge.key" --socket="$d/munge/socket" --pid-file="$d/munge/munged.pid" \
         --log-file="$d/log/munged.log" --seed-file="$d/munge/seed" --force
  ctl_port=$(free_port); n1_port=$(free_port); n2_port=$(free_port)
  cat > "$d/etc/slurm.conf" <<CONF
ClusterName=shardtune-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctl_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/socket
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool/%n
SlurmctldPidFile=$d/run/slurmctld.pid
SlurmdPidFile=$d/run/slurmd-%n.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd-%n.log
TmpFS=$d/tmp/%n
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=pmix
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
JobRequeue=0
# 4 CPUs each whatever the host has (config_overrides), so that a 1-node and
# a 2-node job of 2 ranks run at the same time.
NodeName=node1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$n1_port CPUs=4 Sockets=1 CoresPerSocket=4 ThreadsPerCore=1 State=UNKNOWN
NodeName=node2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$n2_port CPUs=4 Sockets=1 CoresPerSocket=4 ThreadsPerCore=1 State=UNKNOWN
PartitionName=test Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  export SLURM_CONF="$d/etc/slurm.conf"
  slurmctld -i -f "$SLURM_CONF"
  slurmd -N node1 -f "$SLURM_CONF"
  slurmd -N node2 -f "$SLURM_CONF"
  local i
  for i in $(seq 60); do
    [ "$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -c ' idle$')" = 2 ] && return 0
    sleep 1
  done
  echo "slurm_up: the nodes did not become idle:" >&2
  sinfo -N -l >&2 || true
  tail -n 20 "$d"/log/*.log >&2
  return 1
}

slurm_down() {
  local d=$1 f
  for f in "$d"/run/slurmd-*.pid "$d"/run/slurmctld.pid "$d"/munge/munged.pid; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  for i in $(seq 20); do
    local alive=0
    for f in "$d"/run/*.pid "$d"/munge/munged.pid; do
      [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1
    done
    [ $alive = 0 ] && return 0
    sleep 0.5
  done
  for f in "$d"/run/*.pid "$d"/munge/munged.pid; do [ -s "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  return 0
}
