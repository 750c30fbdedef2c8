#!/usr/bin/env bash
# Kotae beyond one process, on this machine: a writer and REPLICAS replicas of `kotae serve`
# sharing one data folder, one Qdrant server (../shared/bin/qdrant) and one PostgreSQL
# (Debian's), behind a round-robin proxy, all on loopback; see scripts/bench/replicas.py for
# what is measured. Models come from KOTAE_MODELS_DIR (else ./kotae-data/models, fetched by
# scripts/setup.sh). Exits 1 when a check fails.
#   scripts/bench/replicas.sh [REPLICAS=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
REPLICAS="${1:-2}"
K=./target/debug/kotae
if [ -z "${KOTAE_MODELS_DIR:-}" ]; then
  ./scripts/setup.sh
  export KOTAE_MODELS_DIR="$PWD/kotae-data/models"
else
  [ -x "$K" ] || cargo build -p kotae
fi
. scripts/lib/servers.sh
WORK="$(mktemp -d)"; chmod 755 "$WORK"  # the postgres user reaches its cluster inside
trap 'stop_servers; rm -rf "$WORK"' EXIT
start_qdrant "$WORK/qdrant" || { echo "no Qdrant server at ${KOTAE_QDRANT_BIN:-../shared/bin/qdrant}" >&2; exit 1; }
start_postgres "$WORK/pg" || { echo "no PostgreSQL" >&2; exit 1; }
# The shared volume, the shared servers, and an admin key every process accepts.
export KOTAE_DATA_DIR="$WORK/data" KOTAE_QDRANT_URL="$QDRANT_URL" KOTAE_STATE_URL="$PG_URL"
OUT="$($K new-key --name ops 2>&1)"
export KOTAE_QDRANT_COLLECTION="kotae_replicas" KOTAE_CONFIG="$WORK/kotae.toml"
KEY="$(grep -m1 '^kotae_' <<<"$OUT")" || { echo "$OUT" >&2; echo "kotae new-key printed no key" >&2; exit 1; }
{
  printf '[server]\nrate_limit_per_minute = 100000\nrate_limit_burst = 100000\n\n'
  sed -n '/^\[\[server.api_keys\]\]/,$p' <<<"$OUT" | sed 's/^role = .*/role = "admin"/'
} >"$KOTAE_CONFIG"
mkdir -p "$WORK/logs"
$K ingest knowledge --groups public >"$WORK/logs/ingest.log" 2>&1
python3 scripts/bench/replicas.py --kotae "$K" --replicas "$REPLICAS" --admin-key "$KEY" --logs "$WORK/logs" \
  || { tail -n 20 "$WORK"/logs/*.log; exit 1; }
