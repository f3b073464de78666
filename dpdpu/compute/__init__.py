"""The compute engine: built-in ops placed on hardware engines, Arm cores or the host.

>>> import dpdpu
>>> blob = dpdpu.compute.compress(b"hello " * 1000)
>>> dpdpu.compute.decompress(blob) == b"hello " * 1000
True
"""

from .codecs import CODECS, compress, crc32c, decompress, memcpy

__all__ = ["CODECS", "compress", "crc32c", "decompress", "memcpy"]
