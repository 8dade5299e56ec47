#!/bin/sh
# README command 2: lint, type-check and run every test.
#
# Creates .venv with the `test` extra, then runs ruff (lint and format check), mypy and
# pytest on all cores.  Fails if any step fails, including when pytest collects no tests
# (its exit status 5).  Arguments are passed on to pytest.
set -eu
cd "$(dirname "$0")/.."

python=""
for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "test.sh: error: postoffice needs Python 3.11 or newer (or set PYTHON=...)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ] && ! "$python" -m venv .venv; then
    echo "test.sh: error: cannot create .venv (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
fi
# An editable install follows code edits; reinstall only when the package metadata changes.
if [ ! -f .venv/.installed-test ] || [ pyproject.toml -nt .venv/.installed-test ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --editable '.[test]'
    touch .venv/.installed-test .venv/.installed
fi

echo "== ruff check"
.venv/bin/ruff check
echo "== ruff format --check"
.venv/bin/ruff format --check
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest -n auto "$@"
