#!/usr/bin/env bash
# The benchmark harness: builds what it needs, installs the peers, runs
# benches/harness.py and leaves JSON, a markdown table and SVG plots in
# benches/results/.
#   scripts/bench.sh            full run (~16 min on 2 cores)
#   scripts/bench.sh --quick    one run per column, shorter windows (~3.5 min)
#   scripts/bench.sh --help     this text
#   scripts/bench.sh --parts 2  only part 2 (1: cleanup stall, 2: request path incl. 2a: the hot
#                               path against nginx and HAProxy, TCP and Unix upstreams, 3: scale,
#                               incl. 3b: a warm Python tool server, exec vs --fork vs the original)
# Everything talks to 127.0.0.1 only. Needs root (or sudo) once, to install nginx and HAProxy.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
-h | --help)
    # The comment block above is the usage.
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

say() { printf '==== %s\n' "$*" >&2; }

say "building ringmux, the probe and the load generator (release)"
cargo build --release --quiet --bin ringmux --example probe --example loadgen

scripts/install-peers.sh
export PATH="$PATH:/usr/sbin"

VENV=.venv-bench
REQ=benches/requirements.txt
STAMP="$VENV/.requirements.sha256"
want="$(cat "$REQ" benches/pyorig/requirements.txt python/pyproject.toml python/ringmux_fork/*.py | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
    say "installing the Python side into $VENV (matplotlib, uvicorn, httpx, mcp, ringmux_fork)"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check ./python
    echo "$want" > "$STAMP"
fi

say "running benches/harness.py $*"
exec "$VENV/bin/python" benches/harness.py --python "$PWD/$VENV/bin/python" "$@"
