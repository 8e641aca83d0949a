#!/bin/sh
# Installs a Debian package when its command is missing (apt-get, as root or via sudo).
#   sh tools/install-debian-package.sh COMMAND PACKAGE "WHAT NEEDS IT"
# e.g. sh tools/install-debian-package.sh wrk wrk "make bench"
set -eu

command_name=$1
package=$2
needed_by=$3

if command -v "$command_name" >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$needed_by needs $command_name and this machine has no apt-get:" >&2
    echo "install $package with your package manager, then run $needed_by again." >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    echo "$needed_by needs $command_name: run 'apt-get update && apt-get install -y $package' as root." >&2
    exit 1
fi

echo "$command_name not found: installing Debian's $package with apt-get" >&2
# A stale or partly unreachable mirror list should not stop the install if the package is known.
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    || echo "apt-get update failed; trying to install $package anyway" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package"
command -v "$command_name" >/dev/null 2>&1 \
    || { echo "$command_name is still not on PATH after apt-get" >&2; exit 1; }
