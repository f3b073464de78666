"""One table from errors to wire statuses (dpdpu.errors.to_wire / from_wire), and its Flight and gRPC sides."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from typing import Any

import grpc  # type: ignore[import-untyped]
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dpdpu
from dpdpu import errors
from dpdpu.errors import WIRE_STATUSES, from_wire, to_wire, wire_status
from dpdpu.network.flight import FlightEndpoint
from dpdpu.network.flight_server import flight_exception, flight_status
from dpdpu.runtime import Runtime


def _every_error_class() -> list[type[errors.DpdpuError]]:
    for info in pkgutil.walk_packages(dpdpu.__path__, "dpdpu."):
        if not info.name.endswith(("__main__", "zygote")) and "_proto" not in info.name:
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as exc:
                # An integration whose extra is not installed (dpdpu.integrations.vllm without vLLM).
                if not info.name.startswith("dpdpu.integrations.") or (exc.name or "").startswith("dpdpu"):
                    raise
    found, pending = [], [errors.DpdpuError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_class_names_a_wire_status() -> None:
    classes = _every_error_class()
    assert len(classes) > 50
    for cls in classes:
        assert cls.wire_status in WIRE_STATUSES, cls
    # lookups are NOT_FOUND, refused input INVALID_ARGUMENT (or too much of it), whatever module they are in
    for cls in classes:
        if issubclass(cls, KeyError):
            assert cls.wire_status == "NOT_FOUND", cls
        if issubclass(cls, errors.InvalidArgumentError):
            assert cls.wire_status in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), cls


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.InvalidArgumentError("x"), "INVALID_ARGUMENT"),
        (errors.UnknownColumnError("x"), "INVALID_ARGUMENT"),
        (errors.NoSuchFileError("x"), "NOT_FOUND"),
        (errors.DeviceMemoryError("x"), "RESOURCE_EXHAUSTED"),
        (errors.RuntimeClosedError("x"), "UNAVAILABLE"),
        (errors.FileExistsStorageError("x"), "ALREADY_EXISTS"),
        (errors.JournalCorruptError("x"), "DATA_LOSS"),
        (errors.InternalError("x"), "INTERNAL"),
        (KeyError("x"), "NOT_FOUND"),
        (pa.ArrowKeyError("x"), "NOT_FOUND"),
        (ValueError("x"), "INVALID_ARGUMENT"),
        (pa.ArrowInvalid("x"), "INVALID_ARGUMENT"),
        (TypeError("x"), "INVALID_ARGUMENT"),
        (NotImplementedError("x"), "UNIMPLEMENTED"),
        (TimeoutError("x"), "DEADLINE_EXCEEDED"),
        (MemoryError("x"), "RESOURCE_EXHAUSTED"),
        (RuntimeError("x"), "INTERNAL"),
    ],
)
def test_the_table(exc: BaseException, status: str) -> None:
    assert wire_status(exc) == status == to_wire(exc)[0]


def test_messages_are_short_and_say_what_broke() -> None:
    assert to_wire(KeyError("no such thing")) == ("NOT_FOUND", "no such thing")
    assert to_wire(RuntimeError("kaboom")) == ("INTERNAL", "RuntimeError: kaboom")  # a bug names its type
    assert to_wire(errors.StorageError("disk gone", op="read")) == ("INTERNAL", "read: disk gone")
    status, message = to_wire(ValueError("é" * 1_000_000))
    assert status == "INVALID_ARGUMENT" and len(message.encode()) <= errors.WIRE_MESSAGE_BYTES
    assert "cut from 2,000,000 bytes" in message
    assert len(to_wire(ValueError("v" * 5000), limit=600)[1].encode()) <= 600

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert to_wire(Unprintable()) == ("INTERNAL", "Unprintable: (Unprintable that cannot be shown)")


def test_from_wire_round_trips_every_status() -> None:
    for status in WIRE_STATUSES:
        err = from_wire(status, "m", op="x")
        assert isinstance(err, errors.DpdpuError) and wire_status(err) == status and str(err) == "x: m"
    assert type(from_wire("INVALID_ARGUMENT", "m")) is errors.InvalidArgumentError
    assert type(from_wire("NOT_FOUND", "m")) is errors.InternalError  # no class of this side: it keeps the status
    assert wire_status(from_wire("NO_SUCH_STATUS", "m")) == "UNKNOWN"


def test_from_wire_classes_kind_and_default() -> None:
    class Mine(errors.DpdpuError):
        pass

    class Gone(errors.DpdpuError, KeyError):
        wire_status = "NOT_FOUND"

    assert type(from_wire("NOT_FOUND", "m", classes={"NOT_FOUND": Gone})) is Gone
    assert type(from_wire("ABORTED", "m", classes={"NOT_FOUND": Gone}, default=Mine)) is Mine
    # the other end named its class: one of the tree (or of classes) comes back as itself ...
    assert type(from_wire("INVALID_ARGUMENT", "m", kind="UnknownColumnError")) is errors.UnknownColumnError
    assert type(from_wire("NOT_FOUND", "m", kind="Gone", classes={"NOT_FOUND": Gone}, default=Mine)) is Gone
    # ... and any other (its own exception) as the default, whatever the status
    assert type(from_wire("NOT_FOUND", "m", kind="KeyError", classes={"NOT_FOUND": Gone}, default=Mine)) is Mine
    assert wire_status(from_wire("NOT_FOUND", "m", kind="KeyError", default=Mine)) == "NOT_FOUND"


@given(status=st.text(max_size=30), message=st.text(max_size=200), kind=st.none() | st.text(max_size=40))
def test_from_wire_takes_anything_a_peer_sends(status: str, message: str, kind: str | None) -> None:
    err = from_wire(status, message, kind=kind)
    assert isinstance(err, errors.DpdpuError) and wire_status(err) in WIRE_STATUSES


def test_every_status_is_a_grpc_status() -> None:
    assert {s: grpc.StatusCode[s].name for s in WIRE_STATUSES} == {s: s for s in WIRE_STATUSES}


def test_every_status_crosses_a_flight_endpoint(rt: Runtime) -> None:
    def fail(body: Any) -> Any:
        """Fails with the status it is given."""
        raise from_wire(body["status"], f"failed with {body['status']}")

    sent = [s for s in WIRE_STATUSES if s != "OK"]
    with (
        FlightEndpoint(runtime=rt, actions={"fail": fail}).serve_background() as ep,
        fl.FlightClient(ep.location) as client,
    ):
        for status in sent:
            with pytest.raises((fl.FlightError, pa.ArrowException)) as info:
                list(client.do_action(fl.Action("fail", json.dumps({"status": status}).encode())))
            assert flight_status(info.value) == (status, f"failed with {status}")
        # the statuses Flight has an error for travel as themselves, for any Flight client
        assert isinstance(flight_exception("INVALID_ARGUMENT", "m"), pa.ArrowInvalid)
        assert isinstance(flight_exception("NOT_FOUND", "m"), KeyError)
        assert isinstance(flight_exception("UNAVAILABLE", "m"), fl.FlightUnavailableError)
        assert type(flight_exception("RESOURCE_EXHAUSTED", "m")) is fl.FlightServerError


@given(info=st.binary(max_size=64), message=st.text(max_size=100))
def test_flight_status_reads_any_server_error(info: bytes, message: str) -> None:
    status, text = flight_status(fl.FlightServerError(message, info))
    assert isinstance(status, str) and isinstance(text, str)


FORMATTER_SCOPE = """
import traceback
original = traceback.format_exception
import dpdpu.network.flight as flight
assert traceback.format_exception is original, "importing the endpoint patched the traceback module"
first, second = flight.FlightEndpoint(), flight.FlightEndpoint()
assert traceback.format_exception is not original
first.close()
assert traceback.format_exception is not original, "one endpoint is still open"
second.close()
assert traceback.format_exception is original, "the last endpoint closed"
print("ok")
"""


def test_traceback_formatting_is_touched_only_while_an_endpoint_is_open() -> None:
    done = subprocess.run([sys.executable, "-c", FORMATTER_SCOPE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
