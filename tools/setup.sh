#!/usr/bin/env bash
# Set up a development environment in .venv: torch==2.13.0 first (on its own, so no CUDA wheels are
# pulled), then medgen editable with its pinned extras, then the Debian image packages where apt works.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
V=.venv/bin
stamp=.venv/.medgen-setup
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ -z "${MEDGEN_FORCE_SETUP:-}" ]; then
  echo "setup: .venv is up to date (MEDGEN_FORCE_SETUP=1 to redo)"
else
  $V/python -m pip install -q --upgrade pip
  if ! $V/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    $V/pip install -q "torch==2.13.0"
  fi
  $V/pip install -q -e ".[dev]"
  # CLIP's BPE vocabulary ships inside open-clip-torch, which depends on torchvision: file only, no deps
  $V/pip install -q --no-deps open-clip-torch==3.3.0
  $V/python -m ipykernel install --sys-prefix --name python3 >/dev/null
  touch "$stamp"
fi

# Real images from Debian packages (Colin27 + AAL; BrainWeb slices). Optional: the data chapter says
# clearly what is missing when they are absent. Chromium reads the built preview offline in
# tests/test_preview.py (those checks skip, with a message, without it); installed on its own, so a
# failure of one group does not cost the other.
need=()
[ -f /usr/share/mricron/templates/ch2.nii.gz ] || need+=(mricron-data)
[ -f /usr/share/doc/insighttoolkit5-examples/examples/Data/BrainT1Slice.png ] || need+=(insighttoolkit5-examples)
browser=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || browser+=(chromium)
if [ $(( ${#need[@]} + ${#browser[@]} )) -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "setup: installing ${need[*]} ${browser[*]} with apt-get"
    $SUDO apt-get update -q >/tmp/medgen-apt.log 2>&1 || true
    for group in "${need[*]}" "${browser[*]}"; do
      [ -n "$group" ] || continue
      # shellcheck disable=SC2086  # a group is a space-separated list of package names
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $group >>/tmp/medgen-apt.log 2>&1 \
        || echo "setup: apt-get install $group failed (see /tmp/medgen-apt.log): what needs it will be skipped"
    done
  else
    echo "setup: no usable apt-get; Debian packages (${need[*]} ${browser[*]}) missing: what needs them will be skipped"
  fi
fi
echo "setup: done ($($V/python -c 'import torch, monai, nbdev; print(f"torch {torch.__version__}, monai {monai.__version__}, nbdev {nbdev.__version__}")'))"
