#!/usr/bin/env bash
# publish.sh OUT DEST: copy a reproduce folder's reports (report.md and the self-contained report.html, and
# the HTML pages of its compare / robustness sub-reports), raw numbers and figures, and each run's record
# (config.json, metrics.jsonl, gsnr.jsonl, final.json, tuning.json, manifest.json), never checkpoints or caches
set -euo pipefail
src=$1; dest=$2
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)   # absolute: the copy below runs from inside $src
cd "$src"
find . -type f \( -name 'report.md' -o -name '*.html' -o -name '*.png' -o -name 'results.json' -o -name 'results.csv' \
     -o -name 'verdicts.csv' -o -name 'reproduce.json' -o -path './steps/*.json' -o -name 'tuning.json' \
     -o -name 'manifest.json' \
     -o -name 'config.json' -o -name 'metrics.jsonl' -o -name 'gsnr.jsonl' -o -name 'final.json' \) -print \
  | while read -r f; do mkdir -p "$dest/$(dirname "$f")"; cp "$f" "$dest/$f"; done
