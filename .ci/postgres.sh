# shellcheck shell=bash
# Sourced by .ci/run: a throwaway PostgreSQL cluster on a free loopback port for
# tests/pgstore.rs, from Debian's postgresql package (installed if missing), run
# from a temporary directory and stopped when .ci/run exits. Exports
# SERVICE_MGR_TEST_PG (a role that may create databases; each test makes its own).
# Never touches a system cluster. Not fatal here: without it the PostgreSQL tests
# fail under CI with the reason, and skip loudly elsewhere.

pg_bindir() {
  find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1
}

start_test_postgres() {
  local bindir dir port started="" as=()
  bindir=$(pg_bindir)
  if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir=$(pg_bindir)
  fi
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo ".ci/postgres.sh: no PostgreSQL server (apt-get install postgresql); the PostgreSQL tests cannot run" >&2
    return 1
  fi
  dir=$(mktemp -d /tmp/service-mgr-pg.XXXXXX)
  # initdb and postgres refuse to run as root: the package's postgres user does.
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
    as=(runuser -u postgres --)
  fi
  if ! "${as[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
    echo ".ci/postgres.sh: initdb failed:" >&2; cat "$dir/initdb.log" >&2
    return 1
  fi
  for port in $(shuf -i 20000-60999 -n 20); do
    if "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" \
        start >/dev/null; then
      started=$port
      break
    fi
  done
  if [ -z "$started" ]; then
    echo ".ci/postgres.sh: the throwaway cluster did not start:" >&2; tail -n 20 "$dir/server.log" >&2
    return 1
  fi
  TEST_PG_STOP=("${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop)
  TEST_PG_DIR=$dir
  trap 'stop_test_postgres' EXIT
  "$bindir/psql" -q -h 127.0.0.1 -p "$started" -U postgres -d postgres \
    -c "CREATE ROLE service_mgr_test LOGIN CREATEDB" >/dev/null
  SERVICE_MGR_TEST_PG="postgres://service_mgr_test@127.0.0.1:$started/postgres"
  export SERVICE_MGR_TEST_PG
  echo ".ci/postgres.sh: PostgreSQL $("$bindir/postgres" -V | awk '{print $3}') on 127.0.0.1:$started for the tests"
}

stop_test_postgres() {
  if [ -n "${TEST_PG_STOP+x}" ]; then
    "${TEST_PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$TEST_PG_DIR"
  fi
}
