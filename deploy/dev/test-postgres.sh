#!/usr/bin/env bash
# Prints a PostgreSQL URL for the test suite.  Uses TRIAGE_TEST_POSTGRES_URL, else the local
# server at 127.0.0.1:5432 (database "test", user postgres, no password), else starts a private
# throw-away cluster on 127.0.0.1:55432 (installing Debian's postgresql package if missing).
set -euo pipefail
if [ -n "${TRIAGE_TEST_POSTGRES_URL:-}" ]; then
  echo "$TRIAGE_TEST_POSTGRES_URL"; exit 0
fi
if command -v psql >/dev/null 2>&1 \
   && psql "postgresql://postgres@127.0.0.1:5432/test" -tAc 'select 1' >/dev/null 2>&1; then
  echo "postgresql+psycopg://postgres@127.0.0.1:5432/test"; exit 0
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "Installing postgresql for the test suite" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PORT=55432
DIR="/tmp/triage-test-postgres-$(id -u)"
if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  RUN=()
  mkdir -p "$DIR"
  if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
    chown postgres "$DIR"; RUN=(runuser -u postgres --)
  fi
  [ -f "$DIR/PG_VERSION" ] || "${RUN[@]}" "$BIN/initdb" -D "$DIR" -A trust -U postgres >&2
  "${RUN[@]}" "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w \
    -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >&2
  "${RUN[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres test >&2 2>/dev/null || true
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/test"
