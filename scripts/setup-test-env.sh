#!/usr/bin/env bash
# Idempotently create <repo>/.venv and install the Python test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"

# nginx and HAProxy: the hot-path bench test (benches/hotpath.py) and the
# balancer tests (tests/py/test_balancers.py) run them.
scripts/install-peers.sh
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
