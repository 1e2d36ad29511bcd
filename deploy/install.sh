#!/bin/sh
# Install wgmesh on this Debian host as a systemd service (root; idempotent: a second run changes nothing).
#
#   install.sh controller [--listen HOST:PORT] [--mesh-cidr CIDR] [--tls-san NAME]... \
#                         [--from WHEEL|DIR] [--wheelhouse DIR]
#   install.sh agent --controller URL --token-file FILE [--endpoint HOST:PORT]... \
#                    [--backend auto|kernel|userspace] [--from WHEEL|DIR] [--wheelhouse DIR]
#   install.sh --uninstall [--purge]
#
# It installs the Debian packages it needs when they are missing (wireguard-tools, iproute2, nftables,
# python3-venv, iputils-ping; wireguard-go only when the kernel has no WireGuard module), puts wgmesh in
# its own virtualenv under /opt/wgmesh (from --from WHEEL|DIR; the wheels beside the wheel or in
# --wheelhouse are used offline; otherwise the package index), writes /etc/wgmesh/ROLE.toml (0600),
# installs and enables deploy/systemd/wgmesh-ROLE.service, and prints the next step.
# --uninstall removes the units, the interface, the program and /etc/wgmesh, and keeps /var/lib/wgmesh
# (keys, enrollment, database) unless --purge. A bad flag changes nothing and says what was wrong.
set -eu

PREFIX=/opt/wgmesh
CONF_DIR=/etc/wgmesh
STATE_DIR=/var/lib/wgmesh
UNIT_DIR=/etc/systemd/system
LINK=/usr/local/bin/wgmesh
HERE=$(cd "$(dirname "$0")" && pwd)
PROG=install.sh

die() { echo "$PROG: $*" >&2; exit 2; }
say() { echo "$PROG: $*"; }
changed=0
did() { changed=1; say "$*"; }

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

# --- arguments (all checked before anything changes) ----------------------------------------------
role="" listen="" mesh_cidr="" from="" wheelhouse="" controller="" token_file="" backend="auto"
endpoints="" sans="" uninstall=0 purge=0
[ $# -gt 0 ] || usage
case "$1" in
    controller|agent) role=$1; shift ;;
    --uninstall) ;;
    -h|--help) usage 0 ;;
    *) die "first argument must be controller, agent or --uninstall, not '$1' (see --help)" ;;
esac
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --listen) need_value "$@"; listen=$2; shift 2 ;;
        --mesh-cidr) need_value "$@"; mesh_cidr=$2; shift 2 ;;
        --tls-san) need_value "$@"; sans="$sans $2"; shift 2 ;;
        --from) need_value "$@"; from=$2; shift 2 ;;
        --wheelhouse) need_value "$@"; wheelhouse=$2; shift 2 ;;
        --controller) need_value "$@"; controller=$2; shift 2 ;;
        --token-file) need_value "$@"; token_file=$2; shift 2 ;;
        --endpoint) need_value "$@"; endpoints="$endpoints $2"; shift 2 ;;
        --backend) need_value "$@"; backend=$2; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) usage 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

host_port() { # HOST:PORT or [V6]:PORT with a port 1-65535
    port=${1##*:}; host=${1%:*}
    [ -n "$host" ] && [ "$host" != "$1" ] || return 1
    case "$port" in ''|*[!0-9]*) return 1 ;; esac
    [ "$port" -ge 1 ] && [ "$port" -le 65535 ]
}
if [ "$uninstall" = 1 ]; then
    [ -z "$role$listen$mesh_cidr$sans$from$controller$token_file$endpoints" ] ||
        die "--uninstall takes no other option than --purge"
elif [ "$purge" = 1 ]; then
    die "--purge goes with --uninstall"
