"""Worker threads that never hold up the controller's exit.

`concurrent.futures.ThreadPoolExecutor` (and so `asyncio.to_thread`) joins its workers when the
interpreter exits, however its pool was shut down: one call stuck on a database that stopped
answering (a SIGSTOPped server, a network that drops everything) then keeps `controller serve` from
ever exiting on SIGTERM. `DaemonPool` runs calls in daemon threads instead: at shutdown the caller
waits for them up to a deadline of its own and leaves the stuck ones behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_Item = tuple["concurrent.futures.Future[object]", Callable[[], object]]


class DaemonPool:
    """At most `workers` daemon threads running the calls submitted, in the order given (with one
    worker: one after the other)."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, call: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: shut down")
            self._queue.put((future, call))  # type: ignore[arg-type]
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def shutdown(self) -> None:
        """Take no more calls, cancel those not started; the idle workers end, busy ones when done."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as e:
                    future.set_exception(e)
                else:
                    future.set_result(result)
                del future, call, item
            self._idle.release()


def in_daemon_thread(call: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `call` in a daemon thread of its own; the result, to await on the running loop."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(call())
            except BaseException as e:
                future.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return asyncio.wrap_future(future)
