"""Eviction policies of the KV-cache tiers: LRU and S3-FIFO, sized in bytes.

A policy only orders keys; the tier owns the data.  The tier calls
:meth:`insert` for a new entry, :meth:`hit` when one is read, :meth:`remove`
when it drops one itself, and :meth:`victim` when it needs room: the policy
picks the next key to evict among those ``evictable`` accepts (pinned chunks
are not), forgets it and returns it, or returns ``None`` when nothing can go.

**S3-FIFO** (Yang et al., SOSP 2023) keeps three FIFO queues: a small one
(10% of the bytes by default) where new keys land, a main one, and a ghost
queue of keys recently evicted from the small queue.  Evicting from the small
queue, a key read at least once since it was inserted moves to the main queue;
otherwise it is evicted and remembered in the ghost queue.  Evicting from the
main queue, a key with a non-zero read count goes back to the head with its
count decremented (counts saturate at 3); otherwise it is evicted.  A key
inserted while in the ghost queue goes straight to the main queue.  The small
queue is evicted from while it holds at least its share of the bytes (or the
main queue is empty).  Pinned keys met on the way go back to the head of
their queue, their count untouched.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Protocol

from .. import errors

__all__ = ["POLICIES", "EvictionPolicy", "LruPolicy", "S3FifoPolicy", "make_policy"]


class EvictionPolicy(Protocol):
    """What a tier needs from an eviction policy."""

    name: str

    def insert(self, key: Hashable, size: int) -> None:
        """Track a new key of ``size`` bytes."""

    def hit(self, key: Hashable) -> None:
        """Note a read of ``key``."""

    def remove(self, key: Hashable) -> None:
        """Forget ``key`` (no-op if unknown)."""

    def victim(self, evictable: Callable[[Hashable], bool]) -> Hashable | None:
        """Choose, forget and return the next key to evict, or None."""

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...


class LruPolicy:
    """Least recently used first."""

    name = "lru"

    def __init__(self, capacity: int = 0) -> None:
        self._order: OrderedDict[Hashable, int] = OrderedDict()

    def insert(self, key: Hashable, size: int) -> None:
        """Track ``key`` as the most recently used."""
        self._order[key] = size
        self._order.move_to_end(key)

    def hit(self, key: Hashable) -> None:
        """Make ``key`` the most recently used."""
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        """Forget ``key``."""
        self._order.pop(key, None)

    def victim(self, evictable: Callable[[Hashable], bool]) -> Hashable | None:
        """The least recently used evictable key."""
        for key in self._order:
            if evictable(key):
                del self._order[key]
                return key
        return None

    def order(self) -> list[Hashable]:
        """Keys from the next victim to the most recently used."""
        return list(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)


class S3FifoPolicy:
    """S3-FIFO: a small probationary FIFO, a main FIFO with reinsertion, and a ghost FIFO (see the module docstring)."""

    name = "s3fifo"
    MAX_FREQ = 3

    def __init__(self, capacity: int, small_ratio: float = 0.1) -> None:
        self.capacity = max(1, int(capacity))
        self.small_ratio = small_ratio
        self._small: OrderedDict[Hashable, int] = OrderedDict()  # oldest first
        self._main: OrderedDict[Hashable, int] = OrderedDict()
        self._ghost: OrderedDict[Hashable, int] = OrderedDict()
        self._freq: dict[Hashable, int] = {}
        self._small_bytes = 0
        self._ghost_bytes = 0

    def insert(self, key: Hashable, size: int) -> None:
        """A new key: into the main queue if it is a ghost, else into the small queue."""
        self.remove(key)
        self._freq[key] = 0
        if key in self._ghost:
            self._ghost_bytes -= self._ghost.pop(key)
            self._main[key] = size
        else:
            self._small[key] = size
            self._small_bytes += size

    def hit(self, key: Hashable) -> None:
        """Count a read (saturating)."""
        if key in self._freq:
            self._freq[key] = min(self.MAX_FREQ, self._freq[key] + 1)

    def remove(self, key: Hashable) -> None:
        """Forget ``key`` (ghosts stay: they are history, not data)."""
        if key in self._small:
            self._small_bytes -= self._small.pop(key)
        self._main.pop(key, None)
        self._freq.pop(key, None)

    def _remember(self, key: Hashable, size: int) -> None:
        self._ghost[key] = size
        self._ghost_bytes += size
        limit = self.capacity * (1 - self.small_ratio)
        while self._ghost_bytes > limit and len(self._ghost) > 1:
            _, old = self._ghost.popitem(last=False)
            self._ghost_bytes -= old

    def victim(self, evictable: Callable[[Hashable], bool]) -> Hashable | None:
        """The next key S3-FIFO evicts, skipping (and requeueing) keys ``evictable`` refuses."""
        # Every pass either evicts, moves a key small->main, decrements a count or requeues a
        # pinned key; bounded so that a queue of only pinned keys ends with None.
        budget = (self.MAX_FREQ + 2) * (len(self._small) + len(self._main)) + 2
        for _ in range(budget):
            if self._small and (self._small_bytes >= self.small_ratio * self.capacity or not self._main):
                key, size = self._small.popitem(last=False)
                self._small_bytes -= size
                if not evictable(key):
                    self._small[key] = size
                    self._small_bytes += size
                elif self._freq.get(key, 0) >= 1:
                    self._freq[key] = 0
                    self._main[key] = size
                else:
                    self._freq.pop(key, None)
                    self._remember(key, size)
                    return key
            elif self._main:
                key, size = self._main.popitem(last=False)
                freq = self._freq.get(key, 0)
                if freq > 0 and evictable(key):
                    self._freq[key] = freq - 1
                    self._main[key] = size
                elif not evictable(key):
                    self._main[key] = size
                else:
                    self._freq.pop(key, None)
                    return key
            else:
                return None
        return None

    def queues(self) -> dict[str, list[Hashable]]:
        """The small, main and ghost queues, oldest first (for tests and inspection)."""
        return {"small": list(self._small), "main": list(self._main), "ghost": list(self._ghost)}

    def __contains__(self, key: object) -> bool:
        return key in self._small or key in self._main

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def __iter__(self) -> Iterator[Hashable]:
        yield from self._small
        yield from self._main


POLICIES = ("lru", "s3fifo")


def make_policy(name: str, capacity: int) -> LruPolicy | S3FifoPolicy:
    """A policy by name (``"lru"`` or ``"s3fifo"``) for a tier of ``capacity`` bytes."""
    if name == "lru":
        return LruPolicy(capacity)
    if name in ("s3fifo", "s3-fifo"):
        return S3FifoPolicy(capacity)
    raise errors.InvalidArgumentError(
        f"unknown eviction policy {errors.shown(name)}; choose one of {', '.join(POLICIES)}"
    )
