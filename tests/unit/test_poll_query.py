"""The plain poll query controller.poll_route serves itself: the form agents send is read as FastAPI
would read it; anything else is left to the app (None), which says what is wrong with it."""

from __future__ import annotations

import pytest

from controller.poll_route import MAX_ID, plain_poll


@pytest.mark.parametrize(
    ("query", "poll"),
    [
        (b"", (0, 0.0, False, None)),
        (b"since=7&timeout=60&delta=1", (7, 60.0, True, None)),
        (b"since=7&timeout=2.5&delta=false&policy=3", (7, 2.5, False, 3)),
        (b"delta=true&since=007", (7, 0.0, True, None)),
        (b"since=12&other=x&&", (12, 0.0, False, None)),  # unknown names are ignored, as by FastAPI
        (b"since=%d" % MAX_ID, (MAX_ID, 0.0, False, None)),
    ],
)
def test_the_form_agents_send_is_read(query: bytes, poll: tuple[int, float, bool, int | None]):
    assert plain_poll(query) == poll


@pytest.mark.parametrize(
    "query",
    [
        b"since=-1",
        b"since=",
        b"since",
        b"since=1e3",
        b"since=%d" % (MAX_ID + 1),
        b"since=%35",
        b"since=1&since=2",
        b"sinc%65=1",
        b"timeout=301",
        b"timeout=1e1",
        b"timeout=nope",
        b"delta=yes",
        b"delta=",
        b"policy=x",
        "since=\u0663".encode(),  # an Arabic-Indic digit: pydantic's to judge
    ],
)
def test_any_other_form_is_left_to_the_app(query: bytes):
    assert plain_poll(query) is None
