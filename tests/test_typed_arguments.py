"""Bad arguments at the public entry points are InvalidArgumentErrors (or another typed error) with short messages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dpdpu
from dpdpu import Runtime, compute, errors, offload
from dpdpu.kv import KvStore, ModelShape
from dpdpu.runtime.channel import Channel
from dpdpu.runtime.runtime import python_task

SHAPE = ModelShape("tiny", layers=1, kv_heads=1, head_dim=8)

BLOB = compute.compress(b"dpdpu " * 200)
HUGE_TEXT = "x" * 1_000_000
HUGE_INT = 10**5000  # too many digits for str(): a message quoting it would raise ValueError


@pytest.fixture(scope="module")
def rt() -> Iterator[Runtime]:
    with Runtime("bluefield3", workers=1) as runtime:
        yield runtime


def _decompress(**kw: Any) -> Callable[[Runtime], Any]:
    return lambda rt: rt.submit(compute.decompress, BLOB, **kw).result()


CASES: dict[str, tuple[Callable[[Runtime], Any], type[errors.DpdpuError]]] = {
    "output_size 2**63": (_decompress(output_size=2**63), errors.InvalidArgumentError),
    "output_size -1": (_decompress(output_size=-1), errors.InvalidArgumentError),
    "output_size huge int": (_decompress(output_size=HUGE_INT), errors.InvalidArgumentError),
    "output_size 1 TiB": (_decompress(output_size=1 << 40), errors.DpdpuError),
    "lz4 output_size 1 TiB": (
        lambda rt: rt.submit(compute.decompress, compute.compress(b"x", "lz4"), "lz4", output_size=1 << 40).result(),
        errors.DpdpuError,
    ),
    "engine 3": (_decompress(engine=3), errors.InvalidArgumentError),
    "engine list": (_decompress(engine=[]), errors.InvalidArgumentError),
    "engine huge": (_decompress(engine=HUGE_TEXT), errors.InvalidArgumentError),
    "fallback str": (_decompress(fallback="no"), errors.InvalidArgumentError),
    "codec int": (lambda rt: compute.compress(b"x", 3), errors.InvalidArgumentError),
    "codec huge": (lambda rt: compute.compress(b"x", HUGE_TEXT), errors.UnknownOpError),
    "level huge": (lambda rt: compute.compress(b"x", "zstd", HUGE_INT), errors.InvalidArgumentError),
    "crc32c value huge": (lambda rt: compute.crc32c(b"x", HUGE_INT), errors.InvalidArgumentError),
    "memcpy engine 3": (lambda rt: compute.memcpy(bytearray(4), b"abcd", engine=3), errors.InvalidArgumentError),
    "run engine 3": (lambda rt: rt.run(python_task(len, (b"",), {}), engine=3), errors.InvalidArgumentError),
    "run policy 3": (lambda rt: rt.run(python_task(len, (b"",), {}), policy=3), errors.InvalidArgumentError),
    "offload engine 3": (lambda rt: offload(engine=3)(len), errors.InvalidArgumentError),  # type: ignore[call-overload]
    "offload engine list": (lambda rt: offload(engine=[])(len), errors.InvalidArgumentError),  # type: ignore[call-overload]
    "offload fallback": (lambda rt: offload(fallback="yes")(len), errors.InvalidArgumentError),  # type: ignore[call-overload]
    "offload name": (lambda rt: offload(name=3)(len), errors.InvalidArgumentError),  # type: ignore[call-overload]
    "runtime policy list": (lambda rt: Runtime(policy=[]), errors.InvalidArgumentError),  # type: ignore[arg-type]
    "runtime queue_depth -1": (lambda rt: Runtime("host", queue_depth=-1), errors.InvalidArgumentError),
    "runtime queue_depth 2**70": (lambda rt: Runtime("host", queue_depth=2**70), errors.InvalidArgumentError),
    "runtime queue_depth str": (lambda rt: Runtime("host", queue_depth="8"), errors.InvalidArgumentError),  # type: ignore[arg-type]
    "pinned huge": (lambda rt: rt.pinned(HUGE_TEXT).__enter__(), errors.InvalidArgumentError),
    "channel name huge": (lambda rt: Channel.create(HUGE_TEXT), errors.InvalidArgumentError),
    "channel timeout huge": (lambda rt: Channel.local()[1].recv(timeout=-HUGE_INT), errors.InvalidArgumentError),
    "kv codec huge": (lambda rt: KvStore(SHAPE, disk_codec=HUGE_TEXT, device="host"), errors.InvalidArgumentError),
    "kv policy huge": (lambda rt: KvStore(SHAPE, policy=HUGE_TEXT, device="host"), errors.InvalidArgumentError),
    "kv model shape huge": (lambda rt: ModelShape("m", 1, 1, -HUGE_INT), errors.InvalidArgumentError),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_arguments_raise_typed_errors_with_short_messages(rt: Runtime, case: str) -> None:
    call, expected = CASES[case]
    with pytest.raises(expected) as info:
        call(rt)
    assert len(str(info.value)) < 400, str(info.value)[:1000]


def test_the_runtime_keeps_working_after_bad_arguments(rt: Runtime) -> None:
    for case in ("output_size 2**63", "engine 3", "output_size 1 TiB"):
        with pytest.raises(errors.DpdpuError):
            CASES[case][0](rt)
    assert rt.submit(compute.decompress, BLOB).result() == b"dpdpu " * 200
    assert dpdpu.compute.decompress(BLOB, output_size=1200) == b"dpdpu " * 200
