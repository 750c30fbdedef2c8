# Throw-away servers on free loopback ports, for the tests and the scripts that measure replicas.
# Source it, then call `start_qdrant DIR` / `start_postgres DIR`; `stop_servers` (set it as
# the EXIT trap) stops whatever was started and removes its folders.
#   start_qdrant   ../shared/bin/qdrant (or $KOTAE_QDRANT_BIN) with a fresh storage folder;
#                  sets QDRANT_PID, QDRANT_HTTP, QDRANT_GRPC, QDRANT_URL (gRPC). Returns 1 if
#                  the binary is missing.
#   start_postgres a cluster of Debian's PostgreSQL (installed when missing), owned by the
#                  `postgres` system user when run as root (initdb refuses root); sets PG_URL,
#                  PG_BIN. Returns 1 if PostgreSQL cannot be had.

QDRANT_PID=""; QDRANT_DIR=""; PG_DIR=""; PG_BIN=""; AS=()

free_ports() { # N: N free loopback ports, space-separated
  python3 -c 'import socket, sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])' "$1"
}

start_qdrant() {
  local bin="${KOTAE_QDRANT_BIN:-$PWD/../shared/bin/qdrant}"
  [ -x "$bin" ] || return 1
  QDRANT_DIR="$1"; mkdir -p "$QDRANT_DIR"
  read -r QDRANT_HTTP QDRANT_GRPC < <(free_ports 2)
  (cd "$QDRANT_DIR" && exec env QDRANT__SERVICE__HOST=127.0.0.1 QDRANT__SERVICE__HTTP_PORT="$QDRANT_HTTP" \
    QDRANT__SERVICE__GRPC_PORT="$QDRANT_GRPC" QDRANT__STORAGE__STORAGE_PATH="$QDRANT_DIR/storage" \
    QDRANT__STORAGE__SNAPSHOTS_PATH="$QDRANT_DIR/snapshots" QDRANT__TELEMETRY_DISABLED=true \
    "$bin" >"$QDRANT_DIR/log" 2>&1) &
  QDRANT_PID=$!
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$QDRANT_HTTP/readyz" >/dev/null 2>&1 && break
    kill -0 "$QDRANT_PID" 2>/dev/null || { cat "$QDRANT_DIR/log" >&2; echo "the Qdrant server did not start" >&2; exit 1; }
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$QDRANT_HTTP/readyz" >/dev/null || { echo "the Qdrant server is not ready after 30 s" >&2; exit 1; }
  QDRANT_URL="http://127.0.0.1:$QDRANT_GRPC"
}

start_postgres() {
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  if [ -z "$PG_BIN" ]; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
      || { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } \
      || { echo "cannot install PostgreSQL" >&2; return 1; }
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [ -n "$PG_BIN" ] || return 1
  fi
  PG_DIR="$1"; mkdir -p "$PG_DIR"; chmod 755 "$PG_DIR"
  local port; port="$(free_ports 1)"
  AS=(); [ "$(id -u)" = 0 ] && { chown postgres "$PG_DIR"; AS=(runuser -u postgres --); }
  "${AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U kotae --auth=trust --no-sync -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  "${AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=off" start >/dev/null \
    || { cat "$PG_DIR/log" >&2; return 1; }
  PG_URL="postgres://kotae@127.0.0.1:$port/postgres"
}

stop_servers() {
  if [ -n "$QDRANT_PID" ]; then kill "$QDRANT_PID" 2>/dev/null; wait "$QDRANT_PID" 2>/dev/null; rm -rf "$QDRANT_DIR"; fi
  if [ -n "$PG_DIR" ]; then "${AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1; rm -rf "$PG_DIR"; fi
  return 0
}
