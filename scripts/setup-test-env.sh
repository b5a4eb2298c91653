#!/usr/bin/env bash
# Idempotently create <repo>/.venv and install the Python test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
REQ="tests/py/requirements.txt"
STAMP=".venv/.requirements.sha256"

if [ ! -x .venv/bin/python ]; then
    echo "setup-test-env: creating .venv"
    "$PY" -m venv .venv
fi

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ] || ! .venv/bin/python -c 'import pytest, httpx, mcp, uvicorn, starlette' 2>/dev/null; then
    echo "setup-test-env: installing $REQ"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$want" > "$STAMP"
fi
echo "setup-test-env: ok ($(.venv/bin/python -c 'import importlib.metadata as m; print("mcp", m.version("mcp"), "pytest", m.version("pytest"))'))"
