"""``@offload``: run a Python function as a task on the runtime's devices."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .. import errors
from .emulator import in_worker
from .future import TaskFuture
from .placement import FALLBACK_CHAIN

__all__ = ["OffloadFunction", "offload"]

P = ParamSpec("P")
R = TypeVar("R")


class OffloadFunction(Generic[P, R]):
    """A Python function that runs as a dpdpu task.

    Calling it runs it on the current runtime (see
    :func:`dpdpu.current_runtime`) and returns its value; :meth:`submit`
    returns a future instead.  Called from inside another task it runs
    inline, on the same engine.
    """

    def __init__(self, fn: Callable[P, R], *, engine: str | None, fallback: bool, name: str | None) -> None:
        _check_options(engine, fallback, name)
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self.__dpdpu_offload__ = {"engine": engine, "fallback": fallback, "name": name or fn.__qualname__}

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if in_worker():
            return self.__wrapped__(*args, **kwargs)
        return self.submit(*args, **kwargs).result()  # type: ignore[no-any-return]

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture:
        """Submit to the current runtime and return the future."""
        from .runtime import current_runtime

        return current_runtime().submit(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<offload {self.__dpdpu_offload__['name']} engine={self.__dpdpu_offload__['engine']}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        # Bind like a function so @offload works on methods.
        if obj is None:
            return self
        return functools.partial(self.__call__, obj)


def _check_options(engine: Any, fallback: Any, name: Any) -> None:
    if engine is not None and (not isinstance(engine, str) or engine not in FALLBACK_CHAIN):
        raise errors.InvalidArgumentError(
            f"unknown engine kind {errors.shown(engine)}; choose one of {', '.join(FALLBACK_CHAIN)}"
        )
    if not isinstance(fallback, bool):
        raise errors.InvalidArgumentError(f"fallback must be True or False, not {errors.shown(fallback)}")
    if name is not None and not isinstance(name, str):
        raise errors.InvalidArgumentError(f"name must be a string or None, not {type(name).__name__}")


@overload
def offload(fn: Callable[P, R], /) -> OffloadFunction[P, R]: ...


@overload
def offload(
    *, engine: str | None = None, fallback: bool = True, name: str | None = None
) -> Callable[[Callable[P, R]], OffloadFunction[P, R]]: ...


def offload(
    fn: Callable[P, R] | None = None,
    /,
    *,
    engine: str | None = None,
    fallback: bool = True,
    name: str | None = None,
) -> Any:
    """Make a Python function a dpdpu task; works as ``@offload`` and ``@offload(...)``.

    Args:
        engine: kind of engine to run on (``"arm"`` or ``"host"``); default:
            placed by the runtime, on the DPU's Arm cores when the device has
            them.
        fallback: if the chosen engine cannot run it, fall back to the next
            (Arm cores, then host); False raises UnsupportedOpError instead.
        name: name shown in explanations and statistics.
    """

    _check_options(engine, fallback, name)

    def wrap(f: Callable[P, R]) -> OffloadFunction[P, R]:
        if not callable(f):
            raise errors.InvalidArgumentError(f"@offload needs a function, not {type(f).__name__}")
        return OffloadFunction(f, engine=engine, fallback=fallback, name=name)

    return wrap if fn is None else wrap(fn)
