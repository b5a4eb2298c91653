#!/usr/bin/env bash
# Installs nginx and HAProxy (Debian packages) if they are missing: the peers
# the benchmarks compare with and the balancers the tests put in front of
# ringmux. Used by scripts/setup-test-env.sh and scripts/bench.sh. Needs root
# or sudo the first time.
set -euo pipefail

need=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx-light"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need="$need haproxy"
if [ -n "$need" ]; then
    echo "install-peers: installing$need (apt-get)" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # $need is a list of package names
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi
