#!/usr/bin/env bash
# The main job on the embedded default: fetch models, ingest knowledge/, answer sample searches.
set -euo pipefail
cd "$(dirname "$0")/.."
export KOTAE_DATA_DIR="${KOTAE_DATA_DIR:-./kotae-data}"
./scripts/setup.sh
K=./target/debug/kotae
$K ingest knowledge --prune
$K search "VPNに接続できないときはどうすればいい？"
$K search "How many days per week can I work from home?"
