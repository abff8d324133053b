#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and development of the
# SLURM profile (docs/architecture.md §7). Debian's SLURM 22.05 + munge, no systemd, node on
# 127.0.0.1, four fake GPUs.
#
#   scripts/slurm-cluster.sh start    # install if missing, start, wait, smoke test
#   scripts/slurm-cluster.sh status   # daemons, sinfo, squeue; exit 0 only if usable
#   scripts/slurm-cluster.sh stop     # cancel jobs, stop daemons by their pid files
#
# All state (slurm.conf, gres.conf, spool, logs, pid files, fake GPU devices) lives
# under $SLURM_LAB_DIR (default /tmp/lt-bench-slurm). Client commands (sbatch, squeue,
# srun, sinfo) read /etc/slurm/slurm.conf by default, so `start` points that path at
# the lab config with a symlink; that is the only file written outside the lab dir
# (besides munge's socket under /run/munge). If /etc/slurm/slurm.conf is someone
# else's file it is left alone and clients need `export SLURM_CONF=$LAB/etc/slurm.conf`.
#
# Must run as root (apt-get, mknod, starting munged as user munge, /etc/slurm).
set -euo pipefail

LAB="$(realpath -m "${SLURM_LAB_DIR:-/tmp/lt-bench-slurm}")"
CONF_DIR="$LAB/etc"
CONF="$CONF_DIR/slurm.conf"
GRES_CONF="$CONF_DIR/gres.conf"
RUN_DIR="$LAB/run"
LOG_DIR="$LAB/log"
CTLD_SPOOL="$LAB/spool/slurmctld"
SLURMD_SPOOL="$LAB/spool/slurmd"
DEV_DIR="$LAB/dev"
MUNGE_DIR="$LAB/munge"             # munged's pid and log file (owned by user munge)
MARKER="$LAB/.lt-bench-slurm-lab"  # tells us a symlink target is one of our lab dirs
SYSTEM_CONF=/etc/slurm/slurm.conf
MUNGE_SOCKET_DIR=/run/munge         # munge's default socket dir: clients find it without config

NGPUS="${SLURM_LAB_GPUS:-4}"
START_TIMEOUT="${SLURM_LAB_START_TIMEOUT:-60}"
CTLD_PORT="${SLURM_LAB_CTLD_PORT:-6817}"
SLURMD_PORT="${SLURM_LAB_SLURMD_PORT:-6818}"
NODE="$(hostname -s)"

# Our own client calls always use the lab config, whatever /etc/slurm holds.
export SLURM_CONF="$CONF"

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }

show_logs() {
    local f
    for f in "$MUNGE_DIR/munged.log" "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
        if [[ -s "$f" ]]; then
            printf '\n----- tail -n 30 %s -----\n' "$f" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
}

die() {
    log "ERROR: $*"
    show_logs
    exit 1
}

