"""Eviction order of the KV tier's policies on hand-worked sequences."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from dpdpu import errors
from dpdpu.kv.policies import LruPolicy, S3FifoPolicy, make_policy


def everything(key: Hashable) -> bool:
    return True


def test_lru_evicts_least_recently_used_and_skips_pinned() -> None:
    p = LruPolicy()
    for k in "abcde":
        p.insert(k, 1)
    p.hit("a")
    p.hit("c")
    assert p.order() == ["b", "d", "e", "a", "c"]
    assert p.victim(everything) == "b"
    assert p.victim(lambda k: k != "d") == "e"  # d is pinned
    assert p.victim(everything) == "d"
    p.remove("a")
    assert p.victim(everything) == "c"
    assert p.victim(everything) is None and len(p) == 0


def test_s3fifo_hand_worked_sequence() -> None:
    # capacity 10 bytes, small queue 20% (2 bytes), every key 1 byte
    p = S3FifoPolicy(10, small_ratio=0.2)
    for k in (1, 2, 3, 4, 5):
        p.insert(k, 1)
    p.hit(1)
    p.hit(3)
    # small holds 5 >= 2 bytes: 1 was read -> main; 2 was not -> evicted, remembered as a ghost
    assert p.victim(everything) == 2
    assert p.queues() == {"small": [3, 4, 5], "main": [1], "ghost": [2]}
    # small still 3 >= 2: 3 was read -> main; 4 evicted
    assert p.victim(everything) == 4
    assert p.queues() == {"small": [5], "main": [1, 3], "ghost": [2, 4]}
    # small holds 1 < 2 bytes: evict from main; 1's count was reset when it moved, so it goes
    assert p.victim(everything) == 1
    # 2 comes back while a ghost: straight into main
    p.insert(2, 1)
    assert p.queues()["main"] == [3, 2] and 2 not in p.queues()["ghost"]
    # 3 read again: reinserted at the head with its count decremented; 2 (count 0) goes
    p.hit(3)
    assert p.victim(everything) == 2
    assert p.queues() == {"small": [5], "main": [3], "ghost": [4]}


def test_s3fifo_differs_from_lru_on_scans() -> None:
    # A key read twice survives a scan of one-hit keys under S3-FIFO but not under LRU.
    s3, lru = S3FifoPolicy(4, small_ratio=0.25), LruPolicy()
    for p in (s3, lru):
        p.insert("hot", 1)
        p.hit("hot")
    evicted: dict[str, list[Hashable]] = {"s3": [], "lru": []}
    for i in range(6):
        for name, p in (("s3", s3), ("lru", lru)):
            p.insert(f"scan{i}", 1)
            if len(p) > 4:
                evicted[name].append(p.victim(everything))
    assert "hot" not in evicted["s3"]
    assert evicted["lru"][0] == "hot"


def test_s3fifo_pinned_keys_are_requeued_and_all_pinned_gives_none() -> None:
    p = S3FifoPolicy(10, small_ratio=0.5)
    for k in "abc":
        p.insert(k, 1)
    assert p.victim(lambda k: k != "a") == "b"
    assert p.victim(lambda k: False) is None
    assert sorted(p) == ["a", "c"]  # type: ignore[type-var]


def test_make_policy() -> None:
    assert isinstance(make_policy("lru", 1), LruPolicy)
    assert isinstance(make_policy("s3fifo", 1), S3FifoPolicy)
    with pytest.raises(errors.InvalidArgumentError):
        make_policy("arc", 1)
