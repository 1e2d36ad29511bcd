"""The one-line cause of a failed network call, for the agent's and the admin commands' messages.

httpx wraps the real error several levels deep (httpx -> httpcore -> ssl/socket). The innermost
cause says it best, but each kind needs its own words: a DNS failure or a TLS failure carries an error
code that is not an errno, so `os.strerror()` on it reads "Unknown error -3" or "Operation not
permitted" (SSL error 1), which misleads.
"""

from __future__ import annotations

import os
import socket
import ssl


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in seen:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return seen


def describe(error: BaseException) -> str:
    """What went wrong, in words an operator can act on."""
    chain = _chain(error)
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            return f"the name does not resolve (DNS: {cause.strerror or cause})"
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = str(cause.verify_message or cause.reason)
            if "mismatch" in why:  # the URL names the controller by a name its certificate lacks
                why += "; give the controller that name with --tls-san, or use a name it has"
            return f"the controller's TLS certificate is not trusted ({why})"
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or str(cause)
            if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
                return f"TLS handshake failed ({reason}): is the controller serving plain http:// there?"
            return f"TLS handshake failed ({reason})"
    for cause in chain:
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return os.strerror(cause.errno)
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return str(error) or type(error).__name__