# pid_alive PIDFILE NAME: the pid file names a live process whose comm is NAME
# (guards against a stale pid file whose pid was reused by something else).
pid_alive() {
    local pidfile=$1 name=$2 pid
    [[ -r "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 1
    [[ "$(cat "/proc/$pid/comm")" == "$name" ]]
}

# wait_for SECONDS COMMAND...: poll every 0.5 s until COMMAND succeeds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

require_root() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (apt-get, mknod, munged as user munge, /etc/slurm)"
}

install_packages() {
    local missing=0 cmd
    for cmd in slurmctld slurmd sbatch munged; do
        command -v "$cmd" >/dev/null 2>&1 || missing=1
    done
    ((missing)) || return 0
    log "installing slurmctld slurmd slurm-client munge (apt-get)"
    local pkgs=(slurmctld slurmd slurm-client munge)
    export DEBIAN_FRONTEND=noninteractive
    # Try without `apt-get update` first: it is slow and the lists are usually fresh.
    if ! apt-get install -y --no-install-recommends "${pkgs[@]}" >"$LOG_DIR/apt.log" 2>&1; then
        apt-get update >>"$LOG_DIR/apt.log" 2>&1 || true
        apt-get install -y --no-install-recommends "${pkgs[@]}" >>"$LOG_DIR/apt.log" 2>&1 \
            || { tail -n 20 "$LOG_DIR/apt.log" >&2; die "apt-get install failed (log: $LOG_DIR/apt.log)"; }
    fi
}

make_dirs() {
    mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL" "$DEV_DIR" "$MUNGE_DIR"
    touch "$MARKER"
    # munged refuses to run unless its own files are owned by it and not group/world
    # writable; /run/munge is where clients look for the socket.
    chown munge:munge "$MUNGE_DIR"
    chmod 0700 "$MUNGE_DIR"
    mkdir -p "$MUNGE_SOCKET_DIR"
    chown munge:munge "$MUNGE_SOCKET_DIR"
    chmod 0755 "$MUNGE_SOCKET_DIR"
}

# Character devices for gres.conf's File= (slurmd requires real device files; it only
# uses their index for CUDA_VISIBLE_DEVICES). 1,3 is the same device as /dev/null.
make_fake_gpus() {
    local i f
    for ((i = 0; i < NGPUS; i++)); do
        f="$DEV_DIR/fakegpu$i"
        if [[ ! -c "$f" ]]; then
            rm -f "$f"
            mknod -m 0666 "$f" c 1 3 || die "mknod $f failed (needs CAP_MKNOD)"
        fi
    done
}

# Node line: CPUs = nproc. Take sockets/cores/threads from `slurmd -C` when it agrees
# with nproc (otherwise slurmd logs a topology mismatch); RealMemory a bit below the
# real total, or slurmd drains the node with "Low RealMemory".
node_hardware() {
    local cpus mem_total real_mem hw topo=""
    cpus="$(nproc)"
    mem_total="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
    real_mem=$((mem_total * 95 / 100))
    hw="$(slurmd -C 2>/dev/null | head -n 1 || true)"
    if [[ "$hw" =~ CPUs=([0-9]+)\ Boards=[0-9]+\ SocketsPerBoard=([0-9]+)\ CoresPerSocket=([0-9]+)\ ThreadsPerCore=([0-9]+) ]] \
        && [[ "${BASH_REMATCH[1]}" == "$cpus" ]]; then
        topo=" Sockets=${BASH_REMATCH[2]} CoresPerSocket=${BASH_REMATCH[3]} ThreadsPerCore=${BASH_REMATCH[4]}"
    fi
    printf 'CPUs=%s%s RealMemory=%s' "$cpus" "$topo" "$real_mem"
}

# Writes slurm.conf and gres.conf (gres.conf sits next to slurm.conf: that is where the
# daemons look for it). Prints "changed" if either differs from the current one.
write_config() {
    local tmp hw changed=""
    tmp="$(mktemp -d)"
    hw="$(node_hardware)"
    cat >"$tmp/slurm.conf" <<EOF
# Generated by scripts/slurm-cluster.sh -- edits are overwritten on the next start.
ClusterName=ltbench
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# Everything runs as root in the sandbox; no slurm user needed.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
# cgroups are not available in the sandbox: track processes via /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# No slurmdbd: no accounting, no job accounting gathering.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# No mail on this box; the default (/usr/bin/mail) is missing and logs an error.
MailProg=/bin/true
SchedulerType=sched/backfill
# Start batch jobs as soon as they are submitted; the default batch_sched_delay=3 holds
# every job back up to 3 s, which dominates the round trip of short jobs here.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
# Cores and memory are consumable; jobs without --mem get DefMemPerCPU per CPU
# instead of the whole node's memory.
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
# Finished jobs stay visible to squeue for MinJobAge seconds. The Snakemake plugin polls
# with squeue (no accounting, so sacct knows nothing) and silently falls back to sacct
# if MinJobAge < 3 x --slurm-init-seconds-before-status-checks (default 40 s): keep it
# well above 120 s.
MinJobAge=300
# A node that was down (e.g. slurmd restarted) comes back as soon as it registers.
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE $hw Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    {
        echo "# Generated by scripts/slurm-cluster.sh: fake GPUs (character devices 1,3)."
        local i
        for ((i = 0; i < NGPUS; i++)); do
            echo "NodeName=$NODE Name=gpu File=$DEV_DIR/fakegpu$i"
        done
    } >"$tmp/gres.conf"
    if ! cmp -s "$tmp/slurm.conf" "$CONF"; then
        install -m 0644 "$tmp/slurm.conf" "$CONF"
        changed=changed
    fi
    if ! cmp -s "$tmp/gres.conf" "$GRES_CONF"; then
        install -m 0644 "$tmp/gres.conf" "$GRES_CONF"
        changed=changed
    fi
    rm -rf "$tmp"
    echo "$changed"
}

# Point the clients' default config path at ours, unless it belongs to someone else.
link_system_conf() {
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    if [[ -L "$SYSTEM_CONF" ]]; then
        local target
        target="$(readlink "$SYSTEM_CONF")"
        if [[ "$target" != "$CONF" && ! -e "$(dirname "$(dirname "$target")")/.lt-bench-slurm-lab" ]]; then
            log "WARNING: $SYSTEM_CONF is a foreign symlink ($target); left alone."
            log "         clients need: export SLURM_CONF=$CONF"
            return 0
        fi
    elif [[ -e "$SYSTEM_CONF" ]]; then
        log "WARNING: $SYSTEM_CONF exists and is not ours; left alone."
        log "         clients need: export SLURM_CONF=$CONF"
        return 0
    fi
    ln -sfn "$CONF" "$SYSTEM_CONF"
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if pid_alive "$MUNGE_DIR/munged.pid" munged; then
        return 0
    fi
    # A munged started by someone else (same key, default socket) serves us just as well.
    if munge_works; then
        log "munged: already running outside the lab dir; using it"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    # --force: a stale socket left by a killed munged would otherwise stop it.
    runuser -u munge -- /usr/sbin/munged --force \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
        || die "munged failed to start"
    wait_for 15 munge_works || die "munged started but munge -n | unmunge fails"
    log "munged: started (pid $(cat "$MUNGE_DIR/munged.pid"))"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_slurmctld() {
    if pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then
        return 0
    fi
    # Another cluster on the same port would answer our pings and run our smoke test.
    port_in_use "$CTLD_PORT" \
        && die "port $CTLD_PORT is taken (another slurmctld? stop it, or set SLURM_LAB_CTLD_PORT)"
    slurmctld -f "$CONF" || die "slurmctld failed to start"
    wait_for 30 pid_alive "$RUN_DIR/slurmctld.pid" slurmctld || die "slurmctld exited right after start"
    wait_for 30 scontrol ping || die "slurmctld does not answer scontrol ping"
    log "slurmctld: started (pid $(cat "$RUN_DIR/slurmctld.pid"))"
}

start_slurmd() {
    if pid_alive "$RUN_DIR/slurmd.pid" slurmd; then
        return 0
    fi
    port_in_use "$SLURMD_PORT" \
        && die "port $SLURMD_PORT is taken (another slurmd? stop it, or set SLURM_LAB_SLURMD_PORT)"
    slurmd -f "$CONF" || die "slurmd failed to start"
    wait_for 15 pid_alive "$RUN_DIR/slurmd.pid" slurmd || die "slurmd exited right after start"
    log "slurmd: started (pid $(cat "$RUN_DIR/slurmd.pid"))"
}

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1; }

# Bounded wait until the node is schedulable. A node left drained/down by an earlier
# run (state is kept in the spool dir) is resumed once.
wait_node_idle() {
    local deadline=$((SECONDS + START_TIMEOUT)) state resumed=0
    while :; do
        state="$(node_state || true)"
        case "$state" in
            idle | mixed | allocated | completing) return 0 ;;
            *drain* | down*)
                if ((!resumed)); then
                    log "node $NODE is '$state' ($(sinfo -h -R -o '%E' 2>/dev/null | head -n 1)); resuming"
                    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi
                ;;
        esac
        ((SECONDS < deadline)) || die "node $NODE not idle after ${START_TIMEOUT}s (state: '${state:-unknown}')"
        sleep 1
    done
}

