"""`wgmesh keys`: genkey, pubkey, genpsk, and the identity pair, reading stdin and writing stdout like `wg`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from keys.types import IdentityPrivateKey, InvalidKey, PresharedKey, WireGuardPrivateKey
from wgmesh.argparser import OneLineParser


def main(argv: Sequence[str], prog: str = "wgmesh keys") -> int:
    parser = OneLineParser(prog=prog, description="Generate and derive keys; like `wg genkey`.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("genkey", help="print a new WireGuard private key")
    sub.add_parser("pubkey", help="read a WireGuard private key on stdin, print its public key")
    sub.add_parser("genpsk", help="print a new preshared key")
    sub.add_parser("genid", help="print a new Ed25519 identity private key")
    sub.add_parser("idpub", help="read an identity private key on stdin, print its public key")
    args = parser.parse_args(argv)

    if args.cmd == "genkey":
        print(WireGuardPrivateKey.generate().base64())
    elif args.cmd == "genpsk":
        print(PresharedKey.generate().base64())
    elif args.cmd == "genid":
        print(IdentityPrivateKey.generate().base64())
    else:
        kind = WireGuardPrivateKey if args.cmd == "pubkey" else IdentityPrivateKey
        try:
            private = kind.from_base64(sys.stdin.read())
        except InvalidKey as e:
            print(f"{prog} {args.cmd}: {e}", file=sys.stderr)
            return 1
        print(private.public_key().base64())
    return 0
