"""Futures returned by the runtime: ``concurrent.futures`` compatible and awaitable."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .placement import Placement

__all__ = ["TaskFuture"]


class TaskFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The result of a submitted task.

    Works with ``concurrent.futures.wait``/``as_completed``, callbacks and
    ``await``.  :attr:`placement` tells where the task ran, why, and its wall
    and modeled device times (also shown by ``Runtime.explain``).

    ``result()`` on an unfinished task waits inside the C core for that very
    task (without the GIL) instead of hopping through a helper thread.
    """

    def __init__(self) -> None:
        super().__init__()
        # A submitted task cannot be withdrawn from an engine queue: it is
        # running from the start, so cancel() returns False.
        self._state = "RUNNING"
        self.placement: Placement | None = None
        self._waiter: Callable[[TaskFuture, float | None], float | None] | None = None
        self._observer: Callable[[TaskFuture], None] | None = None

    def _wait(self, timeout: float | None) -> float | None:
        """Let the device wait natively; return what is left of ``timeout``."""
        waiter = self._waiter
        if waiter is None or self._state == "FINISHED":
            return timeout
        return waiter(self, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The task's value; re-raises its error; TimeoutError after ``timeout`` seconds."""
        if self._state != "FINISHED":
            timeout = self._wait(timeout)
        # Settled for good needs no condition lock (the common case).
        settled = self._state == "FINISHED" and self._exception is None
        value = self._result if settled else super().result(timeout)
        observer = self._observer
        if observer is not None:
            observer(self)
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's error (None if it succeeded)."""
        return super().exception(self._wait(timeout))

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()
