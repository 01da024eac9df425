"""Per-request KV block tables on top of the block pool, plus the prefix-cache lookup.

`allocate_slots` is check-then-commit: it computes every block the call needs (counting
prefix-hit blocks that sit in the free list, since reviving them takes them out of it),
returns None with no side effects when that does not fit, and only then takes hits, pops
new blocks and publishes newly full blocks under their hashes.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy.block_pool import BlockPool, KVCacheBlock
from policy.hashing import extend_block_hashes
from policy.request import Request
from policy.utils import cdiv

NO_BLOCKS: list[int] = []  # shared and never mutated: allocations that append no block


@dataclass
class PrefixCacheStats:
    """Token counts over admissions: how many prompt tokens were looked up, how many hit."""

    queries_tokens: int = 0
    hit_tokens: int = 0
    num_queries: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queries_tokens if self.queries_tokens else 0.0


class _RequestBlocks:
    """A request's block table and how many of its leading blocks are already published."""

    __slots__ = ("blocks", "block_ids", "num_cached")

    def __init__(self) -> None:
        self.blocks: list[KVCacheBlock] = []
        self.block_ids: list[int] = []
        self.num_cached = 0


class KVCacheManager:
    """Per-request block tables over one shared `BlockPool`, and the prefix cache on top.

    The scheduler asks it three things: which leading blocks of a waiting request are already
    cached (`get_computed_blocks`), whether `n` more tokens fit (`allocate_slots`, all or
    nothing: a refusal changes nothing), and to give a request's blocks back (`free`, tail
    first so the LRU order evicts a request's last blocks before its shared prefix). Full
    blocks are published under their chained hash as soon as their tokens are scheduled, so
    requests admitted later in the same step can already hit them.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.tables: dict[str, _RequestBlocks] = {}
        self.stats = PrefixCacheStats()

    # -- queries ----------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.free_queue.num_free

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_blocks - self.pool.free_queue.num_free

    @property
    def usage(self) -> float:
        return self.pool.usage

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    @property
    def max_blocks_per_request(self) -> int:
        """The most blocks one request can ever hold: the whole pool."""
        return self.pool.num_blocks

    def get_block_ids(self, request_id: str) -> list[int]:
        table = self.tables.get(request_id)
        return list(table.block_ids) if table else []

    def get_blocks(self, request_id: str) -> list[KVCacheBlock]:
        table = self.tables.get(request_id)
        return list(table.blocks) if table else []

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of the request's tokens, in whole blocks. At most
        `num_tokens - 1` tokens can hit: the last token is always recomputed so the step
        has a position to sample from."""
        if not self.enable_caching:
            return [], 0
        bs = self.block_size
        tokens = request.all_token_ids
        extend_block_hashes(request.block_hashes, tokens, bs, request.cache_salt)
        max_hit_blocks = (len(tokens) - 1) // bs
        lookup = self.pool.cached.get
        hits: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[:max_hit_blocks]:
            block = lookup(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * bs

    def record_admission(self, request: Request, num_hit_tokens: int) -> None:
        if self.enable_caching:
            self.stats.num_queries += 1
            self.stats.queries_tokens += request.num_tokens
            self.stats.hit_tokens += num_hit_tokens

    # -- allocation ---------------------------------------------------------------------
    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] = (),  # type: ignore[assignment]
        num_new_computed_tokens: int = 0,
        reserve_tokens: int = 0,
        keep_free_blocks: int = 0,
    ) -> list[int] | None:
        """Make room for `num_new_tokens` more tokens after the computed prefix (including
        `num_new_computed_tokens` of prefix hits held by `new_computed_blocks`).

        Returns the ids of blocks appended to the table (possibly empty), or None when it
        does not fit, in which case nothing changed. `reserve_tokens` (>= the tokens
        allocated now) only has to *fit*, with `keep_free_blocks` left over: the admission
        guard that keeps a long prompt from being admitted for one chunk and then preempted.
        """
        table = self.tables.get(request.request_id)
        if table is None:
            table = self.tables[request.request_id] = _RequestBlocks()
        num_held = len(table.blocks) + len(new_computed_blocks)
        total = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        bs = self.block_size
        num_new = cdiv(total, bs) - num_held
        if num_new <= 0 and not new_computed_blocks:
            # Fast path (almost every decode step): the last block still has room.
            if self.enable_caching and (total if total < request.num_tokens else request.num_tokens) // bs > table.num_cached:
                self._cache_full_blocks(request, table, total)
            return NO_BLOCKS
        if num_new == 1 and not new_computed_blocks and not reserve_tokens and not keep_free_blocks:
            # One more block, e.g. a decode crossing a block boundary (the general path below,
            # written out for the case that happens once every block_size steps per request).
            pool = self.pool
            if not pool.free_queue.num_free:
                if not table.blocks:
                    del self.tables[request.request_id]
                return None
            block = pool.get_new_block()
            table.blocks.append(block)
            table.block_ids.append(block.block_id)
            request.num_kv_slots = len(table.blocks) * bs
            if self.enable_caching:
                self._cache_full_blocks(request, table, total)
            return [block.block_id]
        num_new = max(num_new, 0)
        num_revived = 0
        for block in new_computed_blocks:
            if block.ref_cnt == 0:
                num_revived += 1
        need = num_new + num_revived
        if reserve_tokens:
            reserve_total = request.num_computed_tokens + num_new_computed_tokens + reserve_tokens
            need = max(need, cdiv(reserve_total, bs) - num_held + num_revived)
        if need + keep_free_blocks > self.pool.free_queue.num_free:
            if not table.blocks:
                del self.tables[request.request_id]
            return None

        pool = self.pool
        if new_computed_blocks:
            pool.touch(new_computed_blocks)
            table.blocks.extend(new_computed_blocks)
            table.block_ids.extend(b.block_id for b in new_computed_blocks)
            table.num_cached = len(table.blocks)
        new_blocks = pool.get_new_blocks(num_new) if num_new else []
        new_ids = [b.block_id for b in new_blocks]
        table.blocks.extend(new_blocks)
        table.block_ids.extend(new_ids)
        request.num_kv_slots = len(table.blocks) * bs
        if self.enable_caching:
            self._cache_full_blocks(request, table, total)
        if new_computed_blocks:
            return [b.block_id for b in new_computed_blocks] + new_ids
        return new_ids

    def grow_by_one_block(self, request: Request) -> bool:
        """Append one new block to a request whose computed tokens fill all its blocks, as
        `allocate_slots(request, 1)` does then when caching is off (nothing to publish);
        False, changing nothing, when the pool is empty. The simulator's bulk steps call this
        at every decode block boundary."""
        if self.enable_caching:
            raise ValueError("grow_by_one_block: with prefix caching a block boundary publishes; use allocate_slots")
        pool = self.pool
        if not pool.free_queue.num_free:
            return False
        table = self.tables[request.request_id]
        block = pool.get_new_block()
        table.blocks.append(block)
        table.block_ids.append(block.block_id)
        request.num_kv_slots = len(table.blocks) * self.block_size
        return True

    def _cache_full_blocks(self, request: Request, table: _RequestBlocks, num_computed_after: int) -> None:
        """Publish blocks that become full once this step's tokens are computed (only tokens
        already known can be hashed)."""
        num_full = min(num_computed_after, request.num_tokens) // self.block_size
        if num_full <= table.num_cached:
            return
        extend_block_hashes(request.block_hashes, request.all_token_ids, self.block_size, request.cache_salt)
        hashes = request.block_hashes
        cache_block = self.pool.cache_block
        blocks = table.blocks
        for i in range(table.num_cached, num_full):
            cache_block(blocks[i], hashes[i])
        table.num_cached = num_full

    def unpublish_uncomputed(self, request: Request, num_computed_tokens: int) -> None:
        """Withdraw the hashes of blocks published for tokens past `num_computed_tokens`.

        `allocate_slots` publishes a block as soon as the step that fills it is scheduled.
        When that step is then taken back (the request is preempted later in the same
        `schedule()`), those tokens are never computed, so the blocks must not stay findable.
        Such blocks were only ever this request's (nothing hits in a step that preempts)."""
        table = self.tables.get(request.request_id)
        first = num_computed_tokens // self.block_size
        if table is None or table.num_cached <= first:
            return
        cached = self.pool.cached
        for block in table.blocks[first : table.num_cached]:
            if block.block_hash is not None and cached.get(block.block_hash) is block:
                del cached[block.block_hash]
                block.block_hash = None
        table.num_cached = first

    def free(self, request: Request) -> None:
        """Release the request's blocks tail first, so its tail is evicted before its prefix
        (the prefix is the part other requests are likely to share)."""
        table = self.tables.pop(request.request_id, None)
        request.num_kv_slots = 0
        if table is not None:
            self.pool.free_blocks(reversed(table.blocks))

    def fork(self, parent: Request, child: Request) -> int:
        """Share the parent's full blocks with `child` (parallel sampling).

        Copy-on-write at block granularity: full blocks are immutable, so they are shared by
        reference count; the partial tail block, the only one a later write would touch, is
        not shared, and the child recomputes those few tokens instead of copying them (so
        the executor never needs a block-copy operation). Returns the child's computed
        tokens."""
        if child.request_id in self.tables:
            raise ValueError(f"fork: child {child.request_id!r} already holds KV blocks")
        parent_table = self.tables.get(parent.request_id)
        num_full = min(parent.num_computed_tokens, child.num_tokens - 1) // self.block_size
        shared = parent_table.blocks[:num_full] if parent_table else []
        table = self.tables[child.request_id] = _RequestBlocks()
        self.pool.touch(shared)
        table.blocks = list(shared)
        table.block_ids = [b.block_id for b in shared]
        table.num_cached = min(num_full, parent_table.num_cached) if parent_table else 0
        child.num_kv_slots = len(shared) * self.block_size
        return len(shared) * self.block_size

    def reset_prefix_cache(self) -> bool:
        ok = self.pool.reset_prefix_cache()
        if ok:
            self.stats = PrefixCacheStats()
        return ok

    def peek_prefix_hit_tokens(self, request: Request) -> int:
        """Hit length without side effects (for the longest-prefix-match queue policy)."""
        return self.get_computed_blocks(request)[1]
