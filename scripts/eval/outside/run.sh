#!/usr/bin/env bash
# The outside retrieval evaluation: questions written by reading the GIMP manual (English and
# Japanese editions), searched over each edition with the Debian Reference as distractors.
#   scripts/eval/outside/run.sh [dev|heldout] [extra `kotae eval retrieval` flags...]
# Fetches the corpus (scripts/eval/outside/fetch.sh), ingests each edition once into the
# knowledge bases `outside-en` and `outside-ja` of the data directory ($KOTAE_DATA_DIR), then
# runs `kotae eval retrieval` on every set of the split:
#   en (English questions, English edition)     ja (Japanese questions, Japanese edition)
#   ja2en (Japanese questions, English edition) en2ja (English questions, Japanese edition)
# The held-out split is run only to report: thresholds come from dev alone.
set -euo pipefail
cd "$(dirname "$0")/../../.."
SPLIT="${1:-dev}"
shift || true
KOTAE="${KOTAE_BIN:-./target/debug/kotae}"
CORPUS="${KOTAE_OUTSIDE_CORPUS:-.cache/outside}"
scripts/eval/outside/fetch.sh "$CORPUS"
DATA_DIR="${KOTAE_DATA_DIR:-./kotae-data}"
for lang in en ja; do
  if [ ! -f "$DATA_DIR/kb/outside-$lang/.outside-complete" ]; then
    "$KOTAE" --kb "outside-$lang" ingest --groups public "$CORPUS/$lang"
    touch "$DATA_DIR/kb/outside-$lang/.outside-complete"
  fi
done
status=0
for set in en ja ja2en en2ja; do
  case "$set" in en | ja2en) kb=outside-en ;; *) kb=outside-ja ;; esac
  # Floors (set from dev figures) are enforced on dev; the held-out split only reports.
  thresholds="evals/outside/thresholds.$set.toml"
  [ "$SPLIT" = dev ] && [ -f "$thresholds" ] || thresholds=none
  echo "== $set ($SPLIT, knowledge base $kb)"
  "$KOTAE" --kb "$kb" eval retrieval --golden "evals/outside/$set.$SPLIT.jsonl" --thresholds "$thresholds" "$@" || status=1
done
exit $status
