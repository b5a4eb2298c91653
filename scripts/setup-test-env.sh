#!/usr/bin/env bash
# Idempotently create <repo>/.venv and install the Python test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"

# nginx and HAProxy (Debian packages): the bench-tool tests run the hot-path
# comparison (benches/hotpath.py) in front of both.
need=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx-light"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need="$need haproxy"
if [ -n "$need" ]; then
    echo "setup-test-env: installing$need (apt-get)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # $need is a list of package names
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi
REQ="tests/py/requirements.txt"
STAMP=".venv/.requirements.sha256"

if [ ! -x .venv/bin/python ]; then
    echo "setup-test-env: creating .venv"
    "$PY" -m venv .venv
fi

# The stamp covers the requirements and the fork helper (python/, installed
# from this checkout), so a change to either reinstalls.
want="$(cat "$REQ" python/pyproject.toml python/ringmux_fork/*.py | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ] || ! .venv/bin/python -c 'import pytest, httpx, mcp, uvicorn, starlette, yaml, ringmux_fork' 2>/dev/null; then
    echo "setup-test-env: installing $REQ"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$REQ"
    .venv/bin/python -m pip install -q --disable-pip-version-check ./python
    echo "$want" > "$STAMP"
fi
echo "setup-test-env: ok ($(.venv/bin/python -c 'import importlib.metadata as m; print("mcp", m.version("mcp"), "pytest", m.version("pytest"))'))"
