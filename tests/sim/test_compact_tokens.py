"""Cheaper prompts for the simulator change nothing it computes: `array('i')` prompts give
the same prefix hashes (so the same hits) as lists, and prompts of one repeated id give the
same run as synthesised ones when prefix caching is off (nothing reads token values)."""

from __future__ import annotations

from array import array

import pandas as pd
import pytest

import traces
from policy import SchedulerConfig
from sim import simulate
from sim.cost.roofline import RooflineCostModel

COST = RooflineCostModel.from_names("llama-3-8b", "h100-sxm")
TABLE = traces.generate("multi-turn", seed=1, num_sessions=12, turns=3, first_prompt_len=200, user_turn_len=40,
                        output_len=30)


def run(caching: bool, **kw):
    config = SchedulerConfig(num_blocks=3000, block_size=16, max_model_len=4096, max_num_seqs=16,
                             max_num_batched_tokens=256, enable_prefix_caching=caching)
    return simulate(TABLE.iter_requests(block_size=16, vocab_size=32000, **kw), config, COST)


def test_compact_prompts_are_made_on_first_read_with_the_same_tokens():
    from traces.lazy_tokens import LazyTokens

    lists = list(TABLE.iter_requests(vocab_size=32000))
    lazy = list(TABLE.iter_requests(vocab_size=32000, compact_tokens=True))
    first = lazy[0]
    assert isinstance(first.prompt_token_ids, LazyTokens) and first.all_token_ids is first.prompt_token_ids
    assert len(first.all_token_ids) == first.num_prompt_tokens == len(lists[0].prompt_token_ids)
    assert first.num_output_tokens == 0 and isinstance(first.prompt_token_ids, LazyTokens)  # len() made nothing
    assert [list(r.prompt_token_ids) for r in lazy] == [r.prompt_token_ids for r in lists]
    assert all(isinstance(r.prompt_token_ids, array) and isinstance(r.all_token_ids, array)
               and r.all_token_ids is not r.prompt_token_ids for r in lazy)
    r = list(TABLE.iter_requests(vocab_size=32000, compact_tokens=True))[1]
    r.all_token_ids.append(7)  # an append installs real arrays first, then extends only all_token_ids
    assert r.num_output_tokens == 1 and list(r.output_token_ids) == [7]


def test_compact_prompts_hit_the_prefix_cache_as_lists_do():
    a, b = run(True), run(True, compact_tokens=True)
    assert a.stats.prefix_hit_tokens > 0
    assert a.stats == b.stats
    pd.testing.assert_frame_equal(a.requests_df, b.requests_df)
    pd.testing.assert_frame_equal(a.steps_df, b.steps_df)


@pytest.mark.parametrize("compact", [False, True])
def test_unsynthesised_prompts_give_the_same_run_without_prefix_caching(compact):
    a, b = run(False), run(False, synthesize_tokens=False, compact_tokens=compact)
    assert a.stats == b.stats
    pd.testing.assert_frame_equal(a.requests_df, b.requests_df)
    pd.testing.assert_frame_equal(a.steps_df, b.steps_df)
