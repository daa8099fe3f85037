#!/usr/bin/env bash
# Installs (Debian's postgresql) and starts a PostgreSQL server on 127.0.0.1 for the tests,
# then writes scripts/postgres-env.sh with ALERTER_TEST_POSTGRES_URL. Safe to run twice.
set -uo pipefail
cd "$(dirname "$0")"
port=${ALERTER_PG_PORT:-5432}
env_file=postgres-env.sh
rm -f "$env_file"

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "postgres: installing Debian's postgresql package"
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 \
    || { echo "postgres: cannot install postgresql; PostgreSQL tests will be skipped"; exit 0; }
fi

if command -v pg_lsclusters >/dev/null 2>&1; then
  cluster=$(pg_lsclusters -h | awk 'NR==1 {print $1" "$2}')
  if [ -z "$cluster" ]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
    sudo_ pg_createcluster "$ver" main -p "$port" >/dev/null || true
    cluster="$ver main"
  fi
  set -- $cluster
  sudo_ pg_ctlcluster "$1" "$2" start 2>/dev/null || true
  port=$(pg_lsclusters -h | awk -v v="$1" -v n="$2" '$1==v && $2==n {print $3}')
fi

for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 1
done
if ! pg_isready -q -h 127.0.0.1 -p "$port"; then
  echo "postgres: server did not start; PostgreSQL tests will be skipped"
  exit 0
fi

run_psql() { sudo_ -u postgres psql -q -p "$port" -v ON_ERROR_STOP=1 "$@"; }
if command -v runuser >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  run_psql() { runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1 "$@"; }
fi
run_psql -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='alerter') THEN CREATE ROLE alerter LOGIN SUPERUSER PASSWORD 'alerter'; END IF; END \$\$;" \
  || { echo "postgres: cannot create role; PostgreSQL tests will be skipped"; exit 0; }
run_psql -tc "SELECT 1 FROM pg_database WHERE datname='alerter_test'" | grep -q 1 \
  || run_psql -c "CREATE DATABASE alerter_test OWNER alerter"
echo "export ALERTER_TEST_POSTGRES_URL=postgresql://alerter:alerter@127.0.0.1:$port/alerter_test" > "$env_file"
echo "postgres: ready on 127.0.0.1:$port"
