"""Prefix-cache block hashes: a chain over full blocks, stable across processes and runs.

`h_i = H(h_{i-1} || tokens of block i || extra keys)`. Chaining makes a hit on block i imply
a hit on every block before it, so the longest cached prefix is simply the first miss in the
chain, found with flat dict lookups. xxh3-128 over the raw bytes is fast and, unlike
Python's `hash`, not salted per process, so two engines (or two runs) agree on every hash.
"""

from __future__ import annotations

from array import array

import xxhash

BlockHash = bytes

# The parent of the first block. A constant (not random) so hashes are reproducible.
ROOT_HASH: BlockHash = b"folovllm-prefix-root"


def hash_block(parent: BlockHash, token_ids: list[int], extra: bytes = b"") -> BlockHash:
    """Hash one full block given its parent's hash; `extra` isolates caches (cache salt)."""
    return xxhash.xxh3_128_digest(parent + array("q", token_ids).tobytes() + extra)


def extend_block_hashes(hashes: list[BlockHash], token_ids: list[int], block_size: int, salt: str | None) -> None:
    """Grow `hashes` in place to cover every full block of `token_ids` (each block is hashed
    once, when it first becomes full). The salt enters the first block only, which is enough
    to separate whole chains."""
    num_full = len(token_ids) // block_size
    i = len(hashes)
    if i >= num_full:
        return
    parent = hashes[-1] if hashes else ROOT_HASH
    digest = xxhash.xxh3_128_digest
    while i < num_full:
        start = i * block_size
        data = parent + array("q", token_ids[start : start + block_size]).tobytes()
        if i == 0 and salt:
            data += salt.encode()
        parent = digest(data)
        hashes.append(parent)
        i += 1
