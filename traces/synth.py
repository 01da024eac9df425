"""Deterministic token ids for traces that carry lengths (and maybe prefix hashes) but no text.

Token j of a block with hash id h is a 64-bit mix of (h, j): equal hash ids give equal
tokens in every engine and run, distinct ids give different blocks (a 16-token collision
has probability about vocab^-16), and because tokens depend on the *trace's* hash ids and
positions, any KV block size of the engine sees exactly the sharing the trace describes.
Requests without hashes get a private id derived from their request id, so they never share
a prefix by accident. Everything is vectorised with numpy (about 20 ns a token, see experiments/bench_traces).
"""

from __future__ import annotations

from array import array

import numpy as np
import xxhash

from policy.utils import cdiv

FIRST_TOKEN = 4  # keep clear of the usual special ids (pad/bos/eos/unk) at the bottom
_PRIVATE_DOMAIN = np.uint64(1 << 63)
_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)
_S29, _S32 = np.uint64(29), np.uint64(32)  # request-private "hash ids" never equal a trace's ids


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a cheap bijection on uint64 that scrambles every bit."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _tokens(block_keys: np.ndarray, block_len: int, prompt_len: int, vocab_size: int) -> list[int]:
    """Token j of block k is mix(mix(block_keys[k]) + j), mapped onto [FIRST_TOKEN, vocab_size).
    The per-block mix runs once per block, the per-token one once per token: about 20 ns a
    token, list conversion included."""
    span = vocab_size - FIRST_TOKEN
    if span < 2:
        raise ValueError(f"vocab_size={vocab_size} is too small to synthesise prompts (need > {FIRST_TOKEN + 1})")
    with np.errstate(over="ignore"):
        z = np.repeat(_mix64(block_keys), block_len)[:prompt_len]
        # per token: a light in-place multiply-xorshift of (scrambled block key + position)
        z += _offsets(block_len, prompt_len)
        z *= _M1
        z ^= z >> _S29
        z *= _M2
        z >>= _S32  # top 32 bits, uniform
        z *= np.uint64(span)  # multiply-shift maps them onto the span (cheaper than a 64-bit modulo)
        z >>= _S32
        z += np.uint64(FIRST_TOKEN)
    return z


_OFFSET_CACHE: dict[int, np.ndarray] = {}


def _offsets(block_len: int, prompt_len: int) -> np.ndarray:
    """Position inside its block, times the golden ratio, for every prompt position:
    (j % block_len) * M1. One array per block length, grown to the longest prompt seen and
    sliced (a cache keyed by prompt length too held hundreds of MB on traces whose prompt
    lengths rarely repeat)."""
    key = block_len if block_len < prompt_len else 0  # 0: the prompt is one block, plain positions
    cached = _OFFSET_CACHE.get(key)
    if cached is None or len(cached) < prompt_len:
        n = max(prompt_len, 2 * len(cached) if cached is not None else 0)
        positions = np.arange(n, dtype=np.uint64)
        if key:
            positions %= np.uint64(block_len)
        with np.errstate(over="ignore"):
            cached = positions * _M1
        if key in _OFFSET_CACHE or len(_OFFSET_CACHE) < 64:
            _OFFSET_CACHE[key] = cached
    return cached[:prompt_len]


def tokens_from_hashes(hash_ids, hash_block_size: int, prompt_len: int, vocab_size: int, *,
                       compact: bool = False) -> list[int] | array:
    """`prompt_len` tokens where block k (of `hash_block_size` tokens) is a function of
    `hash_ids[k]` alone. The last block may be partial; missing trailing ids are an error."""
    needed = cdiv(prompt_len, hash_block_size)
    if len(hash_ids) < needed:
        raise ValueError(
            f"{len(hash_ids)} hash ids cover at most {len(hash_ids) * hash_block_size} tokens, "
            f"but prompt_len is {prompt_len} (block size {hash_block_size})"
        )
    keys = np.asarray(hash_ids[:needed], dtype=np.int64).astype(np.uint64)
    return _out(_tokens(keys, hash_block_size, prompt_len, vocab_size), compact)


def private_tokens(request_id: str, prompt_len: int, vocab_size: int, *, compact: bool = False) -> list[int] | array:
    """Tokens no other request shares (seeded by the request id, stable across runs): one
    prompt-long "block" whose key lives outside any trace's hash-id range."""
    key = np.uint64(xxhash.xxh64_intdigest(request_id.encode())) | _PRIVATE_DOMAIN
    return _out(_tokens(np.array([key], dtype=np.uint64), max(prompt_len, 1), prompt_len, vocab_size), compact)


def _out(tokens: np.ndarray, compact: bool) -> list[int] | array:
    """A list of ints, or (compact) an `array('i')`: 4 bytes a token, built without an int
    object per token (what a long prompt waiting in a simulated queue should cost)."""
    if not compact:
        return tokens.tolist()
    out = array("i")
    out.frombytes(tokens.astype(np.int32).tobytes())
    return out
