#!/usr/bin/env bash
# Seeds fuzz/corpus/parse_elaborate/ (gitignored) from the examples, the standard library
# and fuzz/seeds/. Safe to re-run: files are named by content hash.
set -euo pipefail
FUZZ="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FUZZ")"
CORPUS="$FUZZ/corpus/parse_elaborate"
mkdir -p "$CORPUS"
n=0
for f in "$ROOT"/examples/*.rfn "$ROOT"/dsl/std/*.rfn "$FUZZ"/seeds/*.rfn; do
  [[ -f "$f" ]] || continue
  cp "$f" "$CORPUS/$(sha1sum "$f" | cut -c1-40)"
  n=$((n + 1))
done
echo "seeded $n files into ${CORPUS#"$ROOT"/}"
