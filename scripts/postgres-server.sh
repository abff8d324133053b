#!/usr/bin/env bash
# A real PostgreSQL server on this machine, for the lab tracking-server tests
# (tests/test_lab_server.py) and for trying `mlflow server` on PostgreSQL by hand: Debian's
# postgresql package, one cluster owned by the user postgres, listening on 127.0.0.1 only,
# with a role and database `mlflow` (password `mlflow`).
#
#   scripts/postgres-server.sh start    # install if missing, initdb, start, create the db
#   scripts/postgres-server.sh status   # exit 0 only if it accepts connections
#   scripts/postgres-server.sh uri      # print postgresql://mlflow:mlflow@127.0.0.1:PORT/mlflow
#   scripts/postgres-server.sh stop     # pg_ctl stop -m fast
#
# All state (data folder, socket, log) lives under $POSTGRES_LAB_DIR (default
# /tmp/lt-bench-postgres); the port is $POSTGRES_LAB_PORT (default 55432). Installing follows
# scripts/slurm-cluster.sh: `apt-get install` without `apt-get update` first (slow, the lists
# are usually fresh), then with it. Must run as root (apt-get; the server runs as postgres).
set -euo pipefail

LAB="$(realpath -m "${POSTGRES_LAB_DIR:-/tmp/lt-bench-postgres}")"
PORT="${POSTGRES_LAB_PORT:-55432}"
DATA="$LAB/data"
SOCK="$LAB/run"
LOGF="$LAB/postgres.log"
URI="postgresql://mlflow:mlflow@127.0.0.1:$PORT/mlflow"

log() { printf '[postgres-server] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    [[ -s "$LOGF" ]] && { printf '\n----- tail -n 30 %s -----\n' "$LOGF" >&2; tail -n 30 "$LOGF" >&2; }
    exit 1
}

bindir() {
    # the newest installed major version (Debian: /usr/lib/postgresql/<major>/bin)
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [[ -n "$d" && -x "$d/pg_ctl" ]] && printf '%s' "$d"
}

install_packages() {
    [[ -n "$(bindir)" ]] && return 0
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and there is no apt-get"
    mkdir -p "$LAB"
    log "installing postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends postgresql >"$LAB/apt.log" 2>&1; then
        apt-get update >>"$LAB/apt.log" 2>&1 || true
        apt-get install -y --no-install-recommends postgresql >>"$LAB/apt.log" 2>&1 \
            || { tail -n 20 "$LAB/apt.log" >&2; die "apt-get install failed (log: $LAB/apt.log)"; }
    fi
    [[ -n "$(bindir)" ]] || die "postgresql installed but no /usr/lib/postgresql/*/bin/pg_ctl"
}

as_pg() { runuser -u postgres -- "$@"; }

ready() {
    local bin
    bin="$(bindir)" || return 1
    [[ -n "$bin" ]] || return 1
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT" >/dev/null 2>&1
}

start() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (apt-get; the server runs as user postgres)"
    install_packages
    local bin
    bin="$(bindir)"
    if ready; then
        log "already accepting connections on 127.0.0.1:$PORT"
    else
        mkdir -p "$LAB" "$SOCK"
        chown postgres: "$LAB" "$SOCK"
        if [[ ! -s "$DATA/PG_VERSION" ]]; then
            log "initdb $DATA"
            as_pg "$bin/initdb" -D "$DATA" -U postgres --auth-local=trust \
                --auth-host=scram-sha-256 -E UTF8 >"$LAB/initdb.log" 2>&1 \
                || { cat "$LAB/initdb.log" >&2; die "initdb failed"; }
        fi
        log "starting on 127.0.0.1:$PORT"
        as_pg "$bin/pg_ctl" -D "$DATA" -l "$LOGF" -w -t 60 \
            -o "-p $PORT -k $SOCK -c listen_addresses=127.0.0.1 -c max_connections=100" start \
            >/dev/null || die "pg_ctl start failed"
    fi
    # the role and database mlflow (idempotent), over the local socket as postgres
    as_pg "$bin/psql" -h "$SOCK" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA -c \
        "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='mlflow') THEN
           CREATE ROLE mlflow LOGIN PASSWORD 'mlflow'; END IF; END\$\$;" >/dev/null \
        || die "could not create the role mlflow"
    if [[ "$(as_pg "$bin/psql" -h "$SOCK" -p "$PORT" -U postgres -qtA -c \
            "SELECT 1 FROM pg_database WHERE datname='mlflow'")" != 1 ]]; then
        as_pg "$bin/createdb" -h "$SOCK" -p "$PORT" -U postgres -O mlflow mlflow \
            || die "could not create the database mlflow"
    fi
    ready || die "not accepting connections on 127.0.0.1:$PORT"
    log "ready: $URI"
}

stop() {
    local bin
    bin="$(bindir)" || true
    if [[ -n "${bin:-}" && -s "$DATA/postmaster.pid" ]]; then
        as_pg "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || die "pg_ctl stop failed"
        log "stopped"
    else
        log "not running"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) ready ;;
    uri) printf '%s\n' "$URI" ;;
    *) echo "usage: $0 start|status|uri|stop" >&2; exit 2 ;;
esac
