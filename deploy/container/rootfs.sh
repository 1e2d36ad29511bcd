#!/bin/sh
# Build a Debian bookworm root filesystem that boots with systemd and holds every Debian package
# deploy/install.sh needs, so that install.sh finds them present and never calls apt (the machines
# of tests/machines and the container have no route out). Usage: rootfs.sh DEST_DIR [MIRROR]
# DEST_DIR must not exist; it is created atomically (built beside it, then renamed).
set -eu
dest=${1:?usage: rootfs.sh DEST_DIR [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
# Keep this list in step with the packages install.sh would install (ROOTFS_PACKAGES is hashed by the
# tests into the cache key, so changing it rebuilds the cached root filesystem).
ROOTFS_PACKAGES="systemd,systemd-sysv,dbus,iproute2,iputils-ping,procps,nftables,wireguard-tools,wireguard-go,python3,python3-venv"
if [ -e "$dest" ]; then
    echo "rootfs.sh: $dest already exists" >&2
    exit 2
fi
command -v mmdebstrap >/dev/null || { echo "rootfs.sh: needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 2; }
work="$dest.building.$$"
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=minbase --include="$ROOTFS_PACKAGES" \
    --customize-hook='echo wgmesh > "$1/etc/hostname"' \
    --customize-hook='rm -f "$1/etc/machine-id" && : > "$1/etc/machine-id"' \
    bookworm "$work" "$mirror"
mv "$work" "$dest"
trap - EXIT
