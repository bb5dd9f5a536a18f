#!/bin/sh
# The part of the official postgres image's entrypoint that ctx relies on: on first start initdb with
# POSTGRES_USER/POSTGRES_PASSWORD (scram-sha-256 for host connections), create POSTGRES_DB, then run as `postgres`.
set -eu

if [ "${1:-}" != "postgres" ]; then
  exec "$@"
fi

PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  if [ "$db" != "postgres" ]; then
    pg_ctl -D "$PGDATA" -w -s -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" start
    psql -v ON_ERROR_STOP=1 -q -h /var/run/postgresql -U "$user" -d postgres -v db="$db" <<'SQL'
CREATE DATABASE :"db";
SQL
    pg_ctl -D "$PGDATA" -w -s -m fast stop
  fi
  echo "docker-entrypoint: initialised $PGDATA"
fi
exec "$@" -c unix_socket_directories=/var/run/postgresql
