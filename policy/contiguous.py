"""Baseline: a contiguous KV allocator that reserves `max_model_len` slots per request.

This is how serving worked before paging (and what "paged vs contiguous" measures): the pool
is cut into fixed regions of `ceil(max_model_len / block_size)` consecutive blocks, and a
request holds a whole region from admission to finish whether it uses it or not. It speaks
the KVCacheManager interface so the same scheduler can drive it; it has no prefix cache.
"""

from __future__ import annotations

from policy.kv_cache_manager import PrefixCacheStats
from policy.request import Request
from policy.utils import cdiv


class ContiguousKVCacheManager:
    enable_caching = False

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.region_blocks = cdiv(max_model_len, block_size)
        self.num_regions = num_blocks // self.region_blocks
        if self.num_regions < 1:
            raise ValueError(
                f"contiguous KV: {num_blocks} blocks of {block_size} tokens cannot hold even one "
                f"max_model_len region ({self.region_blocks} blocks)"
            )
        self.free_regions = list(range(self.num_regions - 1, -1, -1))  # pop() gives region 0 first
        self.region_of: dict[str, int] = {}
        self.holders: dict[str, Request] = {}
        self.stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_regions) * self.region_blocks

    @property
    def num_used_blocks(self) -> int:
        """Blocks reserved by requests (used or not): what the pool can no longer give out."""
        return len(self.region_of) * self.region_blocks

    @property
    def used_tokens(self) -> dict[str, int]:
        """Tokens each holder has in its region (its computed tokens, read live: the
        scheduler skips the manager on decodes that need no new block)."""
        return {rid: r.num_computed_tokens for rid, r in self.holders.items()}

    @property
    def num_reserved_unused_blocks(self) -> int:
        return self.num_used_blocks - sum(self.blocks_for_tokens(n) for n in self.used_tokens.values())

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    @property
    def max_blocks_per_request(self) -> int:
        """A request lives in one region, whatever else is free."""
        return self.region_blocks

    def _region_ids(self, region: int) -> list[int]:
        start = region * self.region_blocks
        return list(range(start, start + self.region_blocks))

    def get_block_ids(self, request_id: str) -> list[int]:
        region = self.region_of.get(request_id)
        return [] if region is None else self._region_ids(region)

    def get_computed_blocks(self, request: Request) -> tuple[list, int]:
        return [], 0

    def record_admission(self, request: Request, num_hit_tokens: int) -> None:
        pass

    def peek_prefix_hit_tokens(self, request: Request) -> int:
        return 0

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks=(),
        num_new_computed_tokens: int = 0,
        reserve_tokens: int = 0,
        keep_free_blocks: int = 0,
    ) -> list[int] | None:
        rid = request.request_id
        if rid in self.region_of:
            return []
        if not self.free_regions or self.region_blocks + keep_free_blocks > self.num_free_blocks:
            return None
        region = self.free_regions.pop()
        request.num_kv_slots = self.region_blocks * self.block_size
        self.region_of[rid] = region
        self.holders[rid] = request
        return self._region_ids(region)

    def unpublish_uncomputed(self, request: Request, num_computed_tokens: int) -> None:
        pass  # nothing is ever published

    def free(self, request: Request) -> None:
        region = self.region_of.pop(request.request_id, None)
        request.num_kv_slots = 0
        if region is not None:
            del self.holders[request.request_id]
            self.free_regions.append(region)

    def fork(self, parent: Request, child: Request) -> int:
        raise ValueError("fork needs shared blocks, which the contiguous KV baseline does not have")

    def reset_prefix_cache(self) -> bool:
        return True
