"""A strict reader of small Arrow IPC files, in pure Python, for bytes from outside.

pyarrow serializes a ``pyarrow.compute.Expression`` as an Arrow IPC file: the
expression tree in the schema's key/value metadata, its literals and function
options as the columns of one record batch.  pyarrow's own reader of that form
trusts the indices in the metadata and the buffers of the batch, so crafted
bytes can crash the process.  This reader never hands the bytes to native
code: it parses the flatbuffers of the footer and of the record batch message
itself, checks every offset and length against the input before it reads, and
decodes a value only when asked for it.  Anything it does not know (body
compression, dictionary encoding, big-endian data, types expressions never
use) is refused, so every failure is a :class:`~dpdpu.errors.CorruptDataError`
and the work done is bounded by the size of the input: at most
:data:`MAX_FIELDS` fields nested at most :data:`MAX_TYPE_DEPTH` deep, at most
:data:`MAX_METADATA` metadata pairs, and no array longer than the input has
bytes.

Values come back as Python objects: integers for integer, date and timestamp
columns (their stored value), floats, booleans, ``str`` for UTF-8, ``bytes``
for binary, lists for list columns, ``None`` for nulls.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from ..errors import CorruptDataError

__all__ = ["MAX_FIELDS", "MAX_METADATA", "MAX_TYPE_DEPTH", "IpcColumn", "IpcFile", "read_ipc_file"]

#: the most fields (columns and their children) a file may declare
MAX_FIELDS = 1024
#: the deepest a type may nest (a struct of lists of strings is 3 deep)
MAX_TYPE_DEPTH = 8
#: the most key/value pairs the schema's metadata may hold
MAX_METADATA = 65536

_MAGIC = b"ARROW1"
_METADATA_V5 = 4
_CONTINUATION = 0xFFFFFFFF
_HEADER_RECORD_BATCH = 3

_U8 = struct.Struct("<B")
_I16 = struct.Struct("<h")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_BLOCK = struct.Struct("<qi4xq")  # offset, metadata length, (padding), body length
_PAIR = struct.Struct("<qq")  # FieldNode (length, null count) and Buffer (offset, length)

# Type ids of the flatbuffer union ``Type`` (Schema.fbs) that expressions can hold.
_TYPE_NAMES = {
    1: "Null",
    2: "Int",
    3: "FloatingPoint",
    4: "Binary",
    5: "Utf8",
    6: "Bool",
    7: "Decimal",
    8: "Date",
    9: "Time",
    10: "Timestamp",
    11: "Interval",
    12: "List",
    13: "Struct",
    14: "Union",
    15: "FixedSizeBinary",
    16: "FixedSizeList",
    17: "Map",
    18: "Duration",
    19: "LargeBinary",
    20: "LargeUtf8",
    21: "LargeList",
    22: "RunEndEncoded",
    23: "BinaryView",
    24: "Utf8View",
    25: "ListView",
    26: "LargeListView",
}
_TIME_UNITS = ("s", "ms", "us", "ns")
_FLOATS = {
    0: (struct.Struct("<e"), pa.float16()),
    1: (struct.Struct("<f"), pa.float32()),
    2: (struct.Struct("<d"), pa.float64()),
}
_INTS = {
    (8, True): pa.int8(),
    (16, True): pa.int16(),
    (32, True): pa.int32(),
    (64, True): pa.int64(),
    (8, False): pa.uint8(),
    (16, False): pa.uint16(),
    (32, False): pa.uint32(),
    (64, False): pa.uint64(),
}
_INT_FORMATS = {(8, True): "b", (16, True): "h", (32, True): "i", (64, True): "q"}
# decimal32 and decimal64 are newer than some supported pyarrow versions
_DECIMALS = {bits: getattr(pa, f"decimal{bits}", None) for bits in (32, 64, 128, 256)}
_TIME_ZONE = re.compile(r"[A-Za-z0-9_+\-/:]{1,64}\Z", re.ASCII)


def _type_name(type_id: int) -> str:
    return _TYPE_NAMES.get(type_id, f"number {type_id}")


def _bad(detail: str) -> CorruptDataError:
    return CorruptDataError(f"not a valid Arrow IPC file: {detail}")


# --- flatbuffers --------------------------------------------------------------------------------


class _Flat:
    """Bounds-checked reads of one flatbuffer."""

    __slots__ = ("data",)

    def __init__(self, data: memoryview) -> None:
        self.data = data

    def read(self, fmt: struct.Struct, pos: int) -> Any:
        if pos < 0 or pos + fmt.size > len(self.data):
            raise _bad("an offset points outside the data")
        return fmt.unpack_from(self.data, pos)[0]

    def root(self) -> _Table:
        return _Table(self, self.read(_U32, 0))


class _Table:
    """A flatbuffer table: fields found through its vtable, absent fields read as their default."""

    __slots__ = ("flat", "pos", "vsize", "vtable")

    def __init__(self, flat: _Flat, pos: int) -> None:
        self.flat = flat
        self.pos = pos
        self.vtable = pos - flat.read(_I32, pos)
        self.vsize = flat.read(_U16, self.vtable)
        if self.vsize < 4 or self.vsize % 2 or self.vtable + self.vsize > len(flat.data):
            raise _bad("a table has a malformed vtable")

    def _field(self, slot: int) -> int:
        at = 4 + 2 * slot
        if at + 2 > self.vsize:
            return 0
        offset: int = self.flat.read(_U16, self.vtable + at)
        return self.pos + offset if offset else 0

    def scalar(self, slot: int, fmt: struct.Struct, default: int = 0) -> int:
        at = self._field(slot)
        return int(self.flat.read(fmt, at)) if at else default

    def _target(self, slot: int) -> int:
        at = self._field(slot)
        return at + int(self.flat.read(_U32, at)) if at else 0

    def table(self, slot: int) -> _Table | None:
        at = self._target(slot)
        return _Table(self.flat, at) if at else None

    def string(self, slot: int) -> str | None:
        at = self._target(slot)
        if not at:
            return None
        size = self.flat.read(_U32, at)
        if at + 4 + size > len(self.flat.data):
            raise _bad("a string runs past the end of the data")
        try:
            return str(self.flat.data[at + 4 : at + 4 + size], "utf-8")
        except UnicodeDecodeError:
            raise _bad("a string is not UTF-8") from None

    def vector(self, slot: int, item_size: int) -> tuple[int, int]:
        """Where the vector's items start, and how many there are (0, 0 when absent)."""
        at = self._target(slot)
        if not at:
            return 0, 0
        count = int(self.flat.read(_U32, at))
        if at + 4 + count * item_size > len(self.flat.data):
            raise _bad("a vector runs past the end of the data")
        return at + 4, count

    def tables(self, slot: int, limit: int) -> Iterator[_Table]:
        start, count = self.vector(slot, 4)
        if count > limit:
            raise _bad(f"more than {limit} entries in a table vector")
        for i in range(count):
            at = start + 4 * i
            yield _Table(self.flat, at + int(self.flat.read(_U32, at)))

    def structs(self, slot: int, fmt: struct.Struct, limit: int) -> list[tuple[Any, ...]]:
        start, count = self.vector(slot, fmt.size)
        if count > limit:
            raise _bad(f"more than {limit} entries in a vector")
        return [fmt.unpack_from(self.flat.data, start + fmt.size * i) for i in range(count)]


