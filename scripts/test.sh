#!/usr/bin/env bash
# The one command that runs every test (CI calls it).
#   fmt check, clippy, release build, cargo tests, Python test env, integration tests
#   (with per-child cgroups, then again with --cgroup off, Unix child sockets
#   and the POLL_ADD exit wait of kernels before 6.7),
#   the official MCP conformance suite direct vs through ringmux (npm, local install),
#   a short fuzzing run of the parsers (nightly + cargo-fuzz, installed if missing).
# Env: PYTEST_ARGS (extra pytest args), RINGMUX_BIN (binary under test),
#      RINGMUX_TEST_TIMEOUT (per-test seconds, default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --all-targets -- -D warnings

section "cargo build --release (daemon + the benchmark tools the tests check)"
cargo build --release --bins --examples

section "cargo test"
cargo test --all

section "python test environment"
scripts/setup-test-env.sh

section "integration tests (pytest tests/py)"
export RINGMUX_BIN="${RINGMUX_BIN:-$PWD/target/release/ringmux}"
# shellcheck disable=SC2086
.venv/bin/python -m pytest -q -p no:cacheprovider tests/py ${PYTEST_ARGS:-}

section "integration tests again with --cgroup off (the process-group fallback), --child-socket unix and RINGMUX_EXIT_WAIT=poll (exits seen as on Linux < 6.7)"
# shellcheck disable=SC2086
RINGMUX_EXIT_WAIT=poll RINGMUX_TEST_ARGS="--cgroup off --child-socket unix" .venv/bin/python -m pytest -q -p no:cacheprovider tests/py \
    --ignore tests/py/test_cgroups.py --ignore tests/py/test_cgroup_limits.py ${PYTEST_ARGS:-}

section "MCP conformance suite (scripts/conformance.sh)"
scripts/conformance.sh

section "fuzzing, short (scripts/fuzz.sh --ci: every parser target 10 s on the committed corpus)"
scripts/fuzz.sh --ci

section "all tests passed"
