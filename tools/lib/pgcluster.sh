# shellcheck shell=bash
# Throwaway PostgreSQL 15 clusters for the demo and benchmarks. Source this file:
#
#   source tools/lib/pgcluster.sh
#   pgcluster_start /tmp/legacy [extra postgresql.conf lines...]   # prints the port
#   psql "$(pgcluster_dsn /tmp/legacy postgres)"
#   pgcluster_stop /tmp/legacy
#
# Same settings as the C++ fixture (tests/testing/pg_cluster.h): initdb with superuser
# "walshift", trust auth, UTF8/locale C; listen_addresses='127.0.0.1' on a free port, unix socket
# in DIR, wal_level=logical, max_replication_slots=20, max_wal_senders=20, shared_buffers=128MB,
# max_connections=100, timezone UTC, fsync/synchronous_commit left on. Layout: DIR/data,
# DIR/postgresql.log, DIR/port. When run as root, initdb and the server run as
# $PGCLUSTER_USER, else "postgres" if it exists, else "nobody"; DIR and its parents must be
# accessible to that user. PostgreSQL binaries: $PGCLUSTER_BINDIR, else
# /usr/lib/postgresql/15/bin. The functions return non-zero (with a message on stderr) on
# failure and never exit the calling shell.

# The OS user that runs the server (empty: the current user, no switch).
_pgcluster_user() {
  if [[ "$(id -u)" -ne 0 ]]; then
    return 0
  fi
  if [[ -n "${PGCLUSTER_USER:-}" ]]; then
    echo "$PGCLUSTER_USER"
  elif id -u postgres >/dev/null 2>&1; then
    echo postgres
  else
    echo nobody
  fi
}

_pgcluster_bindir() {
  if [[ -n "${PGCLUSTER_BINDIR:-}" ]]; then
    echo "$PGCLUSTER_BINDIR"
  elif [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then
    echo /usr/lib/postgresql/15/bin
  elif command -v pg_config >/dev/null 2>&1 && pg_config --version | grep -q '^PostgreSQL 15'; then
    pg_config --bindir
  else
    echo "pgcluster: PostgreSQL 15 binaries not found (run tools/setup or set PGCLUSTER_BINDIR)" >&2
    return 1
  fi
}

# Runs a command as the server user, with a clean PG* environment and the C locale.
_pgcluster_run() {
  local user
  user="$(_pgcluster_user)"
  local -a envs=(env -u PGDATA -u PGHOST -u PGHOSTADDR -u PGPORT -u PGUSER -u PGDATABASE
                 -u PGOPTIONS -u PGSERVICE -u PGTZ LANG=C LC_ALL=C)
  if [[ -n "$user" ]]; then
    runuser -u "$user" -- "${envs[@]}" "$@"
  else
    "${envs[@]}" "$@"
  fi
}

# True when TCP port $1 is in LISTEN state on any local address (from /proc/net/tcp{,6}).
_pgcluster_port_in_use() {
  local hex
  hex="$(printf '%04X' "$1")"
  awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 }
                    END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# A port that is free now, from the range above the usual ephemeral ports' neighbours.
_pgcluster_pick_port() {
  local port
  for _ in $(seq 1 100); do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 30000 ))
    if ! _pgcluster_port_in_use "$port"; then
      echo "$port"
      return 0
    fi
  done
  echo "pgcluster: no free port found" >&2
  return 1
}