smoke_test() {
    local out jobid f
    log "smoke test: srun -N1 hostname"
    out="$(timeout 60 srun -N1 -t 1 hostname 2>&1)" || die "srun -N1 hostname failed: $out"
    log "  srun ran on: $out"

    log "smoke test: sbatch --gpus=1 --wait"
    f="$LOG_DIR/smoke-gpu.out"
    rm -f "$f"
    # shellcheck disable=SC2016  # expanded inside the job, not here
    jobid="$(timeout 60 sbatch --parsable --wait --gpus=1 -t 1 -o "$f" \
        --wrap 'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES SLURM_JOB_GPUS=${SLURM_JOB_GPUS:-}"')" \
        || die "sbatch --gpus=1 --wait failed (job ${jobid:-?}): $(cat "$f" 2>/dev/null)"
    out="$(cat "$f")"
    log "  job $jobid got: $out"
    [[ "$out" =~ CUDA_VISIBLE_DEVICES=[0-9] ]] || die "GPU job saw no CUDA_VISIBLE_DEVICES: $out"
}

cmd_start() {
    require_root
    mkdir -p "$LOG_DIR"
    install_packages
    make_dirs
    make_fake_gpus
    local changed
    changed="$(write_config)"
    if [[ -n "$changed" ]] && { pid_alive "$RUN_DIR/slurmctld.pid" slurmctld || pid_alive "$RUN_DIR/slurmd.pid" slurmd; }; then
        # Node/gres changes need a daemon restart, not just `scontrol reconfigure`.
        log "configuration changed: restarting slurmctld and slurmd"
        stop_daemon slurmd "$RUN_DIR/slurmd.pid"
        stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    fi
    start_munge
    start_slurmctld
    start_slurmd
    wait_node_idle
    smoke_test
    # Only now: a cluster that failed to come up must not take over the clients' config.
    link_system_conf
    log "cluster up: $(sinfo -h -N -n "$NODE" -o '%N %T cpus=%c mem=%m gres=%G partition=%P')"
    log "config: $CONF (clients: $SYSTEM_CONF -> $(readlink "$SYSTEM_CONF" 2>/dev/null || echo 'not linked'))"
}

