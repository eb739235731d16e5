# A throwaway PostgreSQL 15 server on 127.0.0.1: `source` this file, then pg_start / pg_stop.
# Sets PGPORT and PGDATA_DIR. Runs as the postgres user (initdb refuses root).
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

pg_start() {
  PGDATA_DIR=$(mktemp -d /tmp/ascent-pg.XXXXXX)
  chown postgres "$PGDATA_DIR"
  PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  su postgres -s /bin/sh -c "$PGBIN/initdb -D '$PGDATA_DIR/data' -A trust -U postgres --no-sync" >/dev/null
  su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D '$PGDATA_DIR/data' -l '$PGDATA_DIR/server.log' -w \
    -o '-p $PGPORT -c listen_addresses=127.0.0.1 -k $PGDATA_DIR -c fsync=off' start" >/dev/null
  export PGPORT PGDATA_DIR
  echo "PostgreSQL 15 on 127.0.0.1:$PGPORT"
}

pg_stop() {
  if [ -n "${PGDATA_DIR:-}" ] && [ -d "$PGDATA_DIR/data" ]; then
    su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D '$PGDATA_DIR/data' -m fast -w stop" >/dev/null || true
    rm -rf "$PGDATA_DIR"
  fi
}
