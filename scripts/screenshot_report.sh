#!/usr/bin/env bash
# Render <report_dir>/report.html headless with Chromium and save a PNG screenshot.
# Usage: scripts/screenshot_report.sh REPORT_DIR [OUT_PNG] [WIDTHxHEIGHT]
# Needs chromium (Debian: apt-get install -y chromium). Loads only the local file.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 REPORT_DIR [OUT_PNG] [WIDTHxHEIGHT]" >&2
  exit 2
fi
report_dir=$(cd "$1" && pwd)
html="$report_dir/report.html"
out=${2:-$report_dir/report.png}
size=${3:-1200x2400}
[[ -f "$html" ]] || { echo "no report.html in $report_dir" >&2; exit 2; }
browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
[[ -n "$browser" ]] || { echo "chromium not found (apt-get install -y chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" --screenshot="$out" \
  --window-size="${size/x/,}" "file://$html" >/dev/null 2>&1
[[ -s "$out" ]] || { echo "screenshot failed: $out not written" >&2; exit 1; }
echo "$out"
