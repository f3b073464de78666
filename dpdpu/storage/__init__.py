"""The storage engine: a block device over a file and a file service on top of it.

* :class:`BlockDevice` — SPDK-shaped asynchronous reads, writes and flushes
  with a bounded queue depth, run by C worker threads, completions by polling
  or futures, device time modeled from the profile's ``[storage]`` figures.
* :class:`FileService` — DDS-style files and directories on a block device,
  asynchronous (scatter/gather) reads and writes, crash-consistent through a
  write-ahead journal and metadata snapshots.
"""

from .bdev import BlockDevice, IOFuture, IOTiming, StorageModel, aligned_buffer
from .dataset import Dataset, ScanResult, open_dataset, write_dataset
from .dds import (
    CacheEntry,
    CacheMissError,
    CacheTable,
    DdsBackEnd,
    DdsFrontEnd,
    DdsRequest,
    DdsStats,
    RemoteRequestError,
)
from .fs import FileFuture, FileService, FileStat, split_path
from .scan_model import ScanModel, model_scan

__all__ = [
    "BlockDevice",
    "CacheEntry",
    "CacheMissError",
    "CacheTable",
    "Dataset",
    "DdsBackEnd",
    "DdsFrontEnd",
    "DdsRequest",
    "DdsStats",
    "FileFuture",
    "FileService",
    "FileStat",
    "IOFuture",
    "IOTiming",
    "RemoteRequestError",
    "ScanModel",
    "ScanResult",
    "StorageModel",
    "aligned_buffer",
    "model_scan",
    "open_dataset",
    "split_path",
    "write_dataset",
]
