"""Engine behaviour: bad input is refused clearly (and counted), the others keep being served;
trace replay records timelines in real time; sampling options reach the model's outputs."""

from __future__ import annotations

import pytest
import torch

from executor.engine import LLMEngine
from executor.kv_cache import KVBudgetError
from executor.sampler import SamplingParams
from policy import Request, RequestRejected

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_model_dirs, one_thread):
    return LLMEngine(tiny_model_dirs["tiny-qwen2"], device="cpu", kv_cache_memory=2 * 2**20, max_model_len=64)


def test_empty_prompt_is_rejected_and_nothing_stays_queued(engine):
    with pytest.raises(RequestRejected, match="prompt 1: .*empty"):
        engine.generate([[5, 6, 7], []], GREEDY)
    assert not engine.has_unfinished_requests()
    assert engine.generate([[5, 6, 7]], GREEDY)[0].token_ids  # still serving


def test_prompt_longer_than_the_context_is_rejected(engine):
    with pytest.raises(RequestRejected, match="max_model_len=64"):
        engine.generate([[3] * 64], GREEDY)


def test_token_ids_outside_the_vocabulary_are_rejected(engine):
    with pytest.raises(RequestRejected, match="outside the vocabulary"):
        engine.generate([[3, 512]], GREEDY)


def test_text_prompt_without_tokenizer_is_a_clear_error(engine):
    with pytest.raises(ValueError, match="tokenizer"):
        engine.generate(["hello"], GREEDY)


def test_kv_budget_too_small_for_one_request(tiny_model_dirs):
    with pytest.raises(KVBudgetError, match="kv_cache_memory"):
        LLMEngine(tiny_model_dirs["tiny-qwen2"], device="cpu", kv_cache_memory=10_000, max_model_len=512)
    with pytest.raises(KVBudgetError, match="num_blocks=3"):
        LLMEngine(tiny_model_dirs["tiny-qwen2"], device="cpu", num_blocks=3, max_model_len=512)


def test_max_model_len_beyond_the_model_is_refused(tiny_model_dirs):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        LLMEngine(tiny_model_dirs["tiny-qwen2"], device="cpu", max_model_len=10**6, kv_cache_memory=2**20)


def test_stop_tokens_max_tokens_and_min_tokens(engine):
    prompt = [11, 12, 13, 14]
    free = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))[0]
    assert len(free.token_ids) == 8 and free.finish_reason == "length"
    stop_at = free.token_ids[2]
    first = free.token_ids.index(stop_at)
    stopped = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=8, stop_token_ids=(stop_at,)))[0]
    assert stopped.token_ids == free.token_ids[: first + 1] and stopped.finish_reason == "stop"
    # below min_tokens the stop token cannot even be sampled
    held = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=8, min_tokens=first + 2,
                                                    stop_token_ids=(stop_at,)))[0]
    assert stop_at not in held.token_ids[: first + 2]


def test_seeded_sampling_is_reproducible_and_batch_independent(engine):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=8, ignore_eos=True)
    alone = engine.generate([[20, 21, 22]], params)[0].token_ids
    mixed = engine.generate([[7, 8], [20, 21, 22], [9] * 10],
                            [SamplingParams(temperature=1.0, max_tokens=5), params, GREEDY])[1].token_ids
    assert alone == mixed


def test_abort_frees_the_request(engine):
    req = engine.make_request([4, 5, 6], GREEDY)
    engine.add_request(req, GREEDY)
    engine.step()
    engine.abort(req.request_id)
    engine.step()
    assert not engine.has_unfinished_requests()
    assert req.request_id not in engine.runner.states


def test_replay_in_real_time_records_timelines(engine):
    reqs = [
        Request("a", [5, 6, 7, 8], max_tokens=5, arrival_time=0.0, ignore_eos=True),
        Request("empty", [], max_tokens=5, arrival_time=0.01),
        Request("long", [3] * 80, max_tokens=5, arrival_time=0.02),
        Request("b", [9, 10], max_tokens=3, arrival_time=0.25, ignore_eos=True),
    ]
    result = engine.replay(reqs)
    tl = result.recorder.timelines
    assert result.num_requests == 4 and result.num_rejected == 2 and result.num_finished == 2
    assert tl["empty"].status == "rejected" and "empty" in tl["empty"].reject_reason
    assert tl["long"].status == "rejected" and "max_model_len" in tl["long"].reject_reason
    assert tl["a"].output_len == 5 and tl["b"].output_len == 3
    # "b" arrives after the engine went idle: it is injected at (not before) its arrival time
    assert tl["b"].arrival_s == pytest.approx(0.25)
    assert tl["b"].first_scheduled_s >= 0.25
    assert tl["a"].token_times == sorted(tl["a"].token_times)
    steps = result.recorder.steps
    assert all(s.duration_s > 0 for s in steps)
    # two prompts prefilled (each yielding its first token), then 4 + 2 decodes
    assert sum(s.num_prefill_tokens for s in steps) == 4 + 2
    assert sum(s.num_decode_tokens for s in steps) == 4 + 2
    assert steps[0].num_prefill_tokens == 4
    assert result.wall_s >= 0.25


def test_replay_on_the_engine_cpu_clock_skips_idle_and_keeps_arrivals(engine):
    """`clock=EngineCpuClock()`: steps advance time by the engine thread's own work, an idle gap
    jumps to the next arrival (no sleeping), and arrivals are still honoured on that clock."""
    from executor.engine import EngineCpuClock

    reqs = [Request("a", [5, 6, 7, 8], max_tokens=4, arrival_time=0.0, ignore_eos=True),
            Request("b", [9, 10], max_tokens=3, arrival_time=30.0, ignore_eos=True)]
    result = engine.replay(reqs, clock=EngineCpuClock())
    tl = result.recorder.timelines
    assert result.num_finished == 2
    assert result.wall_s < 10.0  # the 30 s gap was not slept through
    assert tl["b"].arrival_s == pytest.approx(30.0) and tl["b"].first_scheduled_s >= 30.0
    steps = result.recorder.steps
    assert all(s.duration_s > 0 for s in steps)
    assert sum(s.duration_s for s in steps) <= result.wall_s  # engine time is work, never more than wall


def test_static_and_contiguous_baselines_run_through_the_engine(tiny_model_dirs, one_thread):
    prompts = [[3 + i, 4 + i, 5 + i] * (i + 1) for i in range(5)]
    outs = {}
    for name, kw in {"continuous": {}, "static": dict(batching="static", max_num_seqs=2),
                     "contiguous": dict(kv_layout="contiguous", enable_prefix_caching=False)}.items():
        eng = LLMEngine(tiny_model_dirs["tiny-llama"], device="cpu", kv_cache_memory=2**20, max_model_len=64, **kw)
        outs[name] = [o.token_ids for o in eng.generate(prompts, GREEDY)]
    assert outs["continuous"] == outs["static"] == outs["contiguous"]


def test_prompt_logits_on_an_engine_model_leaves_the_engine_working(engine):
    from executor.api import prompt_logits

    before = engine.generate([[5, 6, 7, 8]], GREEDY)[0].token_ids
    logits = prompt_logits(engine.model, [5, 6, 7, 8])
    assert logits.shape == (4, engine.config.vocab_size)
    assert int(logits[-1].argmax()) == before[0]
    assert engine.generate([[5, 6, 7, 8]], GREEDY)[0].token_ids == before
