# Sourced by dev.sh and test.sh: make .venv (Python 3.11+) and install the package into it.
# The caller sets `extra` (the pip extra to install, "" for none) and `script` (its name, for
# error messages): POSIX `.` takes no arguments.
python=""
for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "$script: error: postoffice needs Python 3.11 or newer (or set PYTHON=...)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ] && ! "$python" -m venv .venv; then
    echo "$script: error: cannot create .venv (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
fi
# An editable install follows code edits; reinstall only when the package metadata changes.
marker=.venv/.installed${extra:+-$extra}
if [ ! -f "$marker" ] || [ pyproject.toml -nt "$marker" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --editable ".${extra:+[$extra]}"
    touch "$marker"
fi
