"""The JSON shapes of the Flight endpoint: tickets, descriptor commands, action bodies.

Every ticket and descriptor command is one JSON object whose ``"kind"``
(default ``"dataset"``) picks the service that handles it.  The shapes of the
built-in ``"dataset"`` kind are parsed and checked here; any problem raises
``pyarrow.ArrowInvalid`` (the client sees INVALID_ARGUMENT) with a message
naming the field and quoting at most a short excerpt of the value
(:func:`dpdpu.errors.shown`).  :mod:`dpdpu.network.flight` documents the
shapes in full.

JSON nested deeper than :data:`MAX_JSON_DEPTH` is refused, so nothing that
walks a request recursively afterwards (a service, an action, an error
message) meets a pathological one.  A serialized expression is read by
:func:`dpdpu.compute.expr.from_serialized`, never by pyarrow's
``Expression._deserialize``, which trusts its input.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from ..compute.expr import from_serialized
from ..errors import ExpressionError, clip, shown

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_KIND",
    "MAX_JSON_DEPTH",
    "ExchangeRequest",
    "ExchangeStep",
    "GetRequest",
    "PutRequest",
    "decode_json",
    "encode_expression",
    "ipc_options",
    "kind_of",
    "parse_exchange",
    "parse_get",
    "parse_put",
    "ticket",
]

DEFAULT_KIND = "dataset"
#: IPC body compressions a stream may ask for (Arrow IPC knows no others).
COMPRESSIONS = ("lz4", "zstd")
PutMode = Literal["create", "replace", "append"]
PUT_MODES: tuple[PutMode, ...] = ("create", "replace", "append")
#: Dataset names: a plain identifier-like word, so that they map to file names safely.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}\Z")
_AGG_FUNCS = ("count", "sum", "min", "max", "mean", "count_all")
#: The deepest a ticket, command or action body may nest JSON objects and arrays.
MAX_JSON_DEPTH = 32


def invalid(message: str) -> pa.ArrowInvalid:
    """The exception pyarrow's Flight server turns into INVALID_ARGUMENT."""
    return pa.ArrowInvalid(message)


def decode_json(raw: bytes | str, what: str) -> Any:
    """``raw`` parsed as JSON, at most :data:`MAX_JSON_DEPTH` deep (``ArrowInvalid`` naming ``what`` if not)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        value = None  # nested beyond what the decoder can follow; refused below
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"malformed {what}: not JSON ({clip(str(exc))})") from exc
    else:
        if _json_depth(value, MAX_JSON_DEPTH) <= MAX_JSON_DEPTH:
            return value
    raise invalid(f"malformed {what}: JSON nested more than {MAX_JSON_DEPTH} levels deep")


def _json_depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests objects and arrays, counted up to one beyond ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def kind_of(request: Mapping[str, Any], what: str) -> str:
    """The request's ``"kind"`` (``"dataset"`` when absent)."""
    kind = request.get("kind", DEFAULT_KIND)
    if not isinstance(kind, str) or not kind:
        raise invalid(f"malformed {what}: 'kind' must be a non-empty string, not {shown(kind)}")
    return kind


def as_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else ``ArrowInvalid``."""
    if not isinstance(value, dict):
        raise invalid(f"malformed {what}: expected a JSON object, got {type(value).__name__}")
    return value


def check_name(name: Any, what: str) -> str:
    """A valid dataset name (letters, digits, ``_`` and ``-``; at most 128)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid(
            f"malformed {what}: dataset name must be 1-128 letters, digits, '_' or '-' "
            f"(not starting with '-'), not {shown(name)}"
        )
    return name


