#!/bin/sh
# README command 2: lint, type-check and run every test.
#
# Creates .venv with the `test` extra, then runs ruff (lint and format check), mypy and
# pytest on all cores.  Fails if any step fails, including when pytest collects no tests
# (its exit status 5).  Arguments are passed on to pytest.
set -eu
cd "$(dirname "$0")/.."

extra=test
script=test.sh
. scripts/venv.sh

echo "== ruff check"
.venv/bin/ruff check
echo "== ruff format --check"
.venv/bin/ruff format --check
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest -n auto "$@"