# --- schema -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """A field's Arrow type and how its array is laid out in a record batch."""

    name: str
    type: pa.DataType
    kind: str  # null, fixed, bool, binary, utf8, list, struct; opaque: fixed width, values not decoded
    buffers: int
    children: tuple[_Layout, ...] = ()
    fmt: struct.Struct | None = None  # fixed: one value; binary/utf8/list: one offset


class _SchemaReader:
    def __init__(self) -> None:
        self.budget = MAX_FIELDS

    def field(self, table: _Table, depth: int) -> _Layout:
        self.budget -= 1
        if self.budget < 0:
            raise _bad(f"more than {MAX_FIELDS} fields")
        if depth > MAX_TYPE_DEPTH:
            raise _bad(f"types nested more than {MAX_TYPE_DEPTH} deep")
        name = table.string(0) or ""
        if table.table(4) is not None:
            raise _bad("dictionary-encoded columns are not supported")
        type_id = table.scalar(2, _U8)
        spec = table.table(3)
        children = tuple(self.field(child, depth + 1) for child in table.tables(5, self.budget))
        return self.layout(name, type_id, spec, children)

    @staticmethod
    def layout(name: str, type_id: int, spec: _Table | None, children: tuple[_Layout, ...]) -> _Layout:
        def get(slot: int, fmt: struct.Struct, default: int = 0) -> int:
            return spec.scalar(slot, fmt, default) if spec is not None else default

        nested = type_id in (12, 13, 21)
        if children and not nested:
            raise _bad(f"a {_type_name(type_id)} field has children")
        if type_id == 1:
            return _Layout(name, pa.null(), "null", 0)
        if type_id == 2:
            key = (get(0, _I32), get(1, _U8) != 0)
            if key not in _INTS:
                raise _bad(f"no integer type of {key[0]} bits")
            fmt = struct.Struct("<" + (_INT_FORMATS[key] if key[1] else _INT_FORMATS[key[0], True].upper()))
            return _Layout(name, _INTS[key], "fixed", 2, fmt=fmt)
        if type_id == 3:
            precision = get(0, _I16)
            if precision not in _FLOATS:
                raise _bad(f"no floating point precision {precision}")
            fmt, float_type = _FLOATS[precision]
            return _Layout(name, float_type, "fixed", 2, fmt=fmt)
        if type_id in (4, 5, 19, 20):
            large = type_id in (19, 20)
            kind = "utf8" if type_id in (5, 20) else "binary"
            arrow_type = {4: pa.binary(), 5: pa.string(), 19: pa.large_binary(), 20: pa.large_string()}[type_id]
            return _Layout(name, arrow_type, kind, 3, fmt=_I64 if large else _I32)
        if type_id == 6:
            return _Layout(name, pa.bool_(), "bool", 2)
        if type_id == 8:
            unit = get(0, _I16, 1)
            if unit not in (0, 1):
                raise _bad(f"no date unit {unit}")
            return _Layout(name, pa.date32() if unit == 0 else pa.date64(), "fixed", 2, fmt=_I32 if unit == 0 else _I64)
        if type_id == 10:
            unit = get(0, _I16)
            if not 0 <= unit < len(_TIME_UNITS):
                raise _bad(f"no time unit {unit}")
            zone = spec.string(1) if spec is not None else None
            if zone is not None and not _TIME_ZONE.match(zone):
                raise _bad("a timestamp has a malformed time zone")
            return _Layout(name, pa.timestamp(_TIME_UNITS[unit], zone), "fixed", 2, fmt=_I64)
        if type_id in (7, 9, 15, 18):
            return _Layout(name, _opaque_type(type_id, get), "opaque", 2)
        if type_id in (12, 21):
            if len(children) != 1:
                raise _bad("a list field needs exactly one child")
            (item,) = children
            item_field = pa.field(item.name, item.type)
            list_type = pa.list_(item_field) if type_id == 12 else pa.large_list(item_field)
            return _Layout(name, list_type, "list", 2, children, fmt=_I32 if type_id == 12 else _I64)
        if type_id == 13:
            struct_type = pa.struct([pa.field(c.name, c.type) for c in children])
            return _Layout(name, struct_type, "struct", 1, children)
        raise _bad(f"the type {_type_name(type_id)} is not supported")


