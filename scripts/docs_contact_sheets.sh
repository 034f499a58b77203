#!/usr/bin/env bash
# Regenerate the contact sheets under docs/: expert drives through Town01 and three procedural
# towns, rendered by the ground-truth renderer. Usage: bash scripts/docs_contact_sheets.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mirage=${MIRAGE:-.venv/bin/mirage}
for map in Town01 town:1 town:2 town:3; do
  name=${map/:/_}
  "$mirage" demo map="$map" seed=0 width=192 height=192 frame_stride=5 out_dir="outputs/docs/$name"
  cp "outputs/docs/$name/contact_sheet.png" "docs/contact_sheet_${name}.png"
done
