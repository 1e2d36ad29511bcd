"""The long-poll notifier (controller/push.py): a poll whose client went away is cancelled even when its
map changes at that very moment (Python 3.11's asyncio.wait_for would lose that cancellation and let the
request run on: a stopped agent's poll that never ends)."""

from __future__ import annotations

import asyncio

import pytest

from controller.push import MapNotifier


async def test_a_cancelled_wait_stays_cancelled_when_the_map_changes_at_once():
    notifier = MapNotifier()
    waiting = asyncio.create_task(notifier.wait(7, timeout=30))
    await asyncio.sleep(0)
    assert notifier.waiting() == 1
    notifier.notify([7])
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert notifier.waiting() == 0


async def test_a_wait_wakes_on_notify_and_times_out_without():
    notifier = MapNotifier()
    waiting = asyncio.create_task(notifier.wait(1, timeout=30))
    await asyncio.sleep(0)
    notifier.notify([1])
    assert await waiting is True
    assert await notifier.wait(2, timeout=0.01) is False