def _opaque_type(type_id: int, get: Any) -> pa.DataType:
    """The Arrow type of a fixed-width field whose values this reader does not decode (only its type is named)."""
    try:
        if type_id == 7:
            make = _DECIMALS.get(get(2, _I32, 128))
            if make is None:
                raise _bad("a decimal of an unknown width")
            return make(get(0, _I32), get(1, _I32))  # type: ignore[no-any-return]
        if type_id == 9:
            unit = _TIME_UNITS[get(0, _I16, 1)]
            return pa.time32(unit) if get(1, _I32, 32) == 32 else pa.time64(unit)
        if type_id == 15:
            return pa.binary(get(0, _I32))
        return pa.duration(_TIME_UNITS[get(0, _I16, 1)])
    except (KeyError, IndexError, ValueError, TypeError, pa.ArrowException):
        raise _bad(f"a malformed {_type_name(type_id)} type") from None


# --- record batch -------------------------------------------------------------------------------


class IpcColumn:
    """One array of the record batch, decoded a value at a time."""

    __slots__ = ("buffers", "children", "layout", "length", "null_count")

    def __init__(
        self, layout: _Layout, length: int, null_count: int, buffers: list[memoryview], children: list[IpcColumn]
    ) -> None:
        self.layout = layout
        self.length = length
        self.null_count = null_count
        self.buffers = buffers
        self.children = children

    @property
    def type(self) -> pa.DataType:
        """The column's Arrow type."""
        return self.layout.type

    @property
    def name(self) -> str:
        """The field's name."""
        return self.layout.name

    def child(self, name: str) -> IpcColumn | None:
        """The child of a struct column named ``name`` (the first one), or None."""
        if self.layout.kind == "struct":
            for child in self.children:
                if child.name == name:
                    return child
        return None

    def is_null(self, index: int) -> bool:
        """Whether the value at ``index`` is null."""
        if not 0 <= index < self.length:
            raise _bad(f"row {index} of a column of {self.length}")
        if self.layout.kind == "null":
            return True
        return bool(self.null_count) and not _bit(self.buffers[0], index)

    def value(self, index: int) -> Any:
        """The value at ``index`` as a Python object (see the module docs); None when null."""
        if self.is_null(index):
            return None
        kind = self.layout.kind
        if kind == "opaque":
            raise _bad(f"values of type {self.type} are not read")
        if kind == "fixed":
            fmt = self.layout.fmt
            assert fmt is not None
            return _read(fmt, self.buffers[1], index * fmt.size)
        if kind == "bool":
            return _bit(self.buffers[1], index)
        if kind in ("binary", "utf8"):
            start, end = self.offsets(index)
            raw = bytes(self.buffers[2][start:end])
            if kind == "binary":
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad("a string value is not UTF-8") from None
        if kind == "list":
            start, end = self.offsets(index)
            return [self.children[0].value(i) for i in range(start, end)]
        return {child.name: child.value(index) for child in self.children}

    def offsets(self, index: int) -> tuple[int, int]:
        """Where the value at ``index`` of a string, binary or list column starts and ends in its data or child."""
        kind, fmt = self.layout.kind, self.layout.fmt
        if kind not in ("binary", "utf8", "list") or fmt is None:
            raise _bad(f"a {self.type} column has no offsets")
        if not 0 <= index < self.length:
            raise _bad(f"row {index} of a column of {self.length}")
        limit = self.children[0].length if kind == "list" else len(self.buffers[2])
        start = _read(fmt, self.buffers[1], index * fmt.size)
        end = _read(fmt, self.buffers[1], (index + 1) * fmt.size)
        if not 0 <= start <= end <= limit:
            raise _bad("offsets out of range")
        return start, end


