#!/bin/sh
# README command 1: run postoffice on the development ports with a demo account.
#
# Creates .venv, installs the package, initialises ./postoffice-data with the domain
# example.test and the user demo@example.test (whose random password is printed once, on the
# first run only), then becomes `postoffice serve`.  Arguments are passed on to serve.
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
    echo "dev.sh: error: postoffice needs Python 3.11 or newer (or set PYTHON=...)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ] && ! "$python" -m venv .venv; then
    echo "dev.sh: error: cannot create .venv (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
fi
# An editable install follows code edits; reinstall only when the package metadata changes.
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --editable .
    touch .venv/.installed
fi

data=./postoffice-data
if [ ! -f "$data/postoffice.toml" ]; then
    .venv/bin/postoffice --data "$data" init --domain example.test
    .venv/bin/postoffice --data "$data" user add demo@example.test
fi
exec .venv/bin/postoffice --data "$data" serve "$@"
