"""The compute engine: built-in ops placed on hardware engines, Arm cores or the host.

>>> import dpdpu
>>> blob = dpdpu.compute.compress(b"hello " * 1000)
>>> dpdpu.compute.decompress(blob) == b"hello " * 1000
True
"""

from .codecs import CODECS, compress, crc32c, decompress, memcpy
from .kernels import aggregate, filter, partition, project
from .pipeline import Pipeline

__all__ = [
    "CODECS",
    "Pipeline",
    "aggregate",
    "compress",
    "crc32c",
    "decompress",
    "filter",
    "memcpy",
    "partition",
    "project",
]
