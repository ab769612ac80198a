#!/usr/bin/env bash
# Installs the Debian programs the end-to-end suite starts as real servers beside Ferrum
# (redis-server for the Redis response cache) when they are missing and this runs as root with
# apt-get; otherwise says what to install. Called by `make test-python`.
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup-test-tools: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The package starts a system-wide service on 6379; the tests start their own servers.
    if command -v service >/dev/null; then service redis-server stop >/dev/null 2>&1 || true; fi
else
    echo "setup-test-tools: missing ${missing[*]} (install them, or run as root with apt-get)" >&2
    exit 1
fi
