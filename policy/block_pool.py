"""The paged KV block pool: every block made up front, an O(1) free list that doubles as the
LRU eviction order, and a hash -> block map for the prefix cache.

Eviction is lazy: a freed block keeps its hash (so a later request can still hit it) until
it is popped from the free list for reuse. The list is intrusive (prev/next pointers live on
the blocks), so removing a block that a prefix hit revives is O(1), with no search.
"""

from __future__ import annotations

from policy.hashing import BlockHash


class KVCacheBlock:
    """One physical block: how many tables point at it, its prefix hash once full, and its
    links in the free list (intrusive, so moving a block costs no allocation)."""

    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev_free", "next_free")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None
        self.prev_free: KVCacheBlock | None = None
        self.next_free: KVCacheBlock | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock(id={self.block_id}, ref={self.ref_cnt}, hashed={self.block_hash is not None})"


class FreeBlockQueue:
    """Doubly linked list of free blocks. Head = least recently freed = next to be reused."""

    def __init__(self, blocks: list[KVCacheBlock]) -> None:
        self.num_free = len(blocks)
        # Sentinels avoid None checks at both ends.
        self._head = KVCacheBlock(-1)
        self._tail = KVCacheBlock(-1)
        prev = self._head
        for block in blocks:
            prev.next_free = block
            block.prev_free = prev
            prev = block
        prev.next_free = self._tail
        self._tail.prev_free = prev

    def popleft(self) -> KVCacheBlock:
        block = self._head.next_free
        if block is self._tail:
            raise IndexError("no free KV blocks")
        self._unlink(block)
        return block

    def remove(self, block: KVCacheBlock) -> None:
        self._unlink(block)

    def append(self, block: KVCacheBlock) -> None:
        last = self._tail.prev_free
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free += 1

    def _unlink(self, block: KVCacheBlock) -> None:
        block.prev_free.next_free = block.next_free
        block.next_free.prev_free = block.prev_free
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def __iter__(self):
        block = self._head.next_free
        while block is not self._tail:
            yield block
            block = block.next_free


class BlockPool:
    """Every KV block, created once; an O(1) free list that doubles as the LRU eviction order;
    and the hash -> block map of the prefix cache. A freed block keeps its hash (and stays
    findable) until the free list hands it out again, which is what makes a preempted or
    finished request's KV reusable for free."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"BlockPool needs at least one block, got num_blocks={num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[BlockHash, KVCacheBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.free_queue.num_free

    @property
    def usage(self) -> float:
        return 1.0 - self.free_queue.num_free / self.num_blocks

    def lookup(self, block_hash: BlockHash) -> KVCacheBlock | None:
        return self.cached.get(block_hash)

    def get_new_blocks(self, n: int) -> list[KVCacheBlock]:
        """Pop `n` blocks for writing; a popped block loses its stale hash here (lazy eviction)."""
        queue = self.free_queue
        if n > queue.num_free:
            raise ValueError(f"asked for {n} KV blocks with only {queue.num_free} free")
        # `queue.popleft()` n times, with the unlinking written out (the hot path of every
        # block boundary): the n blocks at the head leave the list in one relink.
        cached = self.cached
        head = queue._head
        block = head.next_free
        out = []
        for _ in range(n):
            if block.block_hash is not None:
                del cached[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
            block.prev_free = None
            block.next_free, block = None, block.next_free
        head.next_free = block
        block.prev_free = head
        queue.num_free -= n
        return out

    def get_new_block(self) -> KVCacheBlock:
        """`get_new_blocks(1)[0]`, for the commonest case (a decode crossing a block boundary)."""
        queue = self.free_queue
        head = queue._head
        block = head.next_free
        if block is queue._tail:
            raise ValueError("asked for 1 KV block with 0 free")
        if block.block_hash is not None:
            del self.cached[block.block_hash]
            block.block_hash = None
        block.ref_cnt = 1
        nxt = block.next_free
        head.next_free = nxt
        nxt.prev_free = head
        block.prev_free = block.next_free = None
        queue.num_free -= 1
        return block

    def touch(self, blocks: list[KVCacheBlock]) -> None:
        """Take a reference on prefix-hit blocks, reviving freed ones out of the free list."""
        remove = self.free_queue.remove
        for block in blocks:
            if block.ref_cnt == 0:
                remove(block)
            block.ref_cnt += 1

    def free_blocks(self, blocks_tail_first) -> None:
        """Drop one reference on each block; blocks reaching zero join the free list in the
        given order (callers pass a request's blocks tail first, so its tail is evicted first)."""
        # `queue.append(block)` for each, with the linking written out.
        queue = self.free_queue
        tail = queue._tail
        last = tail.prev_free
        added = 0
        for block in blocks_tail_first:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                last.next_free = block
                block.prev_free = last
                last = block
                added += 1
        if added:
            last.next_free = tail
            tail.prev_free = last
            queue.num_free += added

    def cache_block(self, block: KVCacheBlock, block_hash: BlockHash) -> None:
        """Publish a full block under its hash. If another block already holds the same
        content (two requests computed it concurrently) the first one stays canonical and
        this one stays private, keeping the hash map one to one."""
        if block.block_hash is None and block_hash not in self.cached:
            block.block_hash = block_hash
            self.cached[block_hash] = block

    def reset_prefix_cache(self) -> bool:
        """Forget every hash. Refused (returns False) while any block is in use, because a
        running request's blocks would silently lose their cache identity."""
        if self.free_queue.num_free != self.num_blocks:
            return False
        for block in self.cached.values():
            block.block_hash = None
        self.cached.clear()
        return True
