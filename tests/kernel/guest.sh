#!/bin/sh
# The kernel tier inside the VM (see tests/kernel/vm.py): mount the read-only image of this run's
# Python (virtio disk /dev/vda), bind each of its trees over the same path, then run the command in
# the checkout. Usage: guest.sh RESULTS_DIR TREE[:TREE...] CHECKOUT COMMAND...
# The command's exit status is the script's (and so vng's); it is also written to RESULTS_DIR/status.
set -u
results=$1 trees=$2 checkout=$3
shift 3
# virtio_blk for the image; tun so /dev/net/tun exists (the root tier checks for it).
modprobe virtio_blk
modprobe tun
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /run/wgk-image
mount -o ro /dev/vda /run/wgk-image || { echo "guest: cannot mount the image /dev/vda" >&2; exit 90; }
for tree in $(echo "$trees" | tr : ' '); do
    mount --bind "/run/wgk-image$tree" "$tree" || { echo "guest: cannot bind $tree" >&2; exit 91; }
done
cd "$checkout" || exit 92
export PYTHONDONTWRITEBYTECODE=1 PATH="$PATH:/usr/sbin:/sbin"
"$@"
status=$?
echo "$status" > "$results/status"
exit "$status"
