"""The enrollment nonce book, kept in the store (so replicas share it), on SQLite and PostgreSQL: a
nonce is good once and only until it expires, and a flood of nonces costs bounded space."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from controller.nonces import EnrollNonces
from controller.sqlstore import SqlStore

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    s = SqlStore(store_url)
    try:
        yield s
    finally:
        s.close()


def test_a_nonce_is_good_once_and_only_until_it_expires(store: SqlStore):
    book = EnrollNonces(store, ttl=timedelta(seconds=120))
    a, b = book.issue(NOW), book.issue(NOW)
    assert a != b
    assert book.take(a, NOW + timedelta(seconds=119))
    assert not book.take(a, NOW + timedelta(seconds=119))  # used
    assert not book.take(b, NOW + timedelta(seconds=120))  # expired
    assert not book.take("never-issued", NOW)


def test_a_nonce_from_one_book_is_taken_by_another_on_the_same_database(store: SqlStore):
    other = SqlStore(store.url)
    try:
        nonce = EnrollNonces(store).issue(NOW)
        assert EnrollNonces(other).take(nonce, NOW)
        assert not EnrollNonces(store).take(nonce, NOW)
    finally:
        other.close()


def test_a_flood_of_nonces_costs_bounded_space_and_drops_the_oldest_first(store: SqlStore):
    book = EnrollNonces(store, ttl=timedelta(seconds=120), capacity=100)
    oldest = book.issue(NOW)
    issued = [book.issue(NOW + timedelta(seconds=1)) for _ in range(150)]
    assert len(book) == 100
    assert not book.take(oldest, NOW + timedelta(seconds=2))
    assert book.take(issued[-1], NOW + timedelta(seconds=2))
    # Expired ones go at the next issue, whatever the count.
    book.issue(NOW + timedelta(seconds=200))
    assert len(book) == 1
