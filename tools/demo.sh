#!/usr/bin/env bash
# The main job (README's first command): set up, execute the whole book in the smoke profile on
# embedded data, build the HTML preview and extract the figures, then print where they are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export MPLBACKEND=Agg
.venv/bin/python tools/book.py demo --profile "${PROFILE:-smoke}"