def _check_keys(request: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    unknown = sorted(set(request) - {"kind", *allowed})
    if unknown:
        raise invalid(f"malformed {what}: unknown field(s) {shown(unknown)}; allowed: {sorted(allowed)}")


def _predicate(value: Any, what: str) -> Any:
    """The predicate as the kernels take it: expression text, or the tree of a serialized expression."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"expression"} and isinstance(value["expression"], str):
        try:
            raw = base64.b64decode(value["expression"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid(f"malformed {what}: predicate 'expression' is not base64 ({clip(str(exc))})") from exc
        try:
            return from_serialized(raw)
        except ExpressionError as exc:
            raise invalid(f"malformed {what}: predicate 'expression': {exc}") from exc
    raise invalid(
        f"malformed {what}: predicate must be expression text or {{'expression': <base64>}}, not {shown(value)}"
    )


def _columns(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise invalid(f"malformed {what}: 'columns' must be a non-empty list of column names, not {shown(value)}")
    return list(value)


def _compression(value: Any, what: str) -> str | None:
    if value is None or value in COMPRESSIONS:
        return value  # type: ignore[no-any-return]
    raise invalid(
        f"malformed {what}: compression must be one of {list(COMPRESSIONS)} (Arrow IPC body codecs) or null, "
        f"not {shown(value)}"
    )


def ipc_options(compression: str | None) -> pa.ipc.IpcWriteOptions | None:
    """IPC write options for a stream's ``compression`` (None: Flight's defaults)."""
    return None if compression is None else pa.ipc.IpcWriteOptions(compression=compression)


@dataclass(frozen=True)
class GetRequest:
    """A ``"dataset"`` ticket: what :meth:`do_get` streams back."""

    dataset: str
    predicate: Any = None
    columns: list[str] | None = None
    compression: str | None = None
    #: the JSON object as the client sent it (what an offload predicate sees)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def parse_get(request: Mapping[str, Any], what: str = "ticket") -> GetRequest:
    """Check a ``"dataset"`` ticket (or descriptor command) and return its parts."""
    _check_keys(request, ("dataset", "predicate", "columns", "compression"), what)
    return GetRequest(
        dataset=check_name(request.get("dataset"), what),
        predicate=_predicate(request.get("predicate"), what),
        columns=_columns(request.get("columns"), what),
        compression=_compression(request.get("compression"), what),
        raw=dict(request),
    )


@dataclass(frozen=True)
class PutRequest:
    """A ``"dataset"`` upload: where the batches go and how."""

    dataset: str
    mode: PutMode = "replace"
    format: Literal["parquet", "ipc"] = "parquet"


def parse_put(request: Mapping[str, Any], what: str = "descriptor command") -> PutRequest:
    """Check a ``"dataset"`` do_put command."""
    _check_keys(request, ("dataset", "mode", "format"), what)
    mode = request.get("mode", "replace")
    if mode not in PUT_MODES:
        raise invalid(f"malformed {what}: mode must be one of {list(PUT_MODES)}, not {shown(mode)}")
    fmt = request.get("format", "parquet")
    if fmt not in ("parquet", "ipc"):
        raise invalid(f"malformed {what}: format must be 'parquet' or 'ipc', not {shown(fmt)}")
    return PutRequest(check_name(request.get("dataset"), what), mode, fmt)


@dataclass(frozen=True)
class ExchangeStep:
    """One step of an exchange pipeline: ``op`` is filter, project or aggregate."""

    op: Literal["filter", "project", "aggregate"]
    arg: Any


@dataclass(frozen=True)
class ExchangeRequest:
    """A do_exchange command: per-batch steps, then steps over the whole stream, and the reply's compression.

    ``streaming`` holds the filter/project steps before the first
    aggregate (applied to each batch as it arrives); ``final`` holds that
    aggregate and every step after it (applied once the client is done).
    """

    streaming: list[ExchangeStep]
    final: list[ExchangeStep]
    compression: str | None


def parse_exchange(request: Mapping[str, Any], what: str = "exchange command") -> ExchangeRequest:
    """Check a do_exchange command ``{"pipeline": [...]}``."""
    _check_keys(request, ("pipeline",), what)
    steps = request.get("pipeline")
    if not isinstance(steps, list):
        raise invalid(f"malformed {what}: 'pipeline' must be a list of steps, not {shown(steps)}")
    streaming: list[ExchangeStep] = []
    final: list[ExchangeStep] = []
    compression: str | None = None
    for i, step in enumerate(steps):
        where = f"{what}: pipeline step {i}"
        if not isinstance(step, dict) or len(step) != 1:
            raise invalid(f"malformed {where}: each step is an object with one key, not {shown(step)}")
        ((op, arg),) = step.items()
        if op == "compress":
            compression = _compression(arg, where)
            continue
        if op == "filter":
            parsed = ExchangeStep("filter", _predicate(arg, where))
        elif op == "project":
            if not (isinstance(arg, list) and arg and all(isinstance(c, str) for c in arg)) and not (
                isinstance(arg, dict) and arg and all(isinstance(v, str) for v in arg.values())
            ):
                raise invalid(
                    f"malformed {where}: project takes a list of names or an object of output name -> expression, "
                    f"not {shown(arg)}"
                )
            parsed = ExchangeStep("project", arg)
        elif op == "aggregate":
            parsed = ExchangeStep("aggregate", _aggregate(arg, where))
        else:
            raise invalid(f"malformed {where}: unknown step {shown(op)}; choose filter, project, aggregate or compress")
        (final if final or op == "aggregate" else streaming).append(parsed)
    return ExchangeRequest(streaming, final, compression)


def _aggregate(arg: Any, where: str) -> tuple[list[str], list[tuple[Any, str]]]:
    if not isinstance(arg, dict) or set(arg) - {"keys", "aggs"} or "aggs" not in arg:
        raise invalid(f"malformed {where}: aggregate takes {{'keys': [...], 'aggs': [[column, function], ...]}}")
    keys = arg.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise invalid(f"malformed {where}: aggregate 'keys' must be a list of column names, not {shown(keys)}")
    aggs = arg["aggs"]
    pairs: list[tuple[Any, str]] = []
    if not isinstance(aggs, list) or not aggs:
        raise invalid(f"malformed {where}: aggregate 'aggs' must be a non-empty list of [column, function]")
    for item in aggs:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], str)):
            raise invalid(f"malformed {where}: each aggregation is [column, function], not {shown(item)}")
        if item[1] not in _AGG_FUNCS:
            raise invalid(
                f"malformed {where}: unknown aggregate function {shown(item[1])}; choose from {list(_AGG_FUNCS)}"
            )
        pairs.append((item[0], item[1]))
    return keys, pairs


# --- for clients --------------------------------------------------------------------------------


def encode_expression(expression: pc.Expression) -> dict[str, str]:
    """A ``pyarrow.compute.Expression`` as a ticket's predicate: ``{"expression": <base64>}``."""
    _, (buffer,) = expression.__reduce__()
    return {"expression": base64.b64encode(buffer.to_pybytes()).decode("ascii")}


def ticket(
    dataset: str,
    predicate: str | pc.Expression | None = None,
    columns: Sequence[str] | None = None,
    compression: str | None = None,
) -> bytes:
    """The JSON bytes of a ``"dataset"`` ticket (for ``flight.Ticket`` or a descriptor command)."""
    body: dict[str, Any] = {"dataset": dataset}
    if isinstance(predicate, pc.Expression):
        body["predicate"] = encode_expression(predicate)
    elif predicate is not None:
        body["predicate"] = predicate
    if columns is not None:
        body["columns"] = list(columns)
    if compression is not None:
        body["compression"] = compression
    return json.dumps(body).encode()
