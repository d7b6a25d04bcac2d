"""ExpiringCache: a bounded LRU map whose entries lapse at their own deadline."""

from __future__ import annotations

import pytest

from smartgate.core.expiring_cache import ExpiringCache


def test_value_is_returned_before_its_deadline() -> None:
    cache: ExpiringCache[str] = ExpiringCache(10)
    cache.put("t", "context", deadline=100.0)
    assert cache.get("t", now=0.0) == "context"
    assert cache.get("t", now=99.999) == "context"


def test_value_lapses_at_its_deadline() -> None:
    cache: ExpiringCache[str] = ExpiringCache(10)
    cache.put("t", "context", deadline=100.0)
    assert cache.get("t", now=100.0) is None


def test_lapsed_value_is_removed() -> None:
    cache: ExpiringCache[str] = ExpiringCache(10)
    cache.put("t", "context", deadline=100.0)
    assert cache.get("t", now=150.0) is None
    assert len(cache) == 0
    # Once removed it stays gone, even if asked with an earlier time.
    assert cache.get("t", now=0.0) is None


def test_missing_key_gives_none() -> None:
    cache: ExpiringCache[str] = ExpiringCache(10)
    assert cache.get("absent", now=0.0) is None


def test_deadline_in_the_past_is_never_returned() -> None:
    cache: ExpiringCache[str] = ExpiringCache(10)
    cache.put("t", "context", deadline=5.0)
    assert cache.get("t", now=10.0) is None


def test_each_entry_has_its_own_deadline() -> None:
    cache: ExpiringCache[str] = ExpiringCache(10)
    cache.put("short", "a", deadline=10.0)
    cache.put("long", "b", deadline=1000.0)
    assert cache.get("short", now=50.0) is None
    assert cache.get("long", now=50.0) == "b"


def test_put_replaces_value_and_deadline() -> None:
    cache: ExpiringCache[str] = ExpiringCache(10)
    cache.put("t", "old", deadline=1000.0)
    cache.put("t", "new", deadline=10.0)
    assert len(cache) == 1
    assert cache.get("t", now=5.0) == "new"
    assert cache.get("t", now=10.0) is None


def test_cache_is_bounded_and_evicts_the_oldest_entry() -> None:
    cache: ExpiringCache[int] = ExpiringCache(3)
    for i in range(5):
        cache.put(f"t{i}", i, deadline=1000.0)
    assert len(cache) == 3
    assert cache.get("t0", now=0.0) is None
    assert cache.get("t1", now=0.0) is None
    assert [cache.get(f"t{i}", now=0.0) for i in (2, 3, 4)] == [2, 3, 4]


def test_cache_never_grows_past_its_bound() -> None:
    cache: ExpiringCache[int] = ExpiringCache(100)
    for i in range(10_000):
        cache.put(f"t{i}", i, deadline=1e12)
        assert len(cache) <= 100
    assert len(cache) == 100


def test_get_makes_an_entry_most_recently_used() -> None:
    cache: ExpiringCache[int] = ExpiringCache(3)
    for i in range(3):
        cache.put(f"t{i}", i, deadline=1000.0)
    assert cache.get("t0", now=0.0) == 0  # t1 is now the least recently used
    cache.put("t3", 3, deadline=1000.0)
    assert cache.get("t1", now=0.0) is None
    assert cache.get("t0", now=0.0) == 0
    assert cache.get("t2", now=0.0) == 2


def test_put_of_an_existing_key_makes_it_most_recently_used() -> None:
    cache: ExpiringCache[int] = ExpiringCache(2)
    cache.put("a", 1, deadline=1000.0)
    cache.put("b", 2, deadline=1000.0)
    cache.put("a", 10, deadline=1000.0)
    cache.put("c", 3, deadline=1000.0)
    assert cache.get("b", now=0.0) is None
    assert cache.get("a", now=0.0) == 10
    assert cache.get("c", now=0.0) == 3


def test_failed_get_of_a_lapsed_entry_does_not_evict_others() -> None:
    cache: ExpiringCache[int] = ExpiringCache(2)
    cache.put("old", 1, deadline=10.0)
    cache.put("live", 2, deadline=1000.0)
    assert cache.get("old", now=20.0) is None
    cache.put("new", 3, deadline=1000.0)
    assert cache.get("live", now=20.0) == 2
    assert cache.get("new", now=20.0) == 3


@pytest.mark.parametrize("size", [0, -1])
def test_non_positive_size_disables_the_cache(size: int) -> None:
    cache: ExpiringCache[str] = ExpiringCache(size)
    cache.put("t", "context", deadline=1000.0)
    assert len(cache) == 0
    assert cache.get("t", now=0.0) is None


def test_size_one_keeps_only_the_last_entry() -> None:
    cache: ExpiringCache[str] = ExpiringCache(1)
    cache.put("a", "1", deadline=1000.0)
    cache.put("b", "2", deadline=1000.0)
    assert cache.get("a", now=0.0) is None
    assert cache.get("b", now=0.0) == "2"