def _fields(layout: _Layout) -> int:
    return 1 + sum(_fields(child) for child in layout.children)


def _read(fmt: struct.Struct, buffer: memoryview, pos: int) -> Any:
    if pos + fmt.size > len(buffer):
        raise _bad("a value lies outside its buffer")
    return fmt.unpack_from(buffer, pos)[0]


def _bit(buffer: memoryview, index: int) -> bool:
    if index // 8 >= len(buffer):
        raise _bad("a bitmap is shorter than its array")
    return bool(buffer[index // 8] >> (index % 8) & 1)


@dataclass(frozen=True)
class IpcFile:
    """What :func:`read_ipc_file` found: the schema's metadata, in order, and the batch's columns."""

    metadata: list[tuple[str, str]]
    columns: list[IpcColumn]
    num_rows: int


def read_ipc_file(data: bytes | bytearray | memoryview) -> IpcFile:
    """Read an Arrow IPC file of at most one record batch, checking everything (see the module docs).

    Raises:
        CorruptDataError: the bytes are not such a file, or use something this reader refuses.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    if size < 18 or bytes(view[:6]) != _MAGIC or bytes(view[-6:]) != _MAGIC:
        raise _bad("no ARROW1 magic at both ends")
    footer_size = _I32.unpack_from(view, size - 10)[0]
    footer_start = size - 10 - footer_size
    if footer_size < 4 or footer_start < 8:
        raise _bad("the footer size is out of range")
    footer = _Flat(view[footer_start : size - 10]).root()
    if footer.scalar(0, _I16) != _METADATA_V5:
        raise _bad("only metadata version 5 is supported")
    schema = footer.table(1)
    if schema is None:
        raise _bad("the footer has no schema")
    if schema.scalar(0, _I16) != 0:
        raise _bad("big-endian data is not supported")
    reader = _SchemaReader()
    layouts = [reader.field(field, 1) for field in schema.tables(1, MAX_FIELDS)]
    metadata = []
    for pair in schema.tables(2, MAX_METADATA):
        metadata.append((pair.string(0) or "", pair.string(1) or ""))
    if footer.vector(2, _BLOCK.size)[1]:
        raise _bad("dictionary batches are not supported")
    blocks = footer.structs(3, _BLOCK, 1)
    if not blocks:
        return IpcFile(metadata, [], 0)
    return IpcFile(metadata, *_record_batch(view, footer_start, blocks[0], layouts))


def _record_batch(
    view: memoryview, end: int, block: tuple[int, int, int], layouts: list[_Layout]
) -> tuple[list[IpcColumn], int]:
    offset, meta_size, body_size = block
    if offset < 8 or meta_size < 8 or body_size < 0 or offset + meta_size + body_size > end:
        raise _bad("the record batch block lies outside the file")
    prefix = _U32.unpack_from(view, offset)[0]
    skip = 8 if prefix == _CONTINUATION else 4
    flat_size = _I32.unpack_from(view, offset + skip - 4)[0]
    if flat_size < 4 or skip + flat_size > meta_size:
        raise _bad("the record batch message has a malformed length")
    message = _Flat(view[offset + skip : offset + skip + flat_size]).root()
    if message.scalar(1, _U8) != _HEADER_RECORD_BATCH:
        raise _bad("the block does not hold a record batch")
    batch = message.table(2)
    if batch is None:
        raise _bad("the record batch message has no header")
    if batch.table(3) is not None:
        raise _bad("compressed record batches are not supported")
    if batch.vector(4, 8)[1]:
        raise _bad("variadic buffers are not supported")
    num_rows = batch.scalar(0, _I64)
    body = view[offset + meta_size : offset + meta_size + body_size]
    # one node per field and the buffers of its layout, each field once: more is malformed
    fields = sum(_fields(layout) for layout in layouts)
    nodes = batch.structs(1, _PAIR, fields)
    buffers = []
    for start, length in batch.structs(2, _PAIR, 3 * fields):
        if start < 0 or length < 0 or start + length > body_size:
            raise _bad("a buffer lies outside the message body")
        buffers.append(body[start : start + length])
    limit = len(view)  # no array holds more values than the file has bytes
    if not 0 <= num_rows <= limit:
        raise _bad("the record batch length is out of range")
    columns: list[IpcColumn] = []
    at = [0, 0]  # next node, next buffer

    def build(layout: _Layout) -> IpcColumn:
        if at[0] >= len(nodes) or at[1] + layout.buffers > len(buffers):
            raise _bad("fewer field nodes or buffers than the schema needs")
        length, null_count = nodes[at[0]]
        if not (0 <= length <= limit and 0 <= null_count <= length):
            raise _bad("a field node has an impossible length or null count")
        own = buffers[at[1] : at[1] + layout.buffers]
        at[0] += 1
        at[1] += layout.buffers
        return IpcColumn(layout, length, null_count, own, [build(child) for child in layout.children])

    for layout in layouts:
        column = build(layout)
        if column.length != num_rows:
            raise _bad("a column's length differs from the record batch's")
        columns.append(column)
    if at != [len(nodes), len(buffers)]:
        raise _bad("more field nodes or buffers than the schema has fields")
    return columns, num_rows