# pgcluster_start DIR [CONF_LINE...]
# Creates the cluster in DIR on first use (later calls restart the existing one), starts it and
# prints its port; also exports PGCLUSTER_PORT. Extra arguments are postgresql.conf lines,
# appended after the standard settings (only when the cluster is created).
pgcluster_start() {
  local dir="${1:?usage: pgcluster_start DIR [conf lines...]}"
  shift
  local bindir user attempt port
  bindir="$(_pgcluster_bindir)" || return 1
  user="$(_pgcluster_user)"
  mkdir -p "$dir" || return 1
  dir="$(cd "$dir" && pwd)" || return 1
  if [[ -n "$user" ]]; then
    chown "$user:" "$dir" || return 1
  fi
  chmod 0755 "$dir" || return 1

  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    rm -rf "$dir/data"
    if ! _pgcluster_run "$bindir/initdb" -D "$dir/data" -U walshift --auth=trust \
         --encoding=UTF8 --locale=C --no-sync --no-instructions >"$dir/initdb.log" 2>&1; then
      cat "$dir/initdb.log" >&2
      echo "pgcluster: initdb in $dir/data failed (running as ${user:-$(id -un)};" \
           "DIR and its parents must be accessible to that user)" >&2
      return 1
    fi
    {
      echo
      echo "# walshift cluster (tools/lib/pgcluster.sh)"
      echo "listen_addresses = '127.0.0.1'"
      echo "include_if_exists = 'walshift_port.conf'"
      echo "unix_socket_directories = '$dir'"
      echo "wal_level = logical"
      echo "max_replication_slots = 20"
      echo "max_wal_senders = 20"
      echo "shared_buffers = 128MB"
      echo "max_connections = 100"
      echo "timezone = 'UTC'"
      echo "log_timezone = 'UTC'"
      echo "log_line_prefix = '%m [%p] %q%u@%d '"
      local line
      for line in "$@"; do echo "$line"; done
    } >>"$dir/data/postgresql.conf"
  fi

  if _pgcluster_run "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    PGCLUSTER_PORT="$(cat "$dir/port")"
    export PGCLUSTER_PORT
    echo "$PGCLUSTER_PORT"
    return 0
  fi

  # Keep the port of an existing cluster (its DSN is in configs); pick a new one otherwise, and
  # again when someone else took it between the check and the server's bind.
  port="$(cat "$dir/port" 2>/dev/null || true)"
  for attempt in 1 2 3 4 5 6 7 8; do
    if [[ -z "$port" ]] || { [[ $attempt -gt 1 ]] && _pgcluster_port_in_use "$port"; }; then
      port="$(_pgcluster_pick_port)" || return 1
    fi
    echo "port = $port" >"$dir/data/walshift_port.conf"
    if [[ -n "$user" ]]; then chown "$user:" "$dir/data/walshift_port.conf"; fi
    echo "$port" >"$dir/port"
    if _pgcluster_run "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgresql.log" -w -t 60 \
         start >"$dir/pg_ctl.log" 2>&1; then
      PGCLUSTER_PORT="$port"
      export PGCLUSTER_PORT
      echo "$port"
      return 0
    fi
    if ! grep -qE 'could not bind|Address already in use|could not create any TCP/IP sockets' \
         "$dir/postgresql.log" 2>/dev/null; then
      break
    fi
    port=""
  done
  cat "$dir/pg_ctl.log" >&2
  tail -n 30 "$dir/postgresql.log" >&2 2>/dev/null
  echo "pgcluster: could not start the cluster in $dir" >&2
  return 1
}

# pgcluster_stop DIR [smart|fast|immediate]
# Stops the cluster (default: fast) and waits. Succeeds when it is not running.
pgcluster_stop() {
  local dir="${1:?usage: pgcluster_stop DIR [mode]}"
  local mode="${2:-fast}"
  local bindir
  bindir="$(_pgcluster_bindir)" || return 1
  [[ -f "$dir/data/postmaster.pid" ]] || return 0
  _pgcluster_run "$bindir/pg_ctl" -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null
}

# pgcluster_dsn DIR DB
# Prints the libpq connection string for database DB of the cluster in DIR.
pgcluster_dsn() {
  local dir="${1:?usage: pgcluster_dsn DIR DB}"
  local db="${2:-postgres}"
  local port
  port="$(cat "$dir/port" 2>/dev/null)" || {
    echo "pgcluster: no cluster in $dir (pgcluster_start it first)" >&2
    return 1
  }
  echo "host=127.0.0.1 port=$port dbname=$db user=walshift"
}
