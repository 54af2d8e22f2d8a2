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

echo "== clean install: a new venv with only torch, then \`pip install .\` (no extras): every public name, every network"
# what a new user gets: tools/check_install.py imports all of medgen.__all__ and runs a forward + save_pretrained /
# from_pretrained round trip of every network. The source is copied out so the build leaves nothing in the tree;
# pip's wheel cache makes the second run quick. MEDGEN_SKIP_CLEAN_INSTALL=1 skips it (e.g. offline, no index).
if [ -z "${MEDGEN_SKIP_CLEAN_INSTALL:-}" ]; then
  clean=$(mktemp -d "${TMPDIR:-/tmp}/medgen-clean.XXXXXX")
  trap 'rm -rf "$clean"' EXIT
  mkdir "$clean/src" && cp -r pyproject.toml README.md medgen "$clean/src/" && rm -rf "$clean/src/medgen/__pycache__"
  python3 -m venv "$clean/venv"
  "$clean/venv/bin/pip" install -q --no-compile "torch==2.13.0"  # no .pyc of all of torch: half the time
  "$clean/venv/bin/pip" install -q --no-compile "$clean/src"
  check="$PWD/tools/check_install.py"
  (cd "$clean" && OMP_NUM_THREADS=1 "$clean/venv/bin/python" "$check")
  rm -rf "$clean"; trap - EXIT
fi

echo "== pytest (notebooks, preview, unit tests)"
set +e
$V/python -m pytest -n "${MEDGEN_TEST_WORKERS:-2}" --dist loadfile -q -p no:cacheprovider --durations=12 "$@"
rc=$?
set -e
[ $rc -eq 5 ] && { echo "pytest collected no tests"; exit 1; }
exit $rc
