#!/usr/bin/env bash
# Runs a command beside a private, throwaway PostgreSQL cluster:
#   scripts/with-postgres.sh make check
# The cluster lives in a fresh directory under the temp dir, listens on its own free port on
# 127.0.0.1 and on a Unix socket inside that directory, trusts only local connections, and is
# stopped and removed when the command ends (whatever its outcome). The command sees
# ALERTER_TEST_POSTGRES_URL. The machine's own PostgreSQL server, clusters and roles are never
# touched; Debian's postgresql package is installed only when no server binaries are present.
# Where no cluster can start, the command still runs and the PostgreSQL tests skip, saying why.
set -uo pipefail

[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

if [ -z "$(bindir)" ] || [ ! -x "$(bindir)/initdb" ]; then
  echo "postgres: installing Debian's postgresql server binaries" >&2
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
  # The server binaries only: the package is told not to create (and start) a cluster of its own.
  conf=/etc/postgresql-common/createcluster.conf
  if [ ! -e "$conf" ]; then
    sudo_ mkdir -p "$(dirname "$conf")" && echo "create_main_cluster = false" | sudo_ tee "$conf" >/dev/null
  fi
  pkg=$(apt-cache depends postgresql 2>/dev/null | awk '/Depends: postgresql-[0-9]+$/ {print $2; exit}')
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold \
    "${pkg:-postgresql}" >/dev/null 2>&1 \
    || echo "postgres: cannot install postgresql; PostgreSQL tests will skip" >&2
fi

bin=$(bindir)
dir=""
owner=""
cleanup() {
  if [ -n "$dir" ] && [ -d "$dir" ]; then
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
  fi
}
as_owner() {
  if [ -n "$owner" ]; then runuser -u "$owner" -- "$@"; else "$@"; fi
}

start() {
  [ -n "$bin" ] && [ -x "$bin/initdb" ] || return 1
  dir=$(mktemp -d "${TMPDIR:-/tmp}/alerter-pg.XXXXXX") || return 1
  chmod 755 "$dir"
  if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root: the cluster belongs to an unprivileged system user.
    if id postgres >/dev/null 2>&1; then owner=postgres; else owner=nobody; fi
    chown "$owner" "$dir"
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_owner "$bin/initdb" -D "$dir/data" -U alerter --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null 2>&1 || { cat "$dir/server.log" >&2 2>/dev/null; return 1; }
  as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U alerter alerter_test || return 1
  export ALERTER_TEST_POSTGRES_URL="postgresql://alerter@127.0.0.1:$port/alerter_test"
  echo "postgres: private cluster on 127.0.0.1:$port (removed at exit)" >&2
}

trap cleanup EXIT
trap 'exit 130' INT TERM
if ! start; then
  echo "postgres: no private cluster could start; PostgreSQL tests will skip" >&2
  cleanup
  dir=""
fi
"$@"
