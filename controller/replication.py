"""Following the other replicas: wake-ups, the periodic check, and this replica's database health.

`Follower.run()` is one asyncio task per controller. It wakes when a notification arrives or every
`CHECK_EVERY_S` (the fallback: notifications can be lost), reads the change log after the plane's
version in a worker thread (a query must never stall the event loop; a daemon thread, so a read stuck on
the database never holds up the exit), and hands the batch to
`ControlPlane.apply` on the loop under the plane's lock (a write that holds it for longer than
CHECK_EVERY_S catches up itself; the follower reads again meanwhile, so health is judged on). Each successful read proves the database is there; when
reads fail or none has succeeded for `UNHEALTHY_AFTER_S`, or one has not answered in that time, the
plane is marked unavailable: it refuses writes, /v1/health answers 503 and waiting long-polls are
released, so agents move to another replica. A cut database shows within CHECK_EVERY_S +
UNHEALTHY_AFTER_S, whatever else the replica is doing: no store call runs on the event loop.

On PostgreSQL a `Listener` thread holds its own connection (never one from the pool: a pooled
connection is handed to others and sits inside transactions, where notifications are not delivered;
transaction-pooling proxies drop LISTEN altogether, so point replicas at the server or a session
pooler) with `LISTEN wgmesh_changes`. Notifications sent while it was disconnected are lost: after
every (re)connect it wakes the follower, which catches up from the log (or reloads everything when
the log no longer reaches back to the plane's version).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from controller.control import ControlPlane
from controller.store import ChangeBatch, StoreUnavailable
from controller.workers import DaemonPool, in_daemon_thread

CHECK_EVERY_S = 0.5
# A read slower than this is a database that is away. Not less: a loaded replica's reads wait on its own
# writes and the GIL (1.5 s flipped a healthy replica on a machine at load 10).
UNHEALTHY_AFTER_S = 3.0
RECONNECT_EVERY_S = 1.0


class Follower:
    def __init__(
        self, plane: ControlPlane, on_unavailable: Callable[[], None], listen_url: str | None = None
    ) -> None:
        self.plane = plane
        self._on_unavailable = on_unavailable
        self._wake = asyncio.Event()
        self._listener: Listener | None = None
        self._listen_url = listen_url
        self._read: asyncio.Future[tuple[ChangeBatch | None, float]] | None = None
        self._began: list[float] = []
        self._reads = DaemonPool(1, "wgmesh-follow")  # one read at a time

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """End `run()` soon (it also ends when cancelled)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = False
        if self._listen_url:
            self._listener = Listener(self._listen_url, lambda: loop.call_soon_threadsafe(self._wake.set))
            self._listener.start()
        last_ok = loop.time()
        try:
            while not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_EVERY_S):
                        await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    break
                problem = await self._catch_up()
                if problem == _BUSY:
                    last_ok = loop.time()
                    self._wake.set()
                elif problem is None:
                    last_ok = loop.time()
                elif self.plane.unavailable is not None or loop.time() - last_ok >= UNHEALTHY_AFTER_S:
                    newly = self.plane.unavailable is None
                    self.plane.unavailable = problem
                    if newly:
                        self._on_unavailable()
                else:
                    await asyncio.sleep(0.2)  # one failed read is not yet an outage: again soon
                    self._wake.set()
        finally:
            self._reads.shutdown()
            if self._listener is not None:
                await in_daemon_thread(self._listener.stop, "wgmesh-listen-stop")

    async def _catch_up(self) -> str | None:
        """Read and apply what changed; None when the database answered, else why not (_BUSY: it
        answered, but a write held the view)."""
        if self._read is None:
            version = self.plane.version
            began: list[float] = []

            def timed_read() -> tuple[ChangeBatch | None, float]:
                began.append(time.monotonic())
                try:
                    return self.plane.store.changes_since(version), time.monotonic() - began[0]
                finally:
                    began.append(time.monotonic())  # ended (the loop may take a moment to see it)

            self._read, self._began = asyncio.wrap_future(self._reads.submit(timed_read)), began
        read = self._read
        while not read.done():
            await asyncio.wait({read}, timeout=UNHEALTHY_AFTER_S)
            if read.done() or len(self._began) > 1:
                continue  # it ended (while the loop was busy, its answer may still be on its way)
            # A read that hangs (a cut network) must not keep the replica looking healthy meanwhile;
            # it stays the one read under way (the next round waits on it again). Its time counts
            # from when it began: a loop that was late to start it is not a slow database.
            if self._began and time.monotonic() - self._began[0] >= UNHEALTHY_AFTER_S:
                return f"database unavailable: no answer within {UNHEALTHY_AFTER_S:g} s"
        self._read = None
        try:
            batch, took = read.result()
        except StoreUnavailable as e:
            return str(e)
        # The read's own time, not the loop's: a loop busy with a long change for a few seconds has a
        # database that answered in time.
        if took >= UNHEALTHY_AFTER_S:
            return f"database unavailable: no answer within {UNHEALTHY_AFTER_S:g} s"
        self.plane.unavailable = None
        try:
            async with asyncio.timeout(CHECK_EVERY_S):
                await self.plane.lock.acquire()
        except TimeoutError:
            return _BUSY  # a write holds the view: it catches up itself; read again (and judge health)
        try:
            await self.plane.apply(batch)  # ignored when a write moved the view on meanwhile
        except StoreUnavailable as e:  # reloading everything failed
            return str(e)
        finally:
            self.plane.lock.release()
        return None


_BUSY = "busy"


class Listener:
    """A thread on a dedicated PostgreSQL connection: `LISTEN`, and call `wake` on every notification
    and after every (re)connect."""

    def __init__(self, url: str, wake: Callable[[], object]) -> None:
        self._url = url
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wgmesh-listen", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        from controller.sqlstore import NOTIFY_CHANNEL, listen_conninfo

        conninfo, kwargs = listen_conninfo(self._url)
        while not self._stop.is_set():
            conn: Any = None
            try:
                conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                self.connected.set()
                self._wake()  # what was sent while not listening is lost: catch up
                while not self._stop.is_set():
                    for _notify in conn.notifies(timeout=1.0, stop_after=1):
                        self._wake()
            except psycopg.Error:
                self.connected.clear()
                self._stop.wait(RECONNECT_EVERY_S)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
