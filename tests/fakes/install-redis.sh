#!/bin/sh
# Installs Debian's redis-server for the contract tests (`make test`) when it is missing
# (apt-get, as root or via sudo).
set -eu

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test needs redis-server (https://redis.io) and this machine has no apt-get:" >&2
    echo "install redis-server with your package manager, then run make test again." >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    echo "make test needs redis-server: run 'apt-get update && apt-get install -y redis-server' as root." >&2
    exit 1
fi

echo "redis-server not found: installing Debian's redis-server with apt-get" >&2
# A stale or partly unreachable mirror list should not stop the install if the package is known.
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    || echo "apt-get update failed; trying to install redis-server anyway" >&2
# The tests start their own servers; the package's service (if any init starts it) is not used.
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server
command -v redis-server >/dev/null 2>&1 \
    || { echo "redis-server is still not on PATH after apt-get" >&2; exit 1; }
