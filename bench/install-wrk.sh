#!/bin/sh
# Installs Debian's wrk for `make bench` when it is missing (apt-get, as root or via sudo).
set -eu

if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "make bench needs wrk (https://github.com/wg/wrk) and this machine has no apt-get:" >&2
    echo "install wrk with your package manager, then run make bench again." >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    echo "make bench needs wrk: run 'apt-get update && apt-get install -y wrk' as root." >&2
    exit 1
fi

echo "wrk not found: installing Debian's wrk with apt-get" >&2
# A stale or partly unreachable mirror list should not stop the install if wrk is known.
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    || echo "apt-get update failed; trying to install wrk anyway" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk
command -v wrk >/dev/null 2>&1 || { echo "wrk is still not on PATH after apt-get" >&2; exit 1; }
