#!/usr/bin/env bash
# The soak (not part of CI): ringmux under steady load at ~70% of saturation
# with rollouts opened and closed all along and 5% of their children
# crashing; fds, RSS, threads, live children and latency percentiles over
# time, plotted into benches/results/soak/ (see benches/soak.py).
#   scripts/soak.sh                  30 minutes
#   scripts/soak.sh --minutes 5      shorter; other flags: benches/soak.py --help
# Loopback only; bounded by --minutes (plus ~1 min to start and stop).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

echo "==== building ringmux and the load generator (release)" >&2
cargo build --release --quiet --bin ringmux --example loadgen

VENV=.venv-bench
if ! "$VENV/bin/python" -c "import matplotlib" >/dev/null 2>&1; then
    echo "==== installing matplotlib into $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r benches/requirements.txt
fi
exec "$VENV/bin/python" benches/soak.py "$@"
