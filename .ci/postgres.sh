#!/usr/bin/env bash
# Start a throwaway PostgreSQL on loopback for the event-store tests, and print its URL.
#
#   eval "$(bash .ci/postgres.sh)"       # exports MGREC_TEST_POSTGRES and MGREC_TEST_POSTGRES_STOP
#   python -m pytest -q tests/test_store.py
#   eval "$MGREC_TEST_POSTGRES_STOP"     # stops the server and deletes its data folder
#
# stdout carries only the two `export` lines; every log line goes to stderr.
# - Uses the newest /usr/lib/postgresql/*/bin (or $PG_BIN); installs the Debian package
#   `postgresql` with apt-get only when no server binaries are found.
# - PostgreSQL refuses to run as root: as root the server runs as the OS user `postgres`
#   (created when missing); as any other user it runs as that user.
# - Data folder: a new ${TMPDIR:-/tmp}/mgrec-pg-XXXXXX; listens on 127.0.0.1 only, port
#   $MGREC_PG_PORT (default 54329) or the next free one; trust auth; database mgrec_test.
#   fsync is off: the data is thrown away, and the store's own durability does not depend on it.
# - Idempotent-ish: when MGREC_TEST_POSTGRES is already set and answers, it is printed again
#   and nothing new is started.
set -euo pipefail
cd /  # the server runs as another user, who may not be allowed into the caller's folder

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

print_exports() {  # URL STOP-COMMAND
    printf 'export MGREC_TEST_POSTGRES=%q\n' "$1"
    printf 'export MGREC_TEST_POSTGRES_STOP=%q\n' "$2"
}

find_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        [[ -x "$PG_BIN/pg_ctl" ]] && echo "$PG_BIN"
        return 0
    fi
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
            echo "$d"
            return 0
        fi
    done
}

# --- already running? -------------------------------------------------------------------
if [[ -n "${MGREC_TEST_POSTGRES:-}" ]] && command -v pg_isready >/dev/null 2>&1 \
    && pg_isready -q -d "$MGREC_TEST_POSTGRES" -t 2 >/dev/null 2>&1; then
    log "reusing the running server $MGREC_TEST_POSTGRES"
    print_exports "$MGREC_TEST_POSTGRES" "${MGREC_TEST_POSTGRES_STOP:-true}"
    exit 0
fi

# --- server binaries --------------------------------------------------------------------
BIN="$(find_bin)"
if [[ -z "$BIN" ]]; then
    command -v apt-get >/dev/null 2>&1 || die "no PostgreSQL server binaries and no apt-get; set PG_BIN"
    [[ "$(id -u)" == 0 ]] || die "no PostgreSQL server binaries; run as root to apt-get install postgresql, or set PG_BIN"
    log "installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    BIN="$(find_bin)"
    [[ -n "$BIN" ]] || die "apt-get installed postgresql but no server binaries under /usr/lib/postgresql/*/bin"
fi
log "using $BIN ($("$BIN/postgres" --version))"

# --- who runs it ------------------------------------------------------------------------
if [[ "$(id -u)" == 0 ]]; then
    PG_USER="${MGREC_PG_OS_USER:-postgres}"
    if ! id "$PG_USER" >/dev/null 2>&1; then
        log "creating OS user $PG_USER"
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER" >&2
    fi
    if command -v runuser >/dev/null 2>&1; then
        as_pg() { runuser -u "$PG_USER" -- "$@"; }
        as_pg_text() { echo "runuser -u $(printf '%q' "$PG_USER") -- $1"; }
    else
        as_pg() { su -s /bin/sh "$PG_USER" -c "$(printf '%q ' "$@")"; }
        as_pg_text() { echo "su -s /bin/sh $(printf '%q' "$PG_USER") -c $(printf '%q' "$1")"; }
    fi
else
    PG_USER="$(id -un)"
    as_pg() { "$@"; }
    as_pg_text() { echo "$1"; }
fi

# --- data folder ------------------------------------------------------------------------
BASE="${TMPDIR:-/tmp}"
DATA="$(mktemp -d "$BASE/mgrec-pg-XXXXXX")"
if [[ "$(id -u)" == 0 ]]; then
    chown "$PG_USER" "$DATA"
    if ! as_pg test -w "$DATA"; then  # e.g. TMPDIR under /root: postgres cannot reach it
        rmdir "$DATA"
        DATA="$(mktemp -d /tmp/mgrec-pg-XXXXXX)"
        chown "$PG_USER" "$DATA"
    fi
fi
chmod 700 "$DATA"
log "initdb in $DATA"
as_pg "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null 2>"$DATA.initdb.log" \
    || { cat "$DATA.initdb.log" >&2; die "initdb failed"; }
rm -f "$DATA.initdb.log"
as_pg tee "$DATA/pg_hba.conf" >/dev/null <<'EOF'
local all all trust
host  all all 127.0.0.1/32 trust
EOF
as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DATA'
fsync = off
full_page_writes = off
max_connections = 50
EOF

# --- start on a free port ---------------------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT="${MGREC_PG_PORT:-54329}"
started=""
for _ in $(seq 1 20); do
    if port_busy "$PORT"; then
        log "port $PORT is busy"
        PORT=$((PORT + 1))
        continue
    fi
    if as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -o "-p $PORT" -w -t 30 start >&2; then
        started=1
        break
    fi
    log "could not start on port $PORT (see $DATA/server.log); trying the next one"
    tail -n 5 "$DATA/server.log" >&2 || true
    PORT=$((PORT + 1))
done
[[ -n "$started" ]] || die "could not start PostgreSQL (log: $DATA/server.log)"

STOP="(cd / && $(as_pg_text "$(printf '%q ' "$BIN/pg_ctl" -D "$DATA" -m immediate -w stop)") >/dev/null 2>&1); rm -rf $(printf '%q' "$DATA")"
"$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres mgrec_test >&2 \
    || { eval "$STOP"; die "createdb mgrec_test failed"; }
URL="postgresql://postgres@127.0.0.1:$PORT/mgrec_test"
log "PostgreSQL ready at $URL (data $DATA)"
print_exports "$URL" "$STOP"
