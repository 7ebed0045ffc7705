#!/usr/bin/env bash
# publish.sh OUT DEST: copy a reproduce folder's report, raw numbers and figures (no checkpoints, no HTML)
set -euo pipefail
src=$1; dest=$2
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)   # absolute: the copy below runs from inside $src
cd "$src"
find . \( -path './*/*-seed*' -prune \) -o -type f \( -name 'report.md' -o -name '*.png' -o -name 'results.json' \
     -o -name 'results.csv' -o -name 'verdicts.csv' -o -name 'reproduce.json' -o -path './steps/*.json' \) -print \
  | while read -r f; do mkdir -p "$dest/$(dirname "$f")"; cp "$f" "$dest/$f"; done
