"""The requests a node is waiting on a reply for: which peer each was sent to and the future its caller
awaits. A reply settles its request only when it comes from that peer and carries the reply flag;
everything else is counted as unexpected.

Rules:
- A request leaves the table when its caller stops waiting (reply, timeout, cancellation): `forget`.
- When a peer leaves the directory, its requests fail at once (RequestFailed), not at their timeout;
  when the node closes, all of them fail (NodeClosed).
"""

from __future__ import annotations

import asyncio
from typing import Any

from p2p.core.admission import Reply
from p2p.errors import RequestFailed


class PendingRequests:
    def __init__(self) -> None:
        self._waiting: dict[bytes, tuple[int, asyncio.Future[Any]]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._waiting

    def expect(self, message_id: bytes, peer: int) -> asyncio.Future[Any]:
        """The future that `settle` completes with the reply from `peer` to request `message_id`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = (peer, future)
        return future

    def forget(self, message_id: bytes) -> None:
        self._waiting.pop(message_id, None)

    def awaits(self, message_id: bytes, peer: int) -> bool:
        """True when request `message_id` waits for a reply from `peer`."""
        waiting = self._waiting.get(message_id)
        return waiting is not None and waiting[0] == peer

    def settle(self, reply: Reply, answered: str) -> None:
        """Complete the request with the reply's data, or with RequestFailed("`answered`: error") when
        the peer answered with an error. A request already completed (or forgotten) is left as it is."""
        waiting = self._waiting.get(reply.reply_to)
        if waiting is None or waiting[1].done():
            return
        if reply.error is not None:
            waiting[1].set_exception(RequestFailed(f"{answered}: {reply.error}"))
        else:
            waiting[1].set_result(reply.data)

    def fail_peer(self, peer: int, failure: Exception) -> None:
        """Fail every request waiting on `peer`."""
        for message_id, (to, future) in list(self._waiting.items()):
            if to == peer:
                if not future.done():
                    future.set_exception(failure)
                del self._waiting[message_id]

    def fail_all(self, failure: Exception) -> None:
        for _, future in self._waiting.values():
            if not future.done():
                future.set_exception(failure)
        self._waiting.clear()