elif [ "$role" = controller ]; then
    [ -z "$controller$token_file$endpoints" ] && [ "$backend" = auto ] ||
        die "controller takes --listen, --mesh-cidr, --tls-san, --from, --wheelhouse (agent options given)"
    [ -z "$listen" ] || host_port "$listen" || die "--listen '$listen': expected HOST:PORT"
    case "$mesh_cidr" in ''|*/*) ;; *) die "--mesh-cidr '$mesh_cidr': expected a network like 100.64.0.0/10" ;; esac
    for n in $sans; do
        case "$n" in *[!A-Za-z0-9.:-]*) die "--tls-san '$n': expected a host name or an IP address" ;; esac
    done
else
    [ -z "$listen$mesh_cidr$sans" ] || die "agent takes --controller, --token-file, --endpoint, --backend, --from"
    [ -n "$controller" ] || die "agent needs --controller URL"
    case "$controller" in
        http://?*|https://?*) ;;
        *) die "--controller '$controller': expected http(s)://HOST[:PORT]" ;;
    esac
    for e in $endpoints; do host_port "$e" || die "--endpoint '$e': expected HOST:PORT"; done
    case "$backend" in auto|kernel|userspace) ;; *) die "--backend '$backend': expected auto, kernel or userspace" ;; esac
    if [ -z "$token_file" ]; then
        [ -f "$STATE_DIR/node.json" ] || [ -f "$CONF_DIR/preauth-key" ] ||
            die "agent needs --token-file FILE (the pre-auth key from \`wgmesh controller token create\`)"
    elif [ ! -r "$token_file" ] || [ ! -s "$token_file" ]; then
        die "--token-file '$token_file': no such readable, non-empty file"
    fi
fi
if [ -n "$from" ] && [ ! -f "$from" ] && [ ! -f "$from/pyproject.toml" ]; then
    die "--from '$from': expected a wheel file or a wgmesh checkout"
fi
[ -z "$wheelhouse" ] || [ -d "$wheelhouse" ] || die "--wheelhouse '$wheelhouse': no such directory"
[ "$(id -u)" = 0 ] || die "run as root (it installs packages, a service and /etc/wgmesh)"
[ "$uninstall" = 1 ] || [ -f "$HERE/systemd/wgmesh-$role.service" ] ||
    die "$HERE/systemd/wgmesh-$role.service is missing: run install.sh from its deploy/ folder"

# --- uninstall ----------------------------------------------------------------------------------------
if [ "$uninstall" = 1 ]; then
    for unit in wgmesh-agent wgmesh-controller; do
        if [ -f "$UNIT_DIR/$unit.service" ]; then
            systemctl disable --now "$unit.service" >/dev/null 2>&1 || true
            rm -f "$UNIT_DIR/$unit.service"
            did "removed $unit.service"
        fi
    done
    systemctl daemon-reload 2>/dev/null || true
    systemctl reset-failed wgmesh-agent.service wgmesh-controller.service 2>/dev/null || true
    if [ -x "$PREFIX/bin/wgmesh" ] && [ -f "$STATE_DIR/node.json" ]; then
        # The agent's interface (and its wireguard-go) outlive the unit on purpose; end them now.
        if out=$(WGMESH_STATE_DIR=$STATE_DIR "$PREFIX/bin/wgmesh" agent down 2>&1); then
            case "$out" in *removed*) did "$out" ;; esac
        else
            echo "$PROG: wgmesh agent down: $out" >&2
        fi
    fi
    for path in "$LINK" "$PREFIX" "$CONF_DIR" /var/cache/wgmesh; do
        if [ -e "$path" ] || [ -L "$path" ]; then rm -rf "$path"; did "removed $path"; fi
    done
    if [ "$purge" = 1 ]; then
        if [ -e "$STATE_DIR" ]; then rm -rf "$STATE_DIR"; did "removed $STATE_DIR"; fi
    elif [ -e "$STATE_DIR" ]; then
        say "kept $STATE_DIR (keys, enrollment, database); --purge removes it"
    fi
    [ "$changed" = 1 ] || say "nothing to remove"
    exit 0
fi

# --- Debian packages ----------------------------------------------------------------------------------
kernel_has_wireguard() {
    ip link add wgm-probe0 type wireguard 2>/dev/null || return 1
    ip link del wgm-probe0 2>/dev/null || true
}
packages="python3 python3-venv"
if [ "$role" = agent ]; then
    packages="$packages wireguard-tools iproute2 nftables iputils-ping"
    command -v ip >/dev/null && kernel_has_wireguard || packages="$packages wireguard-go"
fi
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
    changed=1
fi
if [ "$role" = agent ] && [ "$backend" = kernel ] && ! kernel_has_wireguard; then
    die "--backend kernel: this kernel has no WireGuard module (use auto or userspace)"
fi

# --- the program: /opt/wgmesh ---------------------------------------------------------------------------
source_id() { # what is installed: the wheel's checksum, or the checkout's commit and changes
    if [ -z "$from" ]; then echo "index:wgmesh"
    elif [ -f "$from" ]; then echo "wheel:$(sha256sum "$from" | cut -d' ' -f1)"
    else echo "dir:$(cd "$from" && git rev-parse HEAD 2>/dev/null)-$(cd "$from" && git status --porcelain 2>/dev/null | sha256sum | cut -c1-12)"
    fi
}
want=$(source_id)
if [ "$(cat "$PREFIX/.installed-from" 2>/dev/null)" != "$want" ] || [ ! -x "$PREFIX/bin/wgmesh" ]; then
    upgrade=0
    [ ! -f "$PREFIX/.installed-from" ] || upgrade=1
    [ -x "$PREFIX/bin/python" ] || python3 -m venv "$PREFIX"
    links=$wheelhouse
    if [ -z "$links" ] && [ -f "$from" ] && [ "$(ls "$(dirname "$from")"/*.whl | wc -l)" -gt 1 ]; then
        links=$(dirname "$from")  # the wheels beside the wheel: install offline
    fi
    # No byte-compiling of every dependency's modules (most of scipy's are never imported): the units
    # compile what they import once, into their CacheDirectory (PYTHONPYCACHEPREFIX).
    set -- --disable-pip-version-check --quiet --no-compile
    [ -z "$links" ] || set -- "$@" --no-index --find-links "$links"
    # pip keeps an installed wgmesh of the same version: a changed wheel is forced in (its dependencies
    # stay as they are).
    if ! "$PREFIX/bin/pip" install "$@" "${from:-wgmesh}" >"$PREFIX/install.log" 2>&1 ||
        { [ "$upgrade" = 1 ] && [ -f "$from" ] &&
            ! "$PREFIX/bin/pip" install "$@" --force-reinstall --no-deps "$from" >>"$PREFIX/install.log" 2>&1; }; then
        tail -5 "$PREFIX/install.log" >&2
        die "pip install failed (log: $PREFIX/install.log)"
    fi
    echo "$want" >"$PREFIX/.installed-from"
    did "installed $("$PREFIX/bin/wgmesh" --version) in $PREFIX"
fi
if [ "$(readlink "$LINK" 2>/dev/null)" != "$PREFIX/bin/wgmesh" ]; then
    mkdir -p "$(dirname "$LINK")"
    ln -sfn "$PREFIX/bin/wgmesh" "$LINK"
    did "linked $LINK"
fi

# --- settings ---------------------------------------------------------------------------------------
# put FILE MODE OWNER: write stdin to FILE only when it differs (atomically), then fix mode and owner.
put() {
    tmp="$1.tmp.$$"
    cat >"$tmp"
    chmod "$2" "$tmp"
    chown "$3" "$tmp"
    if cmp -s "$tmp" "$1" && [ "$(stat -c %a:%U "$1")" = "${2#0}:${3%%:*}" ]; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$1"
    did "wrote $1"
}
mkdir -p "$CONF_DIR"
chmod 0755 "$CONF_DIR"
unit=wgmesh-$role
if [ "$role" = controller ]; then
    {
        echo "# wgmesh controller settings (written by install.sh; flags and WGMESH_* win over them)."
        echo "listen = \"${listen:-0.0.0.0:8420}\""
        echo "state_dir = \"$STATE_DIR/controller\""
        [ -z "$mesh_cidr" ] || echo "mesh_cidr = \"$mesh_cidr\""
        # HTTPS with the controller's own CA (its pin travels in every pre-auth key); the certificate
        # covers this host's addresses and names, and these:
        [ -z "$sans" ] || echo "tls_san = [$(printf '"%s", ' $sans | sed 's/, $//')]"
    } | put "$CONF_DIR/controller.toml" 0600 root:root || true
else
    if [ -n "$token_file" ]; then
        put "$CONF_DIR/preauth-key" 0600 root:root <"$token_file" || true
    fi
    {
        echo "# wgmesh agent settings (written by install.sh; flags and WGMESH_* win over them)."
        echo "controller = \"$controller\""
        echo "token_file = \"$CONF_DIR/preauth-key\""
        echo "backend = \"$backend\""
        echo "state_dir = \"$STATE_DIR\""
        if [ -n "$endpoints" ]; then
            printf 'endpoint = ['
            sep=""
            for e in $endpoints; do printf '%s"%s"' "$sep" "$e"; sep=", "; done
            echo "]"
        fi
    } | put "$CONF_DIR/agent.toml" 0600 root:root || true
fi

# --- the unit -------------------------------------------------------------------------------------------
unit_changed=0
if put "$UNIT_DIR/$unit.service" 0644 root:root <"$HERE/systemd/$unit.service"; then
    unit_changed=1
    systemctl daemon-reload
fi
if ! systemctl is-enabled --quiet "$unit.service"; then
    systemctl enable --quiet "$unit.service"
    did "enabled $unit.service"
fi
if ! systemctl is-active --quiet "$unit.service"; then
    say "starting $unit.service (ready once it $([ "$role" = agent ] && echo 'has applied its network map' || echo listens))"
    systemctl start "$unit.service" || { journalctl -u "$unit" -n 12 --no-pager -o cat >&2 || true
        die "$unit.service did not start (above: the end of journalctl -u $unit)"; }
    did "started $unit.service"
elif [ "$changed" = 1 ] || [ "$unit_changed" = 1 ]; then
    systemctl restart "$unit.service" || { journalctl -u "$unit" -n 12 --no-pager -o cat >&2 || true
        die "$unit.service did not restart (above: the end of journalctl -u $unit)"; }
    did "restarted $unit.service"
fi

# --- next step ----------------------------------------------------------------------------------------
[ "$changed" = 1 ] || say "nothing changed: wgmesh $role is installed and running"
if [ "$role" = controller ]; then
    say "next: create a pre-auth key for your hosts:  sudo wgmesh controller token create --reusable --expires 1d"
    say "      the admin credential is in $STATE_DIR/controller/admin-credential (root only)"
else
    say "next: see the mesh from this host:  sudo wgmesh agent status"
fi
