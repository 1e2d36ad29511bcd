#!/usr/bin/env bash
# Install Debian packages when any of the commands or files they provide is missing (one place for every
# `make` target that needs system packages). As a non-root user it only says what is missing.
#   deploy/apt-need.sh WHAT "COMMANDS" "FILES" PACKAGE...
# A package may carry a version (udev=252.39-1~deb12u2). Nothing is installed when everything is there.
set -uo pipefail
what=$1 commands=$2 files=$3
shift 3
missing=""
for c in $commands; do
    PATH=$PATH:/usr/sbin:/sbin command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
for f in $files; do
    test -e "$f" || missing="$missing $f"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "note: missing$missing; as root, make installs: $*"
    exit 0
fi
echo "installing $what: $*"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null &&
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
