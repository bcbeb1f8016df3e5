#!/usr/bin/env bash
# slurm-cluster.sh - a real Slurm cluster on this one machine, for development and CI.
#
# Debian's slurm-wlm 22.05 (slurmctld + slurmd + client tools) with munge, and
# accounting through slurmdbd into a private MariaDB instance, so that `sacct` reports
# how jobs ended (COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, CANCELLED).
#
# Usage (as root):
#   scripts/slurm-cluster.sh install
#       apt-get install what is missing (slurm-wlm, munge, slurmdbd, mariadb-server);
#       create the munge key if there is none.
#   scripts/slurm-cluster.sh start [--nodes N] [--no-accounting]
#       install if needed, write the config if it changed, start whatever is not running
#       (munged, MariaDB, slurmdbd, slurmctld, slurmd), wait until the node(s) are up and
#       a job runs, then print one summary line on stdout. On an up cluster with the same
#       options it changes nothing. --nodes N > 1 emulates N nodes on this machine with
#       Slurm's multiple-slurmd support (Debian builds it in).
#   scripts/slurm-cluster.sh stop
#       stop slurmd(s), slurmctld, slurmdbd, MariaDB, munged; keep config and data.
#       Jobs still running keep running (their slurmstepd) and are picked up on `start`.
#   scripts/slurm-cluster.sh status
#       show what runs and whether sinfo/squeue/sacct answer; exit 0 when the cluster is up.
#   scripts/slurm-cluster.sh reset [--all]
#       stop, kill leftover job steps, delete controller state (queue, job counter), slurmd
#       spool (batch scripts) and the daemons' logs, so the next start is clean; jobs'
#       own output files stay where they were written. Job ids continue after the highest
#       one in the accounting database, so `sacct -j ID` never finds an older job.
#       --all also deletes the accounting database (users, accounts, job history).
#   scripts/slurm-cluster.sh add-user USER [ACCOUNT...]
#       add USER to the accounts (default: research); does nothing if already there.
#
# install/start/stop/reset take a lock, so parallel callers (test workers) are safe.
# Example in a test fixture: subprocess.run(["scripts/slurm-cluster.sh", "start"], check=True)
# then sbatch/squeue/sacct as usual; `stop` or `reset` at the end if wanted.
#
# The cluster: ClusterName=hubstack, node $(hostname -s) at 127.0.0.1 (or
# $(hostname -s)-1..N), partitions debug (default, MaxTime 1 h, DefaultTime 30 min) and
# long (MaxTime 1 day), select/cons_tres with CR_Core_Memory (memory is consumable: a node
# can be full), sched/backfill (so `squeue --start` shows expected start times),
# cgroup v1 confinement (task/cgroup: exceeding --mem means the OOM killer and
# OUT_OF_MEMORY), accounts research and teaching. Association enforcement is off, so any
# Unix user can submit. A job without --mem gets DefMemPerCPU=1024 MB per CPU. Batch jobs
# are not requeued when their node fails (JobRequeue=0): they end as NODE_FAIL.
#
# Worth knowing (seen with this setup):
# - a job over its time limit ends as TIMEOUT up to ~30 s late (slurmctld checks limits
#   every 30 s); a dead slurmd makes its jobs NODE_FAIL after ~45 s (SlurmdTimeout=30).
# - sacct lags squeue by a few seconds (a job running in squeue can still be PENDING in
#   sacct), so wait for a terminal state in sacct rather than reading it once.
# - slurmctld saves its state every ~5 s. Stopped with SIGTERM (or `stop`), or killed
#   when its jobs have not changed for a while, it picks the running jobs up again on
#   `start`. Killed with SIGKILL a few seconds after a submission or a job start, it
#   forgets that change: a forgotten submission keeps a RUNNING record in sacct and its
#   id is handed out again; a forgotten start makes the job PENDING again, the node gets
#   drained ("Duplicate jobid"; `start` resumes it) and the job ends up held.
# - the "mpi/pmix ... can not load PMIx library" errors in the logs are harmless
#   (MpiDefault=none; Debian's libpmix2 is not installed).
#
# Files: /etc/slurm/{slurm,cgroup,slurmdbd}.conf, state under /var/lib/slurm (MariaDB's
# datadir is /var/lib/slurm/mariadb, on 127.0.0.1:$SLURM_CLUSTER_DB_PORT), logs in
# /var/log/slurm, pid files in /run/slurm.
# Environment: SLURM_CLUSTER_TIMEOUT (seconds to wait for each step, default 60),
# SLURM_CLUSTER_DB_PORT (default 3307), SLURM_CLUSTER_CGROUP=0 (skip cgroups, use
# proctrack/linuxproc + jobacct_gather/linux with OverMemoryKill).
set -euo pipefail

# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------
cluster=hubstack
etc=/etc/slurm
state=/var/lib/slurm
ctld_state=$state/slurmctld
slurmd_spool=$state/slurmd
log_dir=/var/log/slurm
run_dir=/run/slurm
db_dir=$state/mariadb
db_run=/run/slurm-mariadb
db_sock=$db_run/mariadbd.sock
db_pidfile=$db_run/mariadbd.pid
db_port=${SLURM_CLUSTER_DB_PORT:-3307}
db_name=slurm_acct_db
dbd_port=6819
timeout=${SLURM_CLUSTER_TIMEOUT:-60}
accounts=(research teaching)
packages=(slurmctld slurmd slurm-client slurm-wlm munge slurmdbd mariadb-server mariadb-client)
host=$(hostname -s)

# Filled in by `start`.
nodes=1             # number of slurmd instances
node_names=()       # their NodeNames
accounting=off      # on when slurmdbd + MariaDB work
confine=cgroup      # cgroup (task/cgroup + proctrack/cgroup) or linuxproc (fallback)
started=0           # 1 when this run started or restarted any Slurm daemon

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
say() { printf 'slurm-cluster: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "'$1' needs root"; }

# now_ms: milliseconds since the epoch (for timeouts and the timings in the summary).
now_ms() { date +%s%3N; }

# wait_until SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s until it succeeds. Gives up
# at once if the daemon being waited for died: set watch_pid=PID or watch_name=NAME
# (command name) for the call.
wait_until() {
  local secs=$1 what=$2; shift 2
  local deadline=$(( $(now_ms) + secs * 1000 ))
  until "$@" >/dev/null 2>&1; do
    if { [ -n "${watch_pid:-}" ] && ! running "$watch_pid"; } ||
       { [ -n "${watch_name:-}" ] && [ -z "$(pids_of "$watch_name")" ]; }; then
      say "${watch_name:-$what} exited while waiting for $what"
      return 1
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      say "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# running PID: the process exists and is not a zombie. (A daemon that exited stays a
# zombie until init reaps it, which some container inits do only every few seconds.)
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# pid_alive PIDFILE NAME: the pid file names a live process called NAME.
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# pids_of NAME: live processes whose command name is exactly NAME, one per line; not those
# given another configuration with -f (another cluster on this machine, e.g. one made to
# try power saving), which this script neither counts as its own nor stops.
pids_of() {
  local p
  for p in $(pgrep -x "$1" || true); do
    if running "$p" && ! tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | grep -qx -- -f; then
      echo "$p"
    fi
  done
}

# stop_pids WHAT PID...: SIGTERM, wait up to 30 s until gone, then SIGKILL.
stop_pids() {
  local what=$1; shift
  [ $# -gt 0 ] || return 0
  say "stopping $what (pid $*)"
  kill -TERM "$@" 2>/dev/null || true
  local deadline=$(( $(now_ms) + 30000 )) p alive
  while :; do
    alive=()
    for p in "$@"; do if running "$p"; then alive+=("$p"); fi; done
    [ ${#alive[@]} -eq 0 ] && return 0
    if [ "$(now_ms)" -ge "$deadline" ]; then
      say "$what did not stop within 30 s: SIGKILL"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      sleep 0.5
      return 0
    fi
    sleep 0.1
  done
}

# stop_named NAME: stop every process whose command name is exactly NAME.
stop_named() {
  local pids=()
  mapfile -t pids < <(pids_of "$1")
  stop_pids "$1" "${pids[@]}"
}

# show_log FILE: the end of a log, to explain a failure.
show_log() {
  [ -s "$1" ] || return 0
  say "last lines of $1:"
  tail -n 15 "$1" | sed 's/^/    /' >&2
}

# write_if_changed FILE MODE OWNER < CONTENT: replace FILE only if its content differs.
# Returns 0 when it wrote the file, 1 when it was already up to date.
write_if_changed() {
  local file=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp "$file.XXXXXX") || die "cannot write $file"
  cat >"$tmp"
  chmod "$mode" "$tmp" || die "cannot chmod $file"
  chown "$owner" "$tmp" || die "cannot chown $file"
  if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    chmod "$mode" "$file"; chown "$owner" "$file"
    return 1
  fi
  mv -f "$tmp" "$file"
  say "wrote $file"
  return 0
}

# ---------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------
install_packages() {
  local missing=() p installed
  installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${packages[@]}" 2>/dev/null || true)
  for p in "${packages[@]}"; do grep -qx "ii  $p" <<<"$installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "apt-get install ${missing[*]}"
  # The packages' maintainer scripts would start the system's slurmctld, slurmd, munge
  # and MariaDB; this script runs its own, so forbid that unless a policy already exists.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local rc=0
  # Try with the package lists there are; update them only if that fails.
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
  fi
  [ "$made_policy" = 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install ${missing[*]} failed"
}

ensure_munge_key() {
  local key=/etc/munge/munge.key
  if [ ! -s "$key" ]; then
    say "creating $key"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$key" --force
    else
      dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    fi
    chmod 0400 "$key"
  fi
  chown munge:munge "$key"
}

cmd_install() {
  need_root install
  install_packages
  ensure_munge_key
}

# ---------------------------------------------------------------------------------------
# Directories, munge
# ---------------------------------------------------------------------------------------
prepare_dirs() {
  install -d -o slurm -g slurm -m 0755 "$run_dir" "$log_dir" "$state" "$ctld_state"
  install -d -o root -g root -m 0755 "$slurmd_spool"   # slurmd runs as root
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if [ -n "$(pids_of munged)" ] && munge_works; then return 0; fi
  ensure_munge_key
  if [ -z "$(pids_of munged)" ]; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged </dev/null 9>&- >>"$log_dir/munged.start.log" 2>&1 ||
      { show_log "$log_dir/munged.start.log"; die "munged did not start"; }
  fi
  watch_name=munged wait_until "$timeout" munged munge_works || { show_log /var/log/munge/munged.log; die "munge does not work"; }
}

# ---------------------------------------------------------------------------------------
# Accounting: a private MariaDB and slurmdbd
# ---------------------------------------------------------------------------------------
db() { mariadb --no-defaults --socket="$db_sock" -u root -N -B "$@"; }
db_ping() { mariadb-admin --no-defaults --socket="$db_sock" -u root ping; }

start_mariadb() {
  install -d -o mysql -g mysql -m 0755 "$db_run"
  [ -e "$log_dir/mariadb.log" ] || install -o mysql -g mysql -m 0640 /dev/null "$log_dir/mariadb.log"
  if [ ! -d "$db_dir/mysql" ]; then
    say "initialising MariaDB datadir $db_dir"
    install -d -o mysql -g mysql -m 0700 "$db_dir"
    mariadb-install-db --no-defaults --user=mysql --datadir="$db_dir" \
      --auth-root-authentication-method=socket --skip-test-db \
      >"$log_dir/mariadb-install.log" 2>&1 ||
      { show_log "$log_dir/mariadb-install.log"; return 1; }
  fi
  if ! pid_alive "$db_pidfile" mariadbd; then
    say "starting MariaDB on 127.0.0.1:$db_port"
    # --no-defaults: nothing from /etc/mysql applies; a system MariaDB, if any, is left
    # alone. slurmdbd logs "Database settings not recommended values" with a 128M buffer
    # pool or the default lock wait timeout; these values satisfy it (the pool is only
    # filled as the database grows).
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$db_dir" \
      --socket="$db_sock" --pid-file="$db_pidfile" --port="$db_port" \
      --bind-address=127.0.0.1 --skip-name-resolve --log-error="$log_dir/mariadb.log" \
      --innodb-buffer-pool-size=512M --innodb-log-file-size=64M \
      --innodb-lock-wait-timeout=900 --max-connections=50 \
      </dev/null 9>&- >>"$log_dir/mariadb.log" 2>&1 &
    watch_pid=$! wait_until "$timeout" MariaDB db_ping || { show_log "$log_dir/mariadb.log"; return 1; }
  fi
}

# db_password: the slurm database user's password, kept in slurmdbd.conf (mode 0600).
db_password() {
  local pw=""
  [ -f "$etc/slurmdbd.conf" ] && pw=$(sed -n 's/^StoragePass=//p' "$etc/slurmdbd.conf")
  [ -n "$pw" ] || pw=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
  printf '%s' "$pw"
}

setup_database() {
  local pw=$1
  db -e "CREATE DATABASE IF NOT EXISTS $db_name;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
    GRANT ALL ON $db_name.* TO 'slurm'@'localhost';
    GRANT ALL ON $db_name.* TO 'slurm'@'127.0.0.1';" 2>>"$log_dir/mariadb.log"
}

write_slurmdbd_conf() {
  local pw=$1
  write_if_changed "$etc/slurmdbd.conf" 0600 slurm:slurm <<EOF
# Written by scripts/slurm-cluster.sh; changes are overwritten on the next start.
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=slurm
DebugLevel=info
LogFile=$log_dir/slurmdbd.log
PidFile=$run_dir/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$pw
StorageLoc=$db_name
EOF
}

dbd_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$dbd_port") 2>/dev/null; }

start_slurmdbd() {
  local changed=$1
  if pid_alive "$run_dir/slurmdbd.pid" slurmdbd; then
    [ "$changed" = 1 ] || return 0
    stop_pids slurmdbd "$(cat "$run_dir/slurmdbd.pid")"
  fi
  say "starting slurmdbd"
  /usr/sbin/slurmdbd </dev/null 9>&- >>"$log_dir/slurmdbd.start.log" 2>&1 ||
    { show_log "$log_dir/slurmdbd.start.log"; return 1; }
  watch_name=slurmdbd wait_until "$timeout" slurmdbd dbd_listening || { show_log "$log_dir/slurmdbd.log"; return 1; }
}

# start_accounting: MariaDB, its database and user, slurmdbd. Fails softly (return 1).
start_accounting() {
  local pw changed=0
  start_mariadb || return 1
  pw=$(db_password)
  setup_database "$pw" || { say "could not create database $db_name / user slurm"; return 1; }
  if write_slurmdbd_conf "$pw"; then changed=1; fi
  start_slurmdbd "$changed"
}

# register_accounting: the cluster and the accounts exist in slurmdbd (needs slurm.conf).
known_clusters=""
list_clusters() { known_clusters=$(sacctmgr -nP show cluster format=cluster 2>/dev/null); }
register_accounting() {
  wait_until "$timeout" "sacctmgr to answer" list_clusters || return 1
  if ! grep -qx "$cluster" <<<"$known_clusters"; then
    say "registering cluster $cluster in slurmdbd"
    sacctmgr -i add cluster "$cluster" >/dev/null || return 1
  fi
  local have a
  have=$(sacctmgr -nP show account format=account 2>/dev/null) || return 1
  for a in "${accounts[@]}"; do
    if ! grep -qx "$a" <<<"$have"; then
      say "adding account $a"
      sacctmgr -i add account "$a" cluster="$cluster" Description="$a" Organization=hubstack >/dev/null || return 1
    fi
  done
}

# first_job_id: after `reset` the controller forgets its job counter, but the database
# keeps the old jobs; start numbering after them so `sacct -j ID` never finds an old job.
first_job_id() {
  local old=""
  [ -f "$etc/slurm.conf" ] && old=$(sed -n 's/^FirstJobId=//p' "$etc/slurm.conf")
  if [ -e "$ctld_state/job_state" ] || [ "$accounting" != on ]; then
    printf '%s' "${old:-1}"
    return
  fi
  local max
  max=$(db -e "SELECT COALESCE(MAX(id_job),0) FROM $db_name.${cluster}_job_table" 2>/dev/null) || max=0
  [[ "$max" =~ ^[0-9]+$ ]] || max=0
  printf '%s' "$((max + 1))"
}

# ---------------------------------------------------------------------------------------
# slurm.conf and cgroup.conf
# ---------------------------------------------------------------------------------------

# multiple_slurmd_supported: Debian's libslurm was built with --enable-multiple-slurmd
# (CLUSTER_FLAG_MULTSD = 0x80 in the flags the library reports).
multiple_slurmd_supported() {
  /usr/bin/python3 - <<'EOF' 2>/dev/null
import ctypes, glob, sys
lib = ctypes.CDLL((glob.glob("/usr/lib/*/slurm-wlm/libslurmfull.so") + glob.glob("/usr/lib*/slurm/libslurmfull.so"))[0])
lib.slurmdb_setup_cluster_flags.restype = ctypes.c_uint32
sys.exit(0 if lib.slurmdb_setup_cluster_flags() & 0x80 else 1)
EOF
}

# choose_confinement: task/cgroup + proctrack/cgroup with Slurm's cgroup/v1 plugin, which
# needs the v1 controllers mounted separately under /sys/fs/cgroup (this machine kind has
# that hybrid layout, with an empty cgroup2 at /sys/fs/cgroup/unified; verified to work,
# including OUT_OF_MEMORY). Other layouts (pure cgroup v2) are not configured here: they
# get the fallback, proctrack/linuxproc + jobacct_gather/linux with OverMemoryKill, which
# kills a job over its --mem at the next sample but records it as FAILED, not
# OUT_OF_MEMORY. The same fallback is used if slurmd fails to start with task/cgroup.
choose_confinement() {
  if [ "${SLURM_CLUSTER_CGROUP:-1}" = 0 ]; then confine=linuxproc; return; fi
  local c
  for c in freezer memory cpuset devices cpuacct; do
    if [ ! -e "/sys/fs/cgroup/$c/cgroup.procs" ]; then
      say "no cgroup v1 $c controller at /sys/fs/cgroup/$c: using proctrack/linuxproc"
      confine=linuxproc
      return
    fi
  done
  confine=cgroup
}

write_cgroup_conf() {
  write_if_changed "$etc/cgroup.conf" 0644 root:root <<EOF
# Written by scripts/slurm-cluster.sh; changes are overwritten on the next start.
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
ConstrainDevices=no
EOF
}

# node_lines: NodeName lines; CPUs = nproc, RealMemory = total minus a reserve (split
# between emulated nodes), topology from `slurmd -C` when it agrees with nproc.
node_lines() {
  local cpus total reserve mem topo="" i
  cpus=$(nproc)
  total=$(( $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024 ))
  reserve=$(( total / 4 < 2048 ? total / 4 : 2048 ))
  mem=$(( (total - reserve) / nodes ))
  local probe
  probe=$(slurmd -C 2>/dev/null | head -n 1) || probe=""
  if [[ "$probe" == *" CPUs=$cpus "* ]]; then
    topo=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$probe" || true)
  fi
  if [ "$nodes" -eq 1 ]; then
    echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus ${topo:+$topo }RealMemory=$mem State=UNKNOWN"
  else
    for i in $(seq 1 "$nodes"); do
      echo "NodeName=$host-$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$cpus ${topo:+$topo }RealMemory=$mem State=UNKNOWN"
    done
  fi
}

write_slurm_conf() {
  local acct_lines confine_lines first spool=$slurmd_spool slurmd_log=$log_dir/slurmd.log
  local slurmd_pid=$run_dir/slurmd.pid
  if [ "$nodes" -gt 1 ]; then
    # One spool dir, log and pid file per slurmd (%n = its NodeName).
    spool=$slurmd_spool/%n; slurmd_log=$log_dir/slurmd.%n.log; slurmd_pid=$run_dir/slurmd.%n.pid
  fi
  if [ "$accounting" = on ]; then
    acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port"
  else
    acct_lines="AccountingStorageType=accounting_storage/none"
  fi
  if [ "$confine" = cgroup ]; then
    confine_lines="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=task=10"
  else
    confine_lines="ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=task=2"
  fi
  first=$(first_job_id)
  write_if_changed "$etc/slurm.conf" 0644 root:root <<EOF
# Written by scripts/slurm-cluster.sh; changes are overwritten on the next start.
ClusterName=$cluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ReturnToService=2
FirstJobId=$first

# Daemons' files
SlurmctldPidFile=$run_dir/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$slurmd_log
SlurmctldDebug=info
SlurmdDebug=info
StateSaveLocation=$ctld_state
SlurmdSpoolDir=$spool

# Short timeouts for tests; finished jobs stay in squeue for MinJobAge seconds.
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
# slurmctld caches each user's groups for the jobs it launches this long (default 600 s):
# a group membership the hub sets at a start must reach the job started right after it,
# also for an account that reuses the uid of one removed minutes before (tests do both).
GroupUpdateTime=2

# Scheduling: backfill (expected start times for pending jobs), cores and memory are
# consumable, so a node can be full and jobs pend with reason Resources.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,bf_resolution=10
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
PriorityType=priority/basic
# A batch job whose node fails ends as NODE_FAIL instead of being requeued (Slurm's
# default, JobRequeue=1, puts it back to PENDING under the same id; sbatch --requeue
# still asks for that per job).
JobRequeue=0

# Confinement and accounting
$confine_lines
$acct_lines
JobCompType=jobcomp/none
MailProg=/bin/true

# Nodes and partitions
$(node_lines)
PartitionName=debug Nodes=ALL Default=YES MaxTime=01:00:00 DefaultTime=00:30:00 State=UP
PartitionName=long Nodes=ALL MaxTime=1-00:00:00 DefaultTime=00:30:00 State=UP
EOF
}

# ---------------------------------------------------------------------------------------
# slurmctld and slurmd
# ---------------------------------------------------------------------------------------
ctld_up() { local out; out=$(scontrol ping 2>/dev/null) && [[ "$out" == *"is UP"* ]]; }

start_slurmctld() {
  local restart=$1
  if pid_alive "$run_dir/slurmctld.pid" slurmctld || [ -n "$(pids_of slurmctld)" ]; then
    [ "$restart" = 1 ] || return 0
    stop_named slurmctld
  fi
  say "starting slurmctld"
  started=1
  /usr/sbin/slurmctld </dev/null 9>&- >>"$log_dir/slurmctld.start.log" 2>&1 ||
    { show_log "$log_dir/slurmctld.start.log"; show_log "$log_dir/slurmctld.log"; die "slurmctld did not start"; }
  watch_name=slurmctld wait_until "$timeout" slurmctld ctld_up ||
    { show_log "$log_dir/slurmctld.log"; die "slurmctld does not answer"; }
}

slurmd_pidfile() {
  if [ "$nodes" -eq 1 ]; then echo "$run_dir/slurmd.pid"; else echo "$run_dir/slurmd.$1.pid"; fi
}
slurmd_logfile() {
  if [ "$nodes" -eq 1 ]; then echo "$log_dir/slurmd.log"; else echo "$log_dir/slurmd.$1.log"; fi
}

# start_slurmds RESTART: one slurmd per node; returns 1 if one dies on the way up.
start_slurmds() {
  local restart=$1 n
  if [ "$restart" = 1 ]; then stop_named slurmd; fi
  for n in "${node_names[@]}"; do
    if pid_alive "$(slurmd_pidfile "$n")" slurmd; then continue; fi
    say "starting slurmd for node $n"
    started=1
    local args=()
    if [ "$nodes" -gt 1 ]; then args=(-N "$n"); install -d -m 0755 "$slurmd_spool/$n"; fi
    /usr/sbin/slurmd "${args[@]}" </dev/null 9>&- >>"$log_dir/slurmd.start.log" 2>&1 ||
      { show_log "$log_dir/slurmd.start.log"; return 1; }
  done
  # Each slurmd must write its pid file and stay alive.
  for n in "${node_names[@]}"; do
    watch_name=slurmd wait_until "$timeout" "slurmd $n" pid_alive "$(slurmd_pidfile "$n")" slurmd ||
      { show_log "$(slurmd_logfile "$n")"; return 1; }
  done
}

# nodes_ready: every node answers (idle, or mixed/allocated when jobs run).
nodes_ready() {
  local out
  out=$(sinfo -h -N -o '%t' 2>/dev/null) || return 1
  [ -n "$out" ] && ! grep -qvxE 'idle|mix|alloc|comp' <<<"$out"
}

wait_for_nodes() {
  local deadline=$(( $(now_ms) + timeout * 1000 )) resumed=0
  until nodes_ready; do
    # A node left down or drained by an earlier run (e.g. "Node unexpectedly rebooted")
    # is put back into service once, if this run started its daemons.
    local bad
    bad=$(sinfo -h -N -t down,drain,draining -o '%N' 2>/dev/null | sort -u | paste -sd, -) || bad=""
    if [ "$resumed" = 0 ] && [ "$started" = 1 ] && [ -n "$bad" ]; then
      say "resuming node(s) $bad"
      scontrol update NodeName="$bad" State=RESUME 2>/dev/null || true
      resumed=1
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      sinfo -N -l >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# smoke_job: a one-task job must run to completion (skipped while other jobs exist,
# which may hold the node).
smoke_job() {
  local queued
  queued=$(squeue -h -o '%i' 2>/dev/null | wc -l)
  if [ "$queued" -gt 0 ]; then
    say "jobs in the queue: skipping the test job"
    return 0
  fi
  timeout "$timeout" srun -N1 -n1 -t 1 --mem=32M -J hubstack-smoke true
}

# ---------------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------------
summary() {
  local parts nodeinfo
  parts=$(sinfo -h -o '%P' | paste -sd, -)
  nodeinfo=$(sinfo -h -N -p debug -o '%N %t %c CPUs %m MB' | paste -sd';' -)
  local acct="accounting off (sacct will not work)"
  [ "$accounting" = on ] && acct="accounting on (slurmdbd, MariaDB 127.0.0.1:$db_port)"
  local conf="task/cgroup (cgroup/v1)"
  [ "$confine" = cgroup ] || conf="proctrack/linuxproc + OverMemoryKill"
  echo "slurm-cluster: up: cluster $cluster, $nodes node(s) [$nodeinfo], partitions $parts, $acct, confinement $conf"
}

cmd_start() {
  local want_accounting=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) [ $# -ge 2 ] || die "--nodes needs a number"; nodes=$2; shift 2 ;;
      --nodes=*) nodes=${1#--nodes=}; shift ;;
      --no-accounting) want_accounting=0; shift ;;
      *) die "start: unknown option $1 (allowed: --nodes N, --no-accounting)" ;;
    esac
  done
  [[ "$nodes" =~ ^[1-9][0-9]?$ ]] || die "--nodes must be 1..99"
  need_root start
  local t0; t0=$(now_ms)

  install_packages
  if [ "$nodes" -gt 1 ] && ! multiple_slurmd_supported; then
    die "this Slurm build lacks multiple-slurmd support: only --nodes 1 works"
  fi
  if [ "$nodes" -eq 1 ]; then
    node_names=("$host")
  else
    local i; for i in $(seq 1 "$nodes"); do node_names+=("$host-$i"); done
  fi

  prepare_dirs
  start_munge

  if [ "$want_accounting" = 1 ]; then
    if start_accounting; then
      accounting=on
    else
      say "WARNING: MariaDB/slurmdbd could not be started (logs in $log_dir); continuing WITHOUT accounting: sacct will not work"
    fi
  fi

  choose_confinement
  local conf_changed=0 cg_changed=0
  write_slurm_conf && conf_changed=1
  write_cgroup_conf && cg_changed=1

  if [ "$accounting" = on ] && ! register_accounting; then
    show_log "$log_dir/slurmdbd.log"
    say "WARNING: could not register cluster $cluster in slurmdbd; continuing WITHOUT accounting: sacct will not work"
    accounting=off
    write_slurm_conf && conf_changed=1
  fi

  # A changed slurm.conf restarts slurmctld and the slurmds (node definitions can only
  # change that way); a changed cgroup.conf restarts the slurmds. Running jobs survive.
  start_slurmctld "$conf_changed"
  local restart_slurmd=0
  if [ "$conf_changed" = 1 ] || [ "$cg_changed" = 1 ]; then restart_slurmd=1; fi
  if ! start_slurmds "$restart_slurmd"; then
    [ "$confine" = cgroup ] || die "slurmd did not start"
    say "WARNING: slurmd failed with task/cgroup; falling back to proctrack/linuxproc + jobacct_gather/linux (OverMemoryKill)"
    confine=linuxproc
    write_slurm_conf || true
    start_slurmctld 1
    start_slurmds 1 || die "slurmd did not start"
  fi

  wait_for_nodes || die "the node(s) did not come up (see $log_dir)"
  if [ "$started" = 1 ]; then
    smoke_job || { show_log "$(slurmd_logfile "${node_names[0]}")"; die "the test job did not run"; }
  fi
  summary
  say "start took $(( $(now_ms) - t0 ))ms"
}

# ---------------------------------------------------------------------------------------
# stop, status, reset
# ---------------------------------------------------------------------------------------
cmd_stop() {
  need_root stop
  stop_named slurmd
  stop_named slurmctld
  stop_named slurmdbd
  if pid_alive "$db_pidfile" mariadbd; then stop_pids MariaDB "$(cat "$db_pidfile")"; fi
  stop_named munged
  local steps; steps=$(pids_of slurmstepd | paste -sd' ' -)
  [ -z "$steps" ] || say "job steps still running (slurmstepd $steps): they go on and are picked up by the next start"
  return 0
}

cmd_status() {
  local rc=0 d pids
  for d in munged slurmdbd slurmctld slurmd slurmstepd; do
    pids=$(pids_of "$d" | paste -sd' ' -)
    printf '%-10s %s\n' "$d" "${pids:-not running}"
  done
  if pid_alive "$db_pidfile" mariadbd; then
    printf '%-10s %s\n' mariadbd "$(cat "$db_pidfile") (127.0.0.1:$db_port)"
  else
    printf '%-10s %s\n' mariadbd "not running"
  fi
  if ctld_up; then echo "slurmctld: answers"; else echo "slurmctld: does not answer"; rc=1; fi
  if sinfo >/dev/null 2>&1; then echo "sinfo: ok"; sinfo -N -l | sed 's/^/  /'; else echo "sinfo: fails"; rc=1; fi
  if squeue >/dev/null 2>&1; then echo "squeue: ok ($(squeue -h | wc -l) jobs)"; else echo "squeue: fails"; rc=1; fi
  if sacct -n -X -S now-1hour >/dev/null 2>&1; then echo "sacct: ok (accounting on)"; else echo "sacct: fails (accounting off or slurmdbd down)"; fi
  [ "$rc" -eq 0 ] && nodes_ready || rc=1
  return "$rc"
}

cmd_reset() {
  local all=0
  case "${1:-}" in
    "") ;;
    --all) all=1 ;;
    *) die "reset: unknown option $1 (allowed: --all)" ;;
  esac
  need_root reset
  cmd_stop
  stop_named slurmstepd
  say "removing controller state, slurmd spool and logs"
  rm -rf "${ctld_state:?}"/* "${slurmd_spool:?}"/*
  find "$log_dir" -maxdepth 1 -type f -name 'slurm*' -delete 2>/dev/null || true
  # Empty cgroups that slurmd left behind (slurm_<node>/uid_*/job_*/step_*).
  find /sys/fs/cgroup/*/ -maxdepth 1 -type d -name 'slurm*' 2>/dev/null | while read -r d; do
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  if [ "$all" = 1 ]; then
    say "removing the accounting database $db_dir"
    rm -rf "${db_dir:?}"
    rm -f "$log_dir/mariadb.log" "$log_dir/mariadb-install.log"
  fi
}

# ---------------------------------------------------------------------------------------
# add-user
# ---------------------------------------------------------------------------------------
cmd_add_user() {
  [ $# -ge 1 ] || die "usage: add-user USER [ACCOUNT...]"
  local user=$1; shift
  local accts=("$@")
  [ ${#accts[@]} -gt 0 ] || accts=(research)
  sacctmgr -n show cluster >/dev/null 2>&1 || die "accounting is not running (start the cluster first)"
  local a have
  for a in "${accts[@]}"; do
    have=$(sacctmgr -nP show assoc where cluster="$cluster" user="$user" account="$a" format=user) ||
      die "sacctmgr failed"
    if grep -qx "$user" <<<"$have"; then continue; fi
    say "adding user $user to account $a"
    sacctmgr -i add user "$user" account="$a" >/dev/null || die "could not add $user to $a"
  done
}

# ---------------------------------------------------------------------------------------
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# lock: one install/start/stop/reset at a time (e.g. parallel test workers all calling
# `start`). Every daemon is launched with fd 9 closed so that none of them holds the lock.
lock() {
  need_root "$1"
  exec 9>/run/slurm-cluster.lock
  flock -w 600 9 || die "another slurm-cluster.sh is still running"
}

case "${1:-}" in
  install) lock install; shift; cmd_install "$@" ;;
  start) lock start; shift; cmd_start "$@" ;;
  stop) lock stop; shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  reset) lock reset; shift; cmd_reset "$@" ;;
  add-user) shift; cmd_add_user "$@" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
