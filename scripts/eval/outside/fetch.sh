#!/usr/bin/env bash
# Fetch the outside retrieval corpus: real public documentation that nobody on the team wrote,
# from Debian packages (the only registry with both languages of the same manual):
#   gimp-help-en / gimp-help-ja 2.10.34-2  GIMP user manual, one HTML page per topic (GFDL 1.2+);
#                                          the Japanese edition is partly translated, as real
#                                          translated manuals are.
#   debian-reference-en / -ja 2.100        Debian Reference, a long technical manual (GPL-2+):
#                                          distractors, no question is about it.
# Lays out OUT/en/{gimp,debian-reference}/ and OUT/ja/{gimp,debian-reference}/, the two roots
# `kotae ingest` reads; the gold paths in evals/outside/*.jsonl are relative to them.
# The documents are not committed: they are fetched (pinned versions) when the evaluation runs.
set -euo pipefail
OUT="${1:-.cache/outside}"
PKGS=(gimp-help-en=2.10.34-2 gimp-help-ja=2.10.34-2 debian-reference-en=2.100 debian-reference-ja=2.100)
mkdir -p "$OUT/debs"
OUT="$(cd "$OUT" && pwd)"
if [ -f "$OUT/.complete" ]; then
  echo "outside corpus already in $OUT"
  exit 0
fi
(
  cd "$OUT/debs"
  for p in "${PKGS[@]}"; do
    name="${p%%=*}"
    if ! ls "${name}"_*.deb >/dev/null 2>&1; then
      apt-get download "$p" || {
        echo "cannot download $p: this needs Debian's apt sources (bookworm) reachable" >&2
        exit 1
      }
    fi
  done
)
rm -rf "$OUT/x" "$OUT/en" "$OUT/ja"
for d in "$OUT"/debs/*.deb; do
  n="$(basename "$d")"
  mkdir -p "$OUT/x/${n%%_*}"
  dpkg-deb -x "$d" "$OUT/x/${n%%_*}"
done
for lang in en ja; do
  mkdir -p "$OUT/$lang/gimp" "$OUT/$lang/debian-reference"
  cp "$OUT/x/gimp-help-$lang/usr/share/gimp/2.0/help/$lang/"*.html "$OUT/$lang/gimp/"
  cp "$OUT/x/debian-reference-$lang/usr/share/debian-reference/"*."$lang".html "$OUT/$lang/debian-reference/"
done
rm -rf "$OUT/x"
n_en=$(find "$OUT/en" -name '*.html' | wc -l)
n_ja=$(find "$OUT/ja" -name '*.html' | wc -l)
echo "outside corpus: $n_en English and $n_ja Japanese pages in $OUT"
touch "$OUT/.complete"
