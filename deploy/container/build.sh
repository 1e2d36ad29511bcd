#!/bin/sh
# Build the wgmesh image, one image for either role, without any container registry: a Debian bookworm
# root filesystem made by mmdebstrap (rootfs.sh, the same one tests/machines boots) plus the project's
# wheel in /opt/wgmesh, imported with Debian's podman (or buildah).
#
#   build.sh WHEEL [--wheelhouse DIR] [--rootfs BASE_DIR] [--output DIR] [--tag NAME:TAG] [--no-import]
#
# WHEEL's dependencies come from --wheelhouse DIR (offline) or the package index. --rootfs reuses a root
# filesystem rootfs.sh made (it is copied, never changed); --output keeps the image's root filesystem
# there (it must not exist). Run it:  podman run --rm -p 8420:8420 localhost/wgmesh:VERSION
# (controller serve is the default command), or `... agent up --token-file ...` for the agent.
set -eu
PROG=build.sh
die() { echo "$PROG: $*" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)

wheel="" wheelhouse="" base="" output="" tag="" import=1
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) wheelhouse=${2:?--wheelhouse needs a directory}; shift 2 ;;
        --rootfs) base=${2:?--rootfs needs a directory}; shift 2 ;;
        --output) output=${2:?--output needs a directory}; shift 2 ;;
        --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
        --no-import) import=0; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [ -z "$wheel" ] || die "one wheel only"; wheel=$1; shift ;;
    esac
done
[ -n "$wheel" ] && [ -f "$wheel" ] || die "give the wgmesh wheel to install (pip wheel --no-deps -w dist .)"
[ -z "$wheelhouse" ] || [ -d "$wheelhouse" ] || die "--wheelhouse '$wheelhouse': no such directory"
[ -z "$base" ] || [ -x "$base/usr/bin/python3" ] || die "--rootfs '$base': not a root filesystem from rootfs.sh"
[ -z "$output" ] || [ ! -e "$output" ] || die "--output '$output' already exists"
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap and chroot)"
version=$(basename "$wheel" | cut -d- -f2)
tag=${tag:-localhost/wgmesh:$version}

work=$(mktemp -d /tmp/wgmesh-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=${output:-$work/root}
if [ -n "$base" ]; then
    cp -a "$base" "$root"
else
    "$HERE/rootfs.sh" "$root"
fi
mkdir -p "$root/tmp/wheels"
cp "$wheel" "$root/tmp/wheels/"
[ -z "$wheelhouse" ] || cp "$wheelhouse"/*.whl "$root/tmp/wheels/"
links=""
[ -z "$wheelhouse" ] || links="--no-index --find-links /tmp/wheels"
chroot "$root" python3 -m venv /opt/wgmesh
# shellcheck disable=SC2086
chroot "$root" /opt/wgmesh/bin/pip install --disable-pip-version-check --quiet $links "/tmp/wheels/$(basename "$wheel")"
ln -sfn /opt/wgmesh/bin/wgmesh "$root/usr/local/bin/wgmesh"
rm -rf "$root/tmp/wheels"
mkdir -p "$root/var/lib/wgmesh"
echo "$PROG: image root filesystem ready in $root ($(chroot "$root" wgmesh --version))"

[ "$import" = 1 ] || exit 0
set -- --change 'ENTRYPOINT ["/opt/wgmesh/bin/wgmesh"]' \
    --change 'CMD ["controller", "serve", "--listen", "0.0.0.0:8420", "--state-dir", "/var/lib/wgmesh/controller"]' \
    --change 'EXPOSE 8420/tcp' --change 'VOLUME /var/lib/wgmesh'
if command -v podman >/dev/null; then
    tar -C "$root" -c . | podman import "$@" - "$tag" >/dev/null
elif command -v buildah >/dev/null; then
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    cp -a "$root"/. "$mnt"/
    buildah umount "$ctr" >/dev/null
    buildah config --entrypoint '["/opt/wgmesh/bin/wgmesh"]' \
        --cmd 'controller serve --listen 0.0.0.0:8420 --state-dir /var/lib/wgmesh/controller' \
        --port 8420/tcp --volume /var/lib/wgmesh "$ctr"
    buildah commit --quiet "$ctr" "$tag" >/dev/null
    buildah rm "$ctr" >/dev/null
else
    die "neither podman nor buildah is installed (apt-get install podman); the root filesystem was in $root"
fi
echo "$PROG: imported $tag"
