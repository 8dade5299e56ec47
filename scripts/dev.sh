#!/bin/sh
# README command 1: run postoffice on the development ports with a demo account.
#
# Creates .venv, installs the package, initialises ./postoffice-data with the domain
# example.test and the user demo@example.test (whose random password is printed once, on the
# first run only), then becomes `postoffice serve`.  Arguments are passed on to serve.
set -eu
cd "$(dirname "$0")/.."

extra=""
script=dev.sh
. scripts/venv.sh

data=./postoffice-data
if [ ! -f "$data/postoffice.toml" ]; then
    .venv/bin/postoffice --data "$data" init --domain example.test
    .venv/bin/postoffice --data "$data" user add demo@example.test
fi
exec .venv/bin/postoffice --data "$data" serve "$@"
