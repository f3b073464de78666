"""Where the Flight endpoint keeps datasets: DPU memory, or the storage engine.

Without a data directory a dataset is the list of record batches it was
uploaded as, charged to the runtime device's memory: each upload reserves a
:class:`~dpdpu.runtime.device.DeviceBuffer` of its size through
:meth:`~dpdpu.runtime.runtime.Runtime.alloc` (the device API reserves memory
by allocating it; the batches themselves stay where Arrow received them, and
the emulator's allocation is not touched, so it costs no resident memory),
so every endpoint and task on the runtime shares one limit and the device's
``memory_used`` includes the stored datasets.  The reservation is released
when the dataset is dropped or replaced or the endpoint closes (once no
query in progress still reads the old batches); a replace needs room for the
new version while the old one is still stored.  A query
streams those batches (filtered and projected by the dpdpu kernels on the
endpoint's runtime when the ticket asks for it) and a plain read hands them
to Flight as they are, without a copy.

With a data directory the datasets are files of a
:class:`~dpdpu.storage.fs.FileService` (``datasets/<name>.<version>.<format>``)
written by :func:`~dpdpu.storage.dataset.write_dataset` and read with
:meth:`~dpdpu.storage.dataset.Dataset.scan` (predicate and column pushdown).
An upload is written as a new version in full, flushed, and only then made
the dataset's current version (the old file is deleted after), so a failed
or interrupted upload leaves nothing visible; on reopening, the highest
complete version of each name wins.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .. import errors
from ..compute.expr import bind_predicate
from ..compute.expr import columns as expr_columns
from ..compute.kernels import filter as dpdpu_filter
from ..compute.kernels import project as dpdpu_project
from ..errors import clip, shown
from ..runtime.device import DeviceBuffer
from ..runtime.runtime import Runtime
from ..storage.dataset import Dataset, open_dataset, write_dataset
from ..storage.fs import FileService
from .flight_tickets import PutRequest, invalid

__all__ = [
    "Catalog",
    "DatasetCapacityError",
    "DatasetCounters",
    "DatasetNotFoundError",
    "Query",
    "StoredDataset",
    "UploadAbortedError",
]

_DIR = "datasets"


class DatasetNotFoundError(errors.DpdpuError, KeyError):
    """No dataset of that name is stored at the endpoint."""

    wire_status = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.detail


class UploadAbortedError(errors.DpdpuError):
    """An upload's stream broke off (the client vanished or cancelled): nothing of it was stored."""

    wire_status = "CANCELLED"


class DatasetCapacityError(errors.DeviceMemoryError):
    """A dataset does not fit in the DPU memory the device profile declares."""


@dataclass
class DatasetCounters:
    """Per-dataset traffic: what the queries touched against what they sent back."""

    requests: int = 0
    bytes_read: int = 0
    bytes_returned: int = 0
    rows_returned: int = 0


@dataclass
class StoredDataset:
    """One stored dataset (its current version)."""

    name: str
    schema: pa.Schema
    num_rows: int
    nbytes: int
    where: str  # "memory", "parquet" or "ipc"
    batches: list[pa.RecordBatch] | None = None
    #: device memory charged for ``batches`` (one reservation per upload appended)
    reservations: list[DeviceBuffer] = field(default_factory=list)
    file: str | None = None
    dataset: Dataset | None = None
    version: int = 0
    counters: DatasetCounters = field(default_factory=DatasetCounters)


@dataclass
class Query:
    """What a query streams: a whole table, or batches produced as they are read."""

    schema: pa.Schema
    table: pa.Table | None = None
    batches: Iterator[pa.RecordBatch] | None = None


