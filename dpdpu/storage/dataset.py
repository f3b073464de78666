"""Arrow datasets stored as files of a :class:`~dpdpu.storage.FileService`, scanned with pushdown.

A dataset is one file in the service, in the Arrow IPC file format or in
Parquet, written by :func:`write_dataset` and opened by :func:`open_dataset`,
which reads only the footer (schema, row groups or record batches, row
counts).  :meth:`Dataset.scan` is the storage-side ("on the DPU") half of a
query: it reads from storage only what the query needs, filters and projects
with the dpdpu kernels (:func:`dpdpu.compute.filter`,
:func:`dpdpu.compute.project`) and returns just the matching rows, so what
crosses to the host is the result, not the file.

* **Parquet**: only the column chunks of the columns the predicate and the
  projection name are read, and row groups whose min/max statistics prove
  the predicate false for every row are not read at all.
* **IPC**: every record batch is visited (the format keeps no statistics);
  only the buffers of the needed columns are read.

Bytes are counted as they are read through the service, so
:attr:`ScanResult.bytes_read` is a measurement, not an estimate.

>>> ds = open_dataset(fs, "sales.parquet")          # doctest: +SKIP
>>> r = ds.scan("price > 10 and region == 'EU'", ["id", "price"])  # doctest: +SKIP
>>> r.table, r.bytes_read, r.bytes_returned          # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import math
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from .. import errors
from ..compute import arrow as _arrow
from ..compute import ast
from ..compute.expr import bind_predicate
from ..compute.expr import columns as expr_columns
from ..compute.kernels import filter as dpdpu_filter
from ..compute.kernels import project as dpdpu_project
from ..runtime.profile import Profile
from ..runtime.runtime import Runtime, current_runtime
from .fs import FileService, split_path
from .scan_model import ScanModel, model_scan

__all__ = ["Dataset", "DatasetFormat", "ScanResult", "open_dataset", "write_dataset"]

DatasetFormat = Literal["ipc", "parquet"]

#: Rows per Parquet row group or IPC record batch unless told otherwise.
DEFAULT_ROW_GROUP_ROWS = 65536

_PARQUET_MAGIC = b"PAR1"
_IPC_MAGIC = b"ARROW1"
# Parquet ends with <footer><u32 footer length>PAR1; IPC with <footer><i32 length>ARROW1.
_PARQUET_TAIL = 8
_IPC_TAIL = 10
_IPC_ROWS_KEY = b"dpdpu.batch_rows"


# --- reading ranges through the file service -----------------------------------------------------


class _RangeFile:
    """A read-only, seekable file object over one file of the service.

    pyarrow (through ``pa.PythonFile``) asks for exactly the ranges it needs;
    each becomes one ``fs.read`` and is counted.
    """

    def __init__(self, fs: FileService, name: str, size: int) -> None:
        self._fs = fs
        self._name = name
        self._size = size
        self._pos = 0
        self._lock = threading.Lock()
        self.closed = False
        self.bytes_read = 0
        self.reads = 0
        self.modeled_s = 0.0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, nbytes: int | None = -1) -> bytes:
        if nbytes is None or nbytes < 0:
            nbytes = self._size - self._pos
        data = self.read_at(self._pos, nbytes)
        self._pos += len(data)
        return data

    def read_at(self, offset: int, nbytes: int) -> bytes:
        nbytes = max(0, min(nbytes, self._size - offset))
        if nbytes == 0:
            return b""
        future = self._fs.read(self._name, offset, nbytes)
        data = future.result()
        with self._lock:
            self.bytes_read += len(data)
            self.reads += 1
            self.modeled_s += future.modeled_s or 0.0
        return data

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> _RangeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _corrupt(name: str, why: str, op: str) -> errors.CorruptDataError:
    return errors.CorruptDataError(f"dataset {name!r} is not a readable Arrow IPC or Parquet file: {why}", op=op)


# --- results and datasets ----------------------------------------------------------------------------


@dataclass
class ScanResult:
    """What :meth:`Dataset.scan` produced and what it cost.

    Attributes:
        table: the matching rows, with the requested columns.
        bytes_read: bytes read from storage by this scan (footer included
            where the scan had to read it), as counted by the service.
        bytes_returned: ``table.nbytes``: what would cross to the host.
        row_groups: row groups (Parquet) or record batches (IPC) in the dataset.
        row_groups_skipped: those never read because their statistics
            exclude every row.
        reads: storage reads issued.
        modeled_s: modeled storage time of those reads, summed as if issued
            one after the other (compute time is in the runtime's stats).
        bytes_scanned: in-memory bytes of the column chunks the kernels
            filtered (decoded, so usually more than ``bytes_read``).
        file_bytes: size of the dataset's file.
        dataset_bytes: in-memory size of every column of every row group:
            what reading the whole dataset to the host decodes.
    """

    table: pa.Table
    bytes_read: int
    bytes_returned: int
    row_groups: int
    row_groups_skipped: int
    reads: int
    modeled_s: float
    bytes_scanned: int = 0
    file_bytes: int = 0
    dataset_bytes: int = 0

    def model(self, device: str | Profile = "bluefield3", host: str | Profile = "host") -> ScanModel:
        """Modeled time of this scan on ``device`` against reading everything to the host.

        See :func:`dpdpu.storage.scan_model.model_scan`.
        """
        return model_scan(self, device, host)


class Dataset:
    """An Arrow dataset stored in one file of a :class:`FileService`; see :func:`open_dataset`.

    Attributes:
        fs: the file service holding it.
        name: its file name in the service.
        format: ``"ipc"`` or ``"parquet"``.
        schema: the Arrow schema.
        num_rows: rows in all.
        nbytes: size of the file.
        row_group_rows: rows of each row group (Parquet) or record batch (IPC).
    """

    def __init__(
        self,
        fs: FileService,
        name: str,
        format: DatasetFormat,
        schema: pa.Schema,
        nbytes: int,
        row_group_rows: list[int],
        parquet_metadata: Any = None,
    ) -> None:
        self.fs = fs
        self.name = name
        self.format: DatasetFormat = format
        self.schema = schema
        self.nbytes = nbytes
        self.row_group_rows = row_group_rows
        self._parquet_metadata = parquet_metadata
        self._group_stats: list[dict[str, _ColumnStats]] | None = None
        self._ino: int = fs.stat(name).ino

    def _stats(self, group: int) -> dict[str, _ColumnStats]:
        if self._group_stats is None:
            meta = self._parquet_metadata
            self._group_stats = [_group_stats(meta.row_group(i), self.schema) for i in range(meta.num_row_groups)]
        return self._group_stats[group]

    @property
    def num_rows(self) -> int:
        """Rows in the dataset."""
        return sum(self.row_group_rows)

    @cached_property
    def dataset_bytes(self) -> int:
        """In-memory size of the whole dataset (Parquet: uncompressed row-group sizes; IPC: the file)."""
        # From the footer read at open, which every scan checks still describes the file.
        if self.format == "parquet":
            meta = self._parquet_metadata
            return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        return self.nbytes

    @property
    def num_row_groups(self) -> int:
        """Row groups (Parquet) or record batches (IPC)."""
        return len(self.row_group_rows)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, {self.format}, {self.num_rows} rows in {self.num_row_groups} groups, "
            f"{self.nbytes} bytes)"
        )

    def scan(
        self,
        predicate: Any = None,
        columns: Sequence[str] | None = None,
        *,
        runtime: Runtime | None = None,
    ) -> ScanResult:
        """The rows matching ``predicate``, with ``columns``, read and filtered storage-side.

        ``predicate`` is what :func:`dpdpu.compute.filter` takes (expression
        text, a ``pyarrow.compute.Expression`` or a tree), or None for every
        row; ``columns`` lists the output columns in order (None: all of
        them).  Filtering and projection run as kernels on ``runtime`` (the
        current one by default).  The result equals
        ``table.filter(predicate).select(columns)`` in pyarrow, rows in file
        order.

        Raises:
            UnknownColumnError: the predicate or ``columns`` names a column
                the dataset lacks.
            ExpressionError: the predicate is otherwise invalid.
            InvalidArgumentError: ``columns`` is not a non-empty list of names.
            NoSuchFileError: the file was deleted since it was opened.
            CorruptDataError: the file's contents do not parse.
        """
        out_cols = self._output_columns(columns)
        tree = None if predicate is None else bind_predicate(predicate, self.schema)
        needed = set(out_cols) | (set(expr_columns(tree)) if tree is not None else set())
        read_cols = [n for n in self.schema.names if n in needed]
        rt = runtime or current_runtime()
        out_schema = pa.schema([self.schema.field(n) for n in out_cols])
        st = self.fs.stat(self.name)
        size = st.size
        if size != self.nbytes or st.ino != self._ino:
            # The footer read at open no longer describes the file.
            raise errors.CorruptDataError(
                f"dataset {self.name!r} changed since it was opened (replaced, or {self.nbytes} -> {size} bytes); "
                "open it again",
                op="scan",
            )
        source = _RangeFile(self.fs, self.name, size)
        parts: list[pa.Table] = []
        skipped = 0
        scanned = 0
        try:
            for piece in self._pieces(source, read_cols, tree):
                if piece is None:
                    skipped += 1
                    continue
                table = pa.Table.from_batches([piece]) if isinstance(piece, pa.RecordBatch) else piece
                scanned += table.nbytes
                if tree is not None:
                    table = dpdpu_filter(table, tree, runtime=rt)
                if table.num_rows:
                    parts.append(dpdpu_project(table, out_cols, runtime=rt))
        except errors.DpdpuError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise _corrupt(self.name, str(exc), "scan") from exc
        result = pa.concat_tables(parts) if parts else out_schema.empty_table()
        return ScanResult(
            table=result,
            bytes_read=source.bytes_read,
            bytes_returned=result.nbytes,
            row_groups=self.num_row_groups,
            row_groups_skipped=skipped,
            reads=source.reads,
            modeled_s=source.modeled_s,
            bytes_scanned=scanned,
            file_bytes=self.nbytes,
            dataset_bytes=self.dataset_bytes,
        )

    def _output_columns(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(self.schema.names)
        if isinstance(columns, str) or not isinstance(columns, Sequence):
            raise errors.InvalidArgumentError(f"columns must be a list of column names, not {columns!r}", op="scan")
        names = list(columns)
        if not names:
            raise errors.InvalidArgumentError("columns must name at least one column", op="scan")
        for name in names:
            _arrow.field_index(self.schema, name, "scan")
        return names

    def _pieces(self, source: _RangeFile, read_cols: list[str], tree: ast.Expr | None) -> Iterator[Any]:
        """Yield each row group's needed columns, or None for a group the statistics rule out."""
        if self.format == "parquet":
            meta = self._parquet_metadata
            # The footer was parsed at open; passing it keeps pyarrow from reading it again.
            reader = pq.ParquetFile(
                pa.PythonFile(source, mode="r"), metadata=meta, pre_buffer=True, page_checksum_verification=True
            )
            for i in range(meta.num_row_groups):
                if tree is not None and not _may_match(tree, self._stats(i)):
                    yield None
                    continue
                yield reader.read_row_group(i, columns=read_cols, use_threads=False)
            return
        indices = [self.schema.get_field_index(n) for n in read_cols]
        options = ipc.IpcReadOptions(included_fields=indices, use_threads=False)
        reader = ipc.open_file(pa.PythonFile(source, mode="r"), options=options)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            # IPC carries no checksums: damaged offsets must be caught here,
            # before kernels follow them.
            batch.validate(full=True)
            yield batch


# --- writing and opening ---------------------------------------------------------------------------


def write_dataset(
    fs: FileService,
    name: str,
    table: pa.Table,
    *,
    format: DatasetFormat = "parquet",
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    overwrite: bool = False,
) -> Dataset:
    """Store ``table`` as the file ``name`` of ``fs`` and make it durable; return it opened.

    The file is an Arrow IPC file (one record batch per ``row_group_rows``
    rows) or a Parquet file (row groups of ``row_group_rows`` rows, with
    min/max statistics and page checksums, which scans verify), serialized
    in memory and written with one
    ``fs.write`` followed by ``fs.flush``.  Missing parent directories are
    created.

    Raises:
        InvalidArgumentError: a bad ``format``, ``row_group_rows`` or ``table``
            (column names must be unique).
        FileExistsStorageError: ``name`` exists and ``overwrite`` is false.
        InvalidPathError: ``name`` is not a valid service path.
        DeviceFullError: the service has no room for the file.
    """
    if not isinstance(table, pa.Table):
        raise errors.InvalidArgumentError(f"expected a pyarrow.Table, got {type(table).__name__}", op="write_dataset")
    if format not in ("ipc", "parquet"):
        raise errors.InvalidArgumentError(f"format must be 'ipc' or 'parquet', not {format!r}", op="write_dataset")
    if isinstance(row_group_rows, bool) or not isinstance(row_group_rows, int) or row_group_rows < 1:
        raise errors.InvalidArgumentError(
            f"row_group_rows must be a positive integer, not {row_group_rows!r}", op="write_dataset"
        )
    if len(set(table.schema.names)) != len(table.schema.names):
        # Scans name columns; a repeated name could not be told apart.
        raise errors.InvalidArgumentError(
            f"column names must be unique, not {table.schema.names!r}", op="write_dataset"
        )
    parts = split_path(name)
    sink = pa.BufferOutputStream()
    if format == "parquet":
        pq.write_table(table, sink, row_group_size=row_group_rows, write_statistics=True, write_page_checksum=True)
    else:
        batches = table.to_batches(max_chunksize=row_group_rows)
        # The IPC footer locates batches but does not count their rows; noting
        # the counts there lets open_dataset learn them without reading batches.
        rows = json.dumps([b.num_rows for b in batches])
        with ipc.new_file(sink, table.schema, metadata={_IPC_ROWS_KEY: rows}) as writer:
            for batch in batches:
                writer.write_batch(batch)
    data = sink.getvalue()
    if len(parts) > 1:
        fs.mkdir("/".join(parts[:-1]), parents=True, exist_ok=True)
    if overwrite and fs.exists(name):
        fs.delete(name)
    fs.create(name)
    fs.write(name, 0, memoryview(data)).result()
    fs.flush().result()
    return open_dataset(fs, name)


def open_dataset(fs: FileService, name: str) -> Dataset:
    """Open the dataset stored as ``name`` in ``fs``, reading only its footer.

    The format is recognized from the file's magic bytes.

    Raises:
        NoSuchFileError: no such file.
        CorruptDataError: the file is neither a valid Arrow IPC file nor a
            valid Parquet file.
    """
    size = fs.stat(name).size
    source = _RangeFile(fs, name, size)
    if size >= 2 * len(_PARQUET_MAGIC) + 4 and source.read_at(0, 4) == _PARQUET_MAGIC:
        return _open_parquet(fs, name, source)
    if size >= 2 * 8 + 4 and source.read_at(0, len(_IPC_MAGIC)) == _IPC_MAGIC:
        return _open_ipc(fs, name, source)
    raise _corrupt(name, f"no Arrow IPC or Parquet magic at its start ({size} bytes)", "open_dataset")


def _open_parquet(fs: FileService, name: str, source: _RangeFile) -> Dataset:
    size = source.size()
    tail = source.read_at(size - _PARQUET_TAIL, _PARQUET_TAIL)
    if tail[4:] != _PARQUET_MAGIC:
        raise _corrupt(name, "no Parquet magic at its end (truncated?)", "open_dataset")
    (footer_len,) = struct.unpack("<I", tail[:4])
    if footer_len > size - _PARQUET_TAIL - len(_PARQUET_MAGIC):
        raise _corrupt(name, f"the Parquet footer length {footer_len} exceeds the file", "open_dataset")
    footer = source.read_at(size - _PARQUET_TAIL - footer_len, footer_len)
    try:
        # The footer alone, framed as a file, parses like the whole file's.
        meta = pq.read_metadata(pa.BufferReader(_PARQUET_MAGIC + footer + tail))
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as exc:
        raise _corrupt(name, f"the Parquet footer does not parse: {exc}", "open_dataset") from exc
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return Dataset(fs, name, "parquet", schema, size, rows, meta)


def _open_ipc(fs: FileService, name: str, source: _RangeFile) -> Dataset:
    try:
        reader = ipc.open_file(pa.PythonFile(source, mode="r"))
        schema = reader.schema
        rows = _noted_rows(reader.metadata, reader.num_record_batches)
        if rows is None:
            # Reading one column is enough to count the rows of files not written here.
            fields = [0] if len(schema) else []
            options = ipc.IpcReadOptions(included_fields=fields, use_threads=False)
            reader = ipc.open_file(pa.PythonFile(source, mode="r"), options=options)
            rows = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
    except (pa.ArrowException, OSError) as exc:
        raise _corrupt(name, str(exc), "open_dataset") from exc
    return Dataset(fs, name, "ipc", schema, source.size(), rows)


def _noted_rows(metadata: dict[bytes, bytes] | None, batches: int) -> list[int] | None:
    try:
        rows = json.loads((metadata or {})[_IPC_ROWS_KEY])
    except (KeyError, ValueError):
        return None
    if not isinstance(rows, list) or len(rows) != batches or not all(isinstance(r, int) and r >= 0 for r in rows):
        return None
    return rows


# --- statistics -----------------------------------------------------------------------------------


@dataclass
class _ColumnStats:
    num_values: int
    null_count: int | None
    min: Any
    max: Any


def _stats_type(t: pa.DataType) -> bool:
    """Types whose Parquet min/max, as Python values, order like the bound literals."""
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_float32(t)
        or pa.types.is_float64(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_boolean(t)
    )


def _group_stats(group: Any, schema: pa.Schema) -> dict[str, _ColumnStats]:
    out: dict[str, _ColumnStats] = {}
    for j in range(group.num_columns):
        chunk = group.column(j)
        path = chunk.path_in_schema
        # Nested columns have dotted paths and no usable statistics here.
        if path not in schema.names or not _stats_type(schema.field(path).type):
            continue
        st = chunk.statistics
        if st is None:
            continue
        lo = hi = None
        if st.has_min_max:
            lo, hi = st.min, st.max
            if _is_nan(lo) or _is_nan(hi):
                lo = hi = None
        null_count = st.null_count if st.has_null_count else None
        out[path] = _ColumnStats(group.num_rows, null_count, lo, hi)
    return out


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _may_match(e: ast.Expr, stats: dict[str, _ColumnStats]) -> bool:
    """False only when ``e`` is false or null for every row the statistics describe."""
    if isinstance(e, ast.And):
        return _may_match(e.left, stats) and _may_match(e.right, stats)
    if isinstance(e, ast.Or):
        return _may_match(e.left, stats) or _may_match(e.right, stats)
    if isinstance(e, ast.Literal):
        return e.value is not None and e.value is not False
    if isinstance(e, ast.IsNull) and isinstance(e.operand, ast.Column):
        st = stats.get(e.operand.name)
        if st is None or st.null_count is None:
            return True
        return st.null_count < st.num_values if e.negated else st.null_count > 0
    if isinstance(e, ast.Compare) and isinstance(e.left, ast.Column) and isinstance(e.right, ast.Literal):
        st = stats.get(e.left.name)
        if st is None:
            return True
        if st.null_count is not None and st.null_count >= st.num_values:
            return False  # comparisons with null are null: no row passes
        return _compare_may_match(e.op, st, e.right.value)
    if isinstance(e, ast.Between) and isinstance(e.operand, ast.Column):
        st = stats.get(e.operand.name)
        if st is None or not (isinstance(e.low, ast.Literal) and isinstance(e.high, ast.Literal)):
            return True
        return _compare_may_match(">=", st, e.low.value) and _compare_may_match("<=", st, e.high.value)
    if isinstance(e, ast.IsIn) and isinstance(e.operand, ast.Column):
        st = stats.get(e.operand.name)
        if st is None:
            return True
        for lit in e.values:
            if lit.value is None:
                if st.null_count is None or st.null_count > 0:
                    return True
            elif _compare_may_match("==", st, lit.value):
                return True
        return False
    # Not, column-to-column comparisons and anything else: no proof, so read.
    return True


def _compare_may_match(op: str, st: _ColumnStats, value: Any) -> bool:
    if op == "!=":
        return True  # rarely rules a group out, and NaN != anything holds
    if st.min is None or st.max is None or value is None or _is_nan(value):
        return st.min is None or st.max is None
    try:
        if op == "==":
            return bool(st.min <= value <= st.max)
        if op == "<":
            return bool(st.min < value)
        if op == "<=":
            return bool(st.min <= value)
        if op == ">":
            return bool(st.max > value)
        if op == ">=":
            return bool(st.max >= value)
    except TypeError:
        return True
    return True
