"""Copies between vLLM's paged KV cache and the KV tier's layer layout.

vLLM keeps one tensor per attention layer whose logical shape is
``[num_blocks, kv_heads, block_size, 2 * head_dim]`` (keys in the first
``head_dim`` channels, values in the second; the physical order may differ,
the logical indexing does not).  A request's token ``t`` lives in logical
block ``block_ids[t // block_size]`` at offset ``t % block_size``; when the
attention kernel pages at a smaller block size, each logical block is
``block_size // kernel_block_size`` consecutive kernel blocks.

The tier holds a layer as ``[2, tokens, kv_heads, head_dim]`` (keys, then
values).  :func:`gather` and :func:`scatter` move a token range between the
two by advanced indexing on the cache's own device: pure copies, so a round
trip is bit-exact for every dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ... import errors

__all__ = ["PagedLayout", "gather", "scatter", "to_numpy"]


class PagedLayout:
    """Where a request's tokens live in a paged cache.

    Args:
        block_size: tokens per logical block (the scheduler's block size).
        kernel_block_size: tokens per block of the cache tensor (divides ``block_size``).
    """

    def __init__(self, block_size: int, kernel_block_size: int) -> None:
        if kernel_block_size <= 0 or block_size % kernel_block_size:
            raise errors.InvalidArgumentError(
                f"the cache's block size {kernel_block_size} does not divide the scheduler's {block_size}"
            )
        self.block_size = block_size
        self.kernel_block_size = kernel_block_size

    def slots(self, block_ids: list[int], start: int, end: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(kernel block, offset) of every token in ``[start, end)``, as index tensors on ``device``."""
        if not 0 <= start <= end or end > len(block_ids) * self.block_size:
            raise errors.InvalidArgumentError(
                f"tokens [{start}, {end}) do not lie in {len(block_ids)} blocks of {self.block_size}"
            )
        t = torch.arange(start, end, dtype=torch.int64)
        logical = torch.tensor(block_ids, dtype=torch.int64)[t // self.block_size]
        offset = t % self.block_size
        ratio = self.block_size // self.kernel_block_size
        kblock = logical * ratio + offset // self.kernel_block_size
        return kblock.to(device), (offset % self.kernel_block_size).to(device)


def gather(cache: torch.Tensor, layout: PagedLayout, block_ids: list[int], start: int, end: int) -> torch.Tensor:
    """Tokens ``[start, end)`` of one layer's paged ``cache`` as a host tensor ``[2, n, kv_heads, head_dim]``."""
    blocks, offsets = layout.slots(block_ids, start, end, cache.device)
    rows = cache[blocks, :, offsets]  # [n, kv_heads, 2 * head_dim]
    n, heads, channels = rows.shape
    tier = rows.view(n, heads, 2, channels // 2).permute(2, 0, 1, 3)
    return tier.to("cpu").contiguous()


def scatter(cache: torch.Tensor, layout: PagedLayout, block_ids: list[int], start: int, data: torch.Tensor) -> None:
    """Write ``data`` (``[2, n, kv_heads, head_dim]``, on any device) over tokens ``[start, start + n)``."""
    n = int(data.shape[1])
    blocks, offsets = layout.slots(block_ids, start, start + n, cache.device)
    _, _, heads, dim = data.shape
    rows = data.to(cache.device).permute(1, 2, 0, 3).reshape(n, heads, 2 * dim)
    cache[blocks, :, offsets] = rows


def to_numpy(tier: torch.Tensor) -> np.ndarray[Any, Any]:
    """A host tensor as the numpy array the KV tier takes (bf16 as its ``uint16`` bits)."""
    out: np.ndarray[Any, Any] = (
        tier.view(torch.int16).numpy().view(np.uint16) if tier.dtype == torch.bfloat16 else tier.numpy()
    )
    return out


def from_numpy(arr: np.ndarray[Any, Any], dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`to_numpy` (no copy)."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)