class Catalog:
    """The datasets of one endpoint, by name; safe to use from many threads."""

    def __init__(self, runtime: Runtime, data_dir: str | os.PathLike[str] | None) -> None:
        self.runtime = runtime
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # uploads to the file service, one at a time
        self._sets: dict[str, StoredDataset] = {}
        self._version = 0
        self.fs: FileService | None = None
        if data_dir is not None:
            self.fs = FileService(data_dir, device=runtime.device.profile)
            try:
                self._load()
            except BaseException:
                self.fs.close()
                raise

    # --- life cycle -------------------------------------------------------------------------

    def _load(self) -> None:
        assert self.fs is not None
        if not self.fs.exists(_DIR):
            return
        found: dict[str, list[tuple[int, str]]] = {}
        for file in self.fs.listdir(_DIR):
            parts = file.rsplit(".", 2)
            if len(parts) == 3 and parts[1].isdigit() and parts[2] in ("parquet", "ipc"):
                found.setdefault(parts[0], []).append((int(parts[1]), f"{_DIR}/{file}"))
        stale: list[str] = []
        for name, versions in found.items():
            versions.sort()
            self._version = max(self._version, versions[-1][0])
            while versions:
                version, path = versions.pop()
                try:
                    ds = open_dataset(self.fs, path)
                except errors.CorruptDataError:
                    stale.append(path)  # an upload that failed part way: the version before it stands
                    continue
                self._sets[name] = self._file_entry(name, ds, version)
                break
            # versions an upload replaced but did not get to delete
            stale.extend(path for _, path in versions)
        for path in stale:
            self.fs.delete(path)
        if stale:
            self.fs.flush().result()

    def close(self) -> None:
        """Release the file service (memory datasets are simply dropped)."""
        with self._lock:
            self._sets.clear()
        if self.fs is not None:
            self.fs.close()

    # --- lookups ------------------------------------------------------------------------------

    def get(self, name: str) -> StoredDataset:
        """The dataset ``name`` (``DatasetNotFoundError`` if none)."""
        with self._lock:
            stored = self._sets.get(name)
        if stored is None:
            raise DatasetNotFoundError(f"no dataset named {name!r} at this endpoint", op="flight")
        return stored

    def datasets(self) -> list[StoredDataset]:
        """Every stored dataset (its current version), by name."""
        with self._lock:
            return [self._sets[name] for name in sorted(self._sets)]

    def names(self) -> list[str]:
        """Names of the stored datasets, sorted."""
        with self._lock:
            return sorted(self._sets)

    @property
    def memory_bytes(self) -> int:
        """Bytes of DPU memory the in-memory datasets hold."""
        with self._lock:
            return sum(s.nbytes for s in self._sets.values() if s.where == "memory")

    def memory_limit(self) -> int | None:
        """Bytes this endpoint's in-memory datasets could hold in all: what they hold plus what is free.

        None: the device has no memory limit.  The free part is shared with
        every other user of the runtime's device.
        """
        device = self.runtime.device
        capacity = device.memory_capacity
        return None if capacity is None else self.memory_bytes + max(0, capacity - device.memory_used)

    def _reserve(self, req: PutRequest, nbytes: int) -> list[DeviceBuffer]:
        """Charge ``nbytes`` to the device's memory ([] for nothing: the device refuses empty buffers)."""
        if nbytes <= 0:
            return []
        try:
            return [self.runtime.alloc(nbytes)]
        except errors.DeviceMemoryError as exc:
            device = self.runtime.device
            capacity = device.memory_capacity
            free = "?" if capacity is None else max(0, capacity - device.memory_used)
            raise DatasetCapacityError(
                f"dataset {req.dataset!r} needs {nbytes} bytes of DPU memory but only {free} of {capacity} are free",
                device=device.label,
                op="do_put",
            ) from exc

    # --- changes -------------------------------------------------------------------------------

    def put(
        self,
        req: PutRequest,
        schema: pa.Schema,
        batches: list[pa.RecordBatch],
        aborted: Callable[[], bool] | None = None,
    ) -> StoredDataset:
        """Store an upload under ``req.mode``; return the dataset's new current version.

        ``aborted`` is asked first, and for a file upload once more just
        before the new version is made current: a stream that broke off (also
        while it was being written) must not replace the dataset
        (``UploadAbortedError``; the old version stands).
        """
        self._check_aborted(req, aborted)
        if len(set(schema.names)) != len(schema.names):
            raise invalid(f"column names of a dataset must be unique, not {schema.names}")
        if self.fs is None:
            return self._put_memory(req, schema, batches, aborted)
        return self._put_file(req, schema, batches, aborted)

    @staticmethod
    def _check_aborted(req: PutRequest, aborted: Callable[[], bool] | None) -> None:
        if aborted is not None and aborted():
            raise UploadAbortedError(
                f"the upload of dataset {req.dataset!r} broke off before it ended; nothing was stored", op="do_put"
            )

    def _check_mode(self, req: PutRequest, old: StoredDataset | None, schema: pa.Schema) -> None:
        if old is not None and req.mode == "create":
            raise invalid(f"dataset {req.dataset!r} exists already (mode 'create'); use mode 'replace' or 'append'")
        if old is not None and req.mode == "append" and not old.schema.equals(schema):
            raise invalid(
                f"schema mismatch: appending to dataset {req.dataset!r} needs its schema\n{clip(str(old.schema))}\n"
                f"but the upload declares\n{clip(str(schema))}"
            )

    def _put_memory(
        self,
        req: PutRequest,
        schema: pa.Schema,
        batches: list[pa.RecordBatch],
        aborted: Callable[[], bool] | None,
    ) -> StoredDataset:
        added = sum(b.get_total_buffer_size() for b in batches)
        with self._lock:
            old = self._sets.get(req.dataset)
            self._check_mode(req, old, schema)
            reserved = self._reserve(req, added)
            rows = sum(b.num_rows for b in batches)
            if old is not None and req.mode == "append":
                assert old.batches is not None
                stored = StoredDataset(
                    req.dataset,
                    old.schema,
                    old.num_rows + rows,
                    old.nbytes + added,
                    "memory",
                    batches=[*old.batches, *batches],
                    reservations=[*old.reservations, *reserved],
                )
            else:
                stored = StoredDataset(
                    req.dataset, schema, rows, added, "memory", batches=list(batches), reservations=reserved
                )
            if old is not None:
                stored.counters = old.counters
            self._sets[req.dataset] = stored
            return stored

    def _file_entry(self, name: str, ds: Dataset, version: int) -> StoredDataset:
        return StoredDataset(
            name, ds.schema, ds.num_rows, ds.nbytes, ds.format, file=ds.name, dataset=ds, version=version
        )

    def _put_file(
        self,
        req: PutRequest,
        schema: pa.Schema,
        batches: list[pa.RecordBatch],
        aborted: Callable[[], bool] | None,
    ) -> StoredDataset:
        assert self.fs is not None
        table = pa.Table.from_batches(batches, schema=schema)
        with self._write_lock:
            with self._lock:
                old = self._sets.get(req.dataset)
                self._check_mode(req, old, schema)
                self._version += 1
                version = self._version
            if old is not None and req.mode == "append":
                assert old.dataset is not None
                table = pa.concat_tables([old.dataset.scan(runtime=self.runtime).table, table])
            path = f"{_DIR}/{req.dataset}.{version}.{req.format}"
            try:
                ds = write_dataset(self.fs, path, table, format=req.format)
                # Writing takes a while: a client lost meanwhile must not win.
                self._check_aborted(req, aborted)
            except BaseException:
                self._discard(path)
                raise
            stored = self._file_entry(req.dataset, ds, version)
            with self._lock:
                if old is not None:
                    stored.counters = old.counters
                self._sets[req.dataset] = stored
            if old is not None and old.file is not None:
                self.fs.delete(old.file)
                self.fs.flush().result()
            return stored

    def _discard(self, path: str) -> None:
        """Remove what a failed upload left (best effort: the next open drops it anyway)."""
        assert self.fs is not None
        try:
            if self.fs.exists(path):
                self.fs.delete(path)
                self.fs.flush().result()
        except errors.DpdpuError:
            pass

    def drop(self, name: str) -> bool:
        """Delete the dataset ``name``; False if there was none."""
        with self._write_lock:
            with self._lock:
                stored = self._sets.pop(name, None)
            if stored is None:
                return False
            if self.fs is not None and stored.file is not None:
                self.fs.delete(stored.file)
                self.fs.flush().result()
            return True

    # --- queries --------------------------------------------------------------------------------

    def query(self, stored: StoredDataset, predicate: Any, columns: Sequence[str] | None) -> Query:
        """Run ``predicate`` and ``columns`` against ``stored`` on the runtime; count the traffic.

        Raises ExpressionError (and subclasses) for a bad predicate or column
        before anything is streamed.
        """
        rt = self.runtime
        counters = stored.counters
        cols = list(columns) if columns is not None else None
        if cols is not None:
            for name in cols:
                if stored.schema.get_field_index(name) < 0:
                    raise errors.UnknownColumnError(
                        f"no column {shown(name)} in dataset {stored.name!r}; it has {shown(stored.schema.names)}",
                        op="flight",
                    )
        if stored.dataset is not None:
            result = stored.dataset.scan(predicate, cols, runtime=rt)
            self._count(counters, result.bytes_read, result.table)
            return Query(result.table.schema, table=result.table)
        assert stored.batches is not None
        out_schema = stored.schema if cols is None else pa.schema([stored.schema.field(c) for c in cols])
        if predicate is None:
            table = pa.Table.from_batches(stored.batches, schema=stored.schema)
            if cols is not None:
                table = dpdpu_project(table, cols, runtime=rt)
            self._count(counters, table.nbytes, table)
            return Query(out_schema, table=table)
        tree = bind_predicate(predicate, stored.schema)
        # Only the columns the predicate and the output name are touched: the
        # kernels then filter (and copy) nothing else.
        needed = set(expr_columns(tree)) | set(cols if cols is not None else stored.schema.names)
        read_cols = [n for n in stored.schema.names if n in needed]
        return Query(out_schema, batches=self._filtered(stored.batches, tree, read_cols, cols, counters))

    def _filtered(
        self,
        batches: list[pa.RecordBatch],
        tree: Any,
        read_cols: list[str],
        cols: list[str] | None,
        counters: DatasetCounters,
    ) -> Iterator[pa.RecordBatch]:
        rt = self.runtime
        with self._lock:
            counters.requests += 1
        for batch in batches:
            if len(read_cols) != batch.num_columns:
                batch = batch.select(read_cols)
            out = dpdpu_filter(batch, tree, runtime=rt)
            if cols is not None and out.schema.names != cols:
                out = dpdpu_project(out, cols, runtime=rt)
            with self._lock:
                counters.bytes_read += batch.nbytes
                counters.bytes_returned += out.nbytes
                counters.rows_returned += out.num_rows
            if out.num_rows:
                yield out

    def _count(self, counters: DatasetCounters, read: int, table: pa.Table) -> None:
        with self._lock:
            counters.requests += 1
            counters.bytes_read += read
            counters.bytes_returned += table.nbytes
            counters.rows_returned += table.num_rows

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per dataset: where it lives, its size and its traffic counters."""
        with self._lock:
            return {
                name: {
                    "where": s.where,
                    "rows": s.num_rows,
                    "bytes": s.nbytes,
                    "requests": s.counters.requests,
                    "bytes_read": s.counters.bytes_read,
                    "bytes_returned": s.counters.bytes_returned,
                    "rows_returned": s.counters.rows_returned,
                }
                for name, s in sorted(self._sets.items())
            }
