"""Prefix-cache hashes: chained over full blocks and identical in every process."""

import json
import os
import subprocess
import sys
from pathlib import Path

from policy.hashing import ROOT_HASH, extend_block_hashes, hash_block

REPO = Path(__file__).resolve().parents[2]
TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 38462, 2**40]

_SCRIPT = """
import json, sys
from policy.hashing import extend_block_hashes
tokens = json.loads(sys.argv[1])
out = []
for salt in (None, "tenant-a"):
    h = []
    extend_block_hashes(h, tokens, 4, salt)
    out.append([x.hex() for x in h])
print(json.dumps(out))
"""


def hashes(tokens, block_size=4, salt=None):
    out = []
    extend_block_hashes(out, tokens, block_size, salt)
    return out


def test_hashes_are_identical_across_processes_with_different_hash_seeds():
    results = []
    for seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(TOKENS)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=True)
        results.append(json.loads(proc.stdout))
    here = [[x.hex() for x in hashes(TOKENS)], [x.hex() for x in hashes(TOKENS, salt="tenant-a")]]
    assert results[0] == results[1] == here
    assert len(here[0]) == len(TOKENS) // 4


def test_only_full_blocks_are_hashed_and_growth_is_incremental():
    assert hashes([1, 2, 3]) == []
    grown: list[bytes] = []
    for n in range(1, len(TOKENS) + 1):
        extend_block_hashes(grown, TOKENS[:n], 4, None)
        assert len(grown) == n // 4
    assert grown == hashes(TOKENS)


def test_chain_matches_hash_block_and_depends_on_every_earlier_token():
    h = hashes(TOKENS[:12])
    parent = ROOT_HASH
    for i, got in enumerate(h):
        parent = hash_block(parent, TOKENS[i * 4 : i * 4 + 4])
        assert got == parent
    changed = hashes([TOKENS[0] + 1] + TOKENS[1:12])
    assert all(a != b for a, b in zip(h, changed)), "a change in block 0 must change every later hash"
    assert hashes(TOKENS[:8] + [0, 0, 0, 0])[:2] == h[:2]


def test_salt_separates_chains_and_block_size_matters():
    assert all(a != b for a, b in zip(hashes(TOKENS), hashes(TOKENS, salt="x")))
    assert hashes(TOKENS, salt="x") != hashes(TOKENS, salt="y")
    assert hashes(TOKENS[:8], block_size=8)[0] != hashes(TOKENS[:8], block_size=4)[1]
