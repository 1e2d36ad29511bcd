"""`wgmesh controller`: `serve` runs the controller; `token create|list|revoke` manage pre-auth keys.

Exit codes: 0 done, 1 the controller refused or could not be reached, 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from controller.admin_client import AdminClient, AdminError, add_target_options, resolve_target, when
from controller.credentials import (
    CredentialError,
    admin_credential_path,
    ensure_admin_credential,
    read_admin_credential,
)
from controller.settings import (
    DEFAULT_LISTEN,
    DEFAULT_MESH_CIDR,
    Settings,
    SettingsError,
    describe_settings,
    load_settings,
)
from controller.tls import TLS_DIR, ServerTls, SharedCa, TlsError, managed_tls, operator_tls, server_names
from keys.store import ensure_private_dir
from wgmesh.argparser import OneLineParser
from wgmesh.metrics_listen import MetricsListenError, bind_metrics_socket
from wgmesh.systemd import Notifier, under_systemd
from wgmesh.table import table
from wire.models import MAX_PREAUTH_EXPIRY_S, PreAuthKeyRequest

if TYPE_CHECKING:
    import uvicorn

    from controller.metrics import ControllerMetrics

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Flags named after the request fields they fill, where the names differ.
_FLAG_OF_FIELD = {"expires_in_s": "expires", "tags": "tag"}


def parse_expiry(text: str) -> int | None:
    """'never' -> None; '90', '90s', '30m', '1h', '7d' -> seconds."""
    text = text.strip().lower()
    if text == "never":
        return None
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 1h, 7d or 'never', got {text!r}")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds > MAX_PREAUTH_EXPIRY_S:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too far away: at most {MAX_PREAUTH_EXPIRY_S // 86400}d (10 years), or 'never'"
        )
    return seconds


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="Run the wgmesh controller and manage pre-auth keys.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the controller (REST API on uvicorn)",
        epilog=describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--listen", metavar="HOST:PORT", help=f"address to listen on (default {DEFAULT_LISTEN})"
    )
    serve.add_argument("--state-dir", metavar="DIR", help="where the database and admin credential live")
    serve.add_argument(
        "--db",
        metavar="URL",
        help="database URL: sqlite:///PATH (default: SQLite in the state directory) or "
        "postgresql://USER@HOST/DB for replicas sharing one PostgreSQL (the password from WGMESH_DB "
        "or the config file, never the command line)",
    )
    serve.add_argument(
        "--mesh-cidr", metavar="CIDR", help=f"tunnel address pool (default {DEFAULT_MESH_CIDR})"
    )
    serve.add_argument("--config", metavar="FILE.toml", help="settings file (flags and WGMESH_* win over it)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate chain (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    serve.add_argument(
        "--tls-san",
        metavar="NAME",
        action="append",
        help="a name or address agents reach the controller at (repeatable; managed CA)",
    )
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        default=None,
        help="serve plain HTTP (only behind a TLS-terminating proxy on this host)",
    )
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="also serve GET /metrics (Prometheus) WITHOUT a credential on this separate plain-HTTP "
        "address, e.g. 127.0.0.1:9585 (default: none; GET /metrics on the API listener always needs "
        "the admin credential)",
    )

    shown = sub.add_parser(
        "admin-credential",
        help="print the admin credential (needs read access to the state directory: root under systemd)",
    )
    shown.add_argument("--state-dir", metavar="DIR", help="the controller's state directory")
    shown.add_argument("--config", metavar="FILE.toml", help="settings file naming the state directory")

    link = sub.add_parser(
        "ui-url",
        help="print a one-time login link to the live topology page (/ui/), valid for a minute",
        description="Asks the controller for a single-use login link to its topology page and prints "
        "it; opening it in a browser starts a 12-hour session (an HttpOnly cookie). The admin "
        "credential itself never goes into the link. The page's login form takes the credential too.",
    )
    add_target_options(link)

    token = sub.add_parser("token", help="create, list and revoke pre-auth keys")
    tsub = token.add_subparsers(dest="token_cmd", required=True, metavar="COMMAND")
    create = tsub.add_parser("create", help="create a pre-auth key and print only the key")
    create.add_argument("--role", default="node", help="role of the nodes it enrolls (default node)")
    create.add_argument(
        "--tag",
        action="append",
        dest="tags",
        metavar="TAG",
        help="a policy tag of the nodes it enrolls (repeatable; default: their role is their tag)",
    )
    create.add_argument("--reusable", action="store_true", help="may enroll many hosts (default: one)")
    create.add_argument(
        "--expires",
        type=parse_expiry,
        default=3600,
        metavar="DURATION",
        help="1h, 30m, 7d or never (default 1h)",
    )
    add_target_options(create)
    listing = tsub.add_parser("list", help="list pre-auth keys")
    add_target_options(listing)
    revoke = tsub.add_parser("revoke", help="revoke a pre-auth key")
    revoke.add_argument("id", type=int, help="key id (from `token list`)")
    add_target_options(revoke)
    return parser


def main(argv: Sequence[str], prog: str = "wgmesh controller") -> int:
    args = _parser(prog).parse_args(argv)
    env = os.environ
    if args.cmd == "serve":
        return serve(args, env, prog)
    if args.cmd == "admin-credential":
        return show_admin_credential(args, env, f"{prog} admin-credential")
    if args.cmd == "ui-url":
        return ui_url(args, env, f"{prog} ui-url")
    return token(args, env, f"{prog} token {args.token_cmd}")


def serve(args: argparse.Namespace, env: Mapping[str, str], prog: str) -> int:
    # Imported here: `token` commands must not pay for FastAPI, SQLAlchemy and uvicorn.
    import uvicorn

    from controller.app import create_app
    from controller.serving import GuardedH11Protocol, raise_fd_limit
    from controller.sqlstore import SqlStore, StoreError
    from controller.store import StoreUnavailable

    def fail(message: str) -> int:
        print(f"{prog} serve: {message}", file=sys.stderr)
        return 2

    flags = {
        "listen": args.listen,
        "state_dir": args.state_dir,
        "db": args.db,
        "mesh_cidr": args.mesh_cidr,
        "config": args.config,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_san": ",".join(args.tls_san) if args.tls_san else None,
        "insecure_http": args.insecure_http,
        "metrics_listen": args.metrics_listen,
    }
    try:
        settings = load_settings(flags, env)
        ensure_private_dir(settings.state_dir)
        credential, created = ensure_admin_credential(settings.state_dir)
    except (SettingsError, CredentialError) as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"state directory: {e}")
    try:
        store = SqlStore(settings.database_url)
    except StoreError as e:
        return fail(str(e))
    raise_fd_limit()  # every connection takes a descriptor: as many as the system allows
    try:
        tls = server_tls(settings, store)
    except (TlsError, StoreUnavailable) as e:
        store.close()
        return fail(str(e))
    except OSError as e:
        store.close()
        return fail(f"state directory: {e}")
    try:
        sock = _listen_socket(settings)
    except OSError as e:
        store.close()
        return fail(f"cannot listen on {settings.listen}: {e.strerror or e}")
    metrics_sock = None
    if settings.metrics_listen is not None:
        try:
            metrics_sock = bind_metrics_socket(*settings.metrics_listen)
        except MetricsListenError as e:
            store.close()
            sock.close()
            return fail(str(e))
    try:
        app = create_app(settings, store, tls=tls)
    except StoreUnavailable as e:
        store.close()
        sock.close()
        if metrics_sock is not None:
            metrics_sock.close()
        return fail(str(e))
    if created:
        # A terminal is read by the operator who started it; a pipe or a journal is kept and copied.
        where = admin_credential_path(settings.state_dir)
        if sys.stdout.isatty() and not under_systemd(env):
            print(f"admin credential (shown once; kept in {where}): {credential}")
        else:
            print(f"admin credential created in {where}; show it with `{prog} admin-credential`")
    nodes = len(app.state.plane.nodes)
    pin = f", CA pin {tls.ca_pin}" if tls and tls.ca_pin else ""
    companions: list[tuple[uvicorn.Server, socket.socket]] = []
    if metrics_sock is not None:
        host, port = metrics_sock.getsockname()[:2]
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        print(f"metrics without credential on http://{shown}/metrics", flush=True)
        companions.append((metrics_server(app.state.metrics), metrics_sock))
    print(
        f"wgmesh controller ready on {settings.scheme}://{settings.listen} "
        f"(mesh {settings.mesh_cidr}, {nodes} nodes{pin})",
        flush=True,
    )
    ssl_files: dict[str, str] = {}
    if tls is not None:
        ssl_files = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
    # Agents keep one connection and poll again right after each answer; a busy agent may take a while,
    # so idle connections live longer than uvicorn's default 5 s.
    # A slow or silent client gets REQUEST_DEADLINE_S to send its whole request (controller.serving).
    config = uvicorn.Config(
        app,
        http=GuardedH11Protocol,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        timeout_keep_alive=75,
        **ssl_files,  # type: ignore[arg-type]
    )
    _notifying_server_class()(config, Notifier(env), companions).run(sockets=[sock])
    return 0


def server_tls(settings: Settings, shared: SharedCa | None = None) -> ServerTls | None:
    """What the server presents: the operator's files, else the managed CA's certificate for the names
    agents use (the CA the database `shared` keeps, so replicas share it); None with insecure_http."""
    if settings.insecure_http:
        return None
    if settings.tls_cert and settings.tls_key:
        return operator_tls(settings.tls_cert, settings.tls_key)
    names = server_names(settings.listen_host, settings.tls_san)
    return managed_tls(settings.state_dir / TLS_DIR, names, datetime.now(UTC), shared)


def show_admin_credential(args: argparse.Namespace, env: Mapping[str, str], prog: str) -> int:
    """Print the admin credential from the state directory; reading it takes the rights the file
    needs (0600, owned by the controller's user), so under systemd this is a root-only command."""
    flags = {"state_dir": args.state_dir, "config": args.config}
    try:
        settings = load_settings(flags, env)
        credential = read_admin_credential(admin_credential_path(settings.state_dir))
    except (SettingsError, CredentialError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    print(credential)
    return 0


def _notifying_server_class() -> type:

    from controller.serving import GuardedServer

    class NotifyingServer(GuardedServer):
        """uvicorn that tells systemd READY=1 once it serves (Type=notify), STOPPING=1 when it stops."""

        def __init__(
            self,
            config: uvicorn.Config,
            notifier: Notifier,
            companions: Sequence[tuple[uvicorn.Server, socket.socket]] = (),
        ) -> None:
            super().__init__(config)
            self.notifier = notifier
            self.companions = companions
            self._companion_tasks: list[asyncio.Task[None]] = []

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            from controller.serving import ThrottledLoopErrors, settle_gc

            asyncio.get_running_loop().set_exception_handler(ThrottledLoopErrors())
            await super().startup(sockets)
            if self.started:
                settle_gc()
                # Servers on other sockets in the same loop (the metrics listener): they share the
                # app's objects without threads, and stop with this one.
                self._companion_tasks = [
                    asyncio.create_task(server.serve(sockets=[sock])) for server, sock in self.companions
                ]
                self.notifier.ready("listening")

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            self.notifier.stopping()
            for server, _sock in self.companions:
                server.should_exit = True
            await asyncio.gather(*self._companion_tasks, return_exceptions=True)
            await super().shutdown(sockets)

    return NotifyingServer


def metrics_server(metrics: ControllerMetrics) -> uvicorn.Server:
    """The uvicorn server of the separate metrics listener; signals are the API server's to handle."""
    import uvicorn

    from controller.metrics import exposition_app

    class Companion(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(exposition_app(metrics), lifespan="off", log_level="warning", access_log=False)
    return Companion(config)


def _listen_socket(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.listen_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.listen_host, settings.listen_port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def ui_url(args: argparse.Namespace, env: Mapping[str, str], prog: str) -> int:
    try:
        client = AdminClient(resolve_target(args, env))
    except AdminError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    try:
        url, ticket = client.ui_link()
    except AdminError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        print(json.dumps({"url": url, "expires_in_s": ticket.expires_in_s}))
    else:
        print(url)
        print(f"(opens the topology page once, within {ticket.expires_in_s:.0f} s)", file=sys.stderr)
    return 0


def token(args: argparse.Namespace, env: Mapping[str, str], prog: str) -> int:
    try:
        client = AdminClient(resolve_target(args, env))
    except AdminError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    try:
        if args.token_cmd == "create":
            try:
                req = PreAuthKeyRequest(
                    role=args.role, reusable=args.reusable, expires_in_s=args.expires, tags=args.tags
                )
            except ValueError as e:
                print(f"{prog}: {_first_error(e)}", file=sys.stderr)
                return 2
            info = client.create_key(req)
            if args.json:
                print(info.model_dump_json())
            else:
                print(info.key)
        elif args.token_cmd == "list":
            keys = client.keys()
            if args.json:
                print(json.dumps([k.model_dump(mode="json") for k in keys]))
            else:
                rows = [
                    (
                        k.id,
                        k.role,
                        "-" if k.tags is None else ",".join(k.tags) or "none",
                        "yes" if k.reusable else "no",
                        k.used_count,
                        when(k.expires_at),
                        "yes" if k.revoked else "no",
                        when(k.created_at),
                    )
                    for k in keys
                ]
                print(
                    table(("ID", "ROLE", "TAGS", "REUSABLE", "USED", "EXPIRES", "REVOKED", "CREATED"), rows)
                )
        else:
            client.revoke_key(args.id)
            print(json.dumps({"revoked": args.id}) if args.json else f"revoked pre-auth key {args.id}")
    except AdminError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def _first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = [str(x) for x in first.get("loc", ())]
        field = loc[0] if loc else ""
        flag = _FLAG_OF_FIELD.get(field, field).replace("_", "-")
        return f"--{flag}: {str(first.get('msg', e)).removeprefix('Value error, ')}"
    return str(e)
