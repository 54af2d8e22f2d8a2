#!/usr/bin/env bash
# The project's test command (README's second command; .ci/run calls exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
V=.venv/bin
# two pytest workers on two cores: one torch thread each, or they oversubscribe the CPU several-fold
export PATH="$PWD/.venv/bin:$PATH" MPLBACKEND=Agg PYTHONHASHSEED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

echo "== export drift: nbs/ must be what medgen/ and README.md are written from"
$V/nbdev-export
$V/nbdev-clean
$V/python tools/book.py readme
$V/python tools/book.py sidebar >/dev/null
git diff --exit-code --stat -- medgen nbs README.md || {
  echo "medgen/, nbs/ or README.md changed on export/clean/readme: run nbdev-export, nbdev-clean and"
  echo "python tools/book.py readme, then commit the result"; git diff -- medgen nbs README.md | head -60; exit 1; }
untracked=$(git ls-files --others --exclude-standard -- medgen nbs)
[ -z "$untracked" ] || { echo "untracked files after export: $untracked"; exit 1; }

echo "== lint"
$V/ruff check medgen data_scripts tools tests bench
$V/python -m pyflakes medgen

echo "== pytest (notebooks, preview, unit tests)"
set +e
$V/python -m pytest -n "${MEDGEN_TEST_WORKERS:-2}" --dist loadgroup -q -p no:cacheprovider "$@"
rc=$?
set -e
[ $rc -eq 5 ] && { echo "pytest collected no tests"; exit 1; }
exit $rc