# stop_daemon NAME PIDFILE: SIGTERM, wait up to 20 s, then SIGKILL.
stop_daemon() {
    local name=$1 pidfile=$2 pid
    if ! pid_alive "$pidfile" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    pid="$(tr -dc '0-9' <"$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for 20 bash -c "! kill -0 $pid"; then
        log "$name (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 5 bash -c "! kill -0 $pid" || die "could not stop $name (pid $pid)"
    fi
    rm -f "$pidfile"
    log "$name: stopped (pid $pid)"
}

cmd_stop() {
    require_root
    # Cancel what is still queued or running so no job steps are orphaned.
    if pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then
        local jobs
        jobs="$(squeue -h -o '%i' 2>/dev/null | tr '\n' ' ' || true)"
        if [[ -n "${jobs// /}" ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086  # word splitting wanted
            scancel $jobs 2>/dev/null || true
            # shellcheck disable=SC2016  # expanded by the inner bash, on each poll
            wait_for 15 bash -c '[[ -z "$(squeue -h -t PD,R,CG -o %i 2>/dev/null)" ]]' || true
        fi
    fi
    stop_daemon slurmd "$RUN_DIR/slurmd.pid"
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    # Only a munged we started (our pid file); a system munged is not ours to stop.
    stop_daemon munged "$MUNGE_DIR/munged.pid"
    # Clients should not keep pointing at a cluster that is gone.
    if [[ -L "$SYSTEM_CONF" && "$(readlink "$SYSTEM_CONF")" == "$CONF" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
}

cmd_status() {
    local ok=0 name pidfile
    for name in munged slurmctld slurmd; do
        case $name in
            munged) pidfile="$MUNGE_DIR/munged.pid" ;;
            *) pidfile="$RUN_DIR/$name.pid" ;;
        esac
        if pid_alive "$pidfile" "$name"; then
            printf '%-10s running (pid %s)\n' "$name" "$(tr -dc '0-9' <"$pidfile")"
        elif [[ $name == munged ]] && munge_works; then
            printf '%-10s running (not started by this script)\n' "$name"
        else
            printf '%-10s not running\n' "$name"
            ok=1
        fi
    done
    printf 'config     %s\n' "$CONF"
    if ((ok == 0)); then
        sinfo -N -o '%N %P %T %c %m %G' || ok=1
        squeue || ok=1
        case "$(node_state || true)" in
            idle | mixed | allocated | completing) ;;
            *) ok=1 ;;
        esac
    fi
    return $ok
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 {start|stop|status}   (state in \$SLURM_LAB_DIR, default /tmp/lt-bench-slurm)" >&2
        exit 2
        ;;
esac
