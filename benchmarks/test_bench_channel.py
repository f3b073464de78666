"""The host<->DPU channel between two processes vs ``multiprocessing.Pipe`` and memcpy.

- ``channel-64B``: 100k messages of 64 bytes from this process to a spawned
  one, timed until the receiver has taken the last message and said so.  The
  baseline sends each message with ``Connection.send_bytes``; the channel sends
  the list with ``send_many`` (batched: one index store and at most one
  wake-up per batch) and the receiver takes them with ``recv_many``, each
  message becoming its own ``bytes`` object on both sides.
- ``channel-1MiB``: 256 payloads of 1 MiB through a 4 MiB ring (``send_bulk``
  here, ``recv_into`` a preallocated buffer there: two copies, on two cores)
  against one thread copying the same bytes with ``numpy.copyto`` into a
  preallocated buffer.

Run: ``pytest benchmarks/test_bench_channel.py``.  ``DPDPU_BENCH_MSGS`` sets
the number of small messages, ``DPDPU_BENCH_BULK_MSGS`` the number of 1 MiB
payloads.  Both sides need a core of their own: on a busy machine the ratios
drop.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest

from dpdpu.network import ChannelPair

N_MSGS = int(os.environ.get("DPDPU_BENCH_MSGS", "100000"))
N_BULK = int(os.environ.get("DPDPU_BENCH_BULK_MSGS", "256"))
SMALL = 64
BULK = 1 << 20
RING = 4 << 20

_spawn = multiprocessing.get_context("spawn")


def _pipe_agent(conn: Connection, count: int) -> None:
    while conn.recv_bytes() == b"go":
        recv = conn.recv_bytes
        for _ in range(count):
            recv()
        conn.send_bytes(b"done")


def _channel_agent(name: str, count: int, bulk: bool) -> None:
    pair = ChannelPair.attach(name, timeout=30)
    buf = bytearray(BULK)
    with pair:
        while pair.recv() == b"go":
            got = 0
            if bulk:
                while got < count:
                    pair.recv_into(buf)
                    got += 1
            else:
                while got < count:
                    got += len(pair.recv_many(4096))
            pair.send(b"done")


@pytest.fixture(scope="module")
def messages() -> list[bytes]:
    return [os.urandom(SMALL) for _ in range(N_MSGS)]


@pytest.fixture(scope="module")
def payload() -> np.ndarray[Any, np.dtype[np.uint8]]:
    return np.frombuffer(os.urandom(BULK), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipe() -> Iterator[Connection]:
    here, there = _spawn.Pipe()
    proc = _spawn.Process(target=_pipe_agent, args=(there, N_MSGS))
    proc.start()
    yield here
    here.send_bytes(b"stop")
    proc.join(30)
    here.close()
    there.close()


def _channel(count: int, bulk: bool) -> Iterator[ChannelPair]:
    pair = ChannelPair.create(capacity=RING)
    proc = _spawn.Process(target=_channel_agent, args=(pair.name, count, bulk))
    proc.start()
    pair.send(b"go")  # a first round, which also waits for the agent to start
    if bulk:
        for _ in range(count):
            pair.send_bulk(bytes(BULK))
    else:
        pair.send_many([b"x"] * count)
    assert pair.recv(timeout=60) == b"done"
    yield pair
    pair.send(b"stop")
    proc.join(30)
    pair.close()


@pytest.fixture(scope="module")
def small_channel() -> Iterator[ChannelPair]:
    yield from _channel(N_MSGS, bulk=False)


@pytest.fixture(scope="module")
def bulk_channel() -> Iterator[ChannelPair]:
    yield from _channel(N_BULK, bulk=True)


@pytest.mark.benchmark(group="channel-64B")
def test_pipe_64B(benchmark: Any, pipe: Connection, messages: list[bytes]) -> None:
    benchmark.extra_info["role"] = "baseline"

    def run() -> None:
        pipe.send_bytes(b"go")
        send = pipe.send_bytes
        for m in messages:
            send(m)
        assert pipe.recv_bytes() == b"done"

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["messages_per_s"] = N_MSGS / benchmark.stats.stats.median


@pytest.mark.benchmark(group="channel-64B")
def test_channel_64B(benchmark: Any, small_channel: ChannelPair, messages: list[bytes]) -> None:
    benchmark.extra_info["goal"] = 10.0

    def run() -> None:
        small_channel.send(b"go")
        small_channel.send_many(messages)
        assert small_channel.recv() == b"done"

    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["messages_per_s"] = N_MSGS / benchmark.stats.stats.median
    stats = small_channel.stats()["tx"]
    benchmark.extra_info["batches"] = stats.batches
    benchmark.extra_info["waits"] = stats.waits


@pytest.mark.benchmark(group="channel-1MiB")
def test_memcpy_1MiB(benchmark: Any, payload: np.ndarray[Any, np.dtype[np.uint8]]) -> None:
    benchmark.extra_info["role"] = "baseline"
    dst = np.empty_like(payload)

    def run() -> None:
        for _ in range(N_BULK):
            np.copyto(dst, payload)

    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    assert dst.tobytes() == payload.tobytes()
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB_per_s"] = N_BULK * BULK / benchmark.stats.stats.median / 1e9


@pytest.mark.benchmark(group="channel-1MiB")
def test_channel_1MiB(benchmark: Any, bulk_channel: ChannelPair, payload: np.ndarray[Any, np.dtype[np.uint8]]) -> None:
    benchmark.extra_info["goal"] = 0.5
    data = payload.tobytes()

    def run() -> None:
        bulk_channel.send(b"go")
        for _ in range(N_BULK):
            bulk_channel.send_bulk(data)
        assert bulk_channel.recv() == b"done"

    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB_per_s"] = N_BULK * BULK / benchmark.stats.stats.median / 1e9
