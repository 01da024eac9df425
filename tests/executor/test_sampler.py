"""Sampler behaviour users rely on: greedy is argmax, top-k/top-p restrict the support,
seeds reproduce, min_tokens hides eos/stop tokens."""

from __future__ import annotations

import pytest
import torch

from executor.sampler import SampleRow, Sampler, SamplingParams


def _row(num_out=0, eos=None, **kw):
    return SampleRow(SamplingParams(**kw), num_out, eos)


def _logits(n=4, vocab=50, seed=0):
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    logits = _logits()
    out = Sampler()(logits, [_row(temperature=0.0)] * 4)
    assert torch.equal(out, logits.argmax(-1))


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = _logits()
    s = Sampler(seed=3)
    assert torch.equal(s(logits, [_row(temperature=1.0, top_k=1)] * 4), logits.argmax(-1))
    assert torch.equal(s(logits, [_row(temperature=1.0, top_p=1e-6)] * 4), logits.argmax(-1))


def test_top_k_restricts_support():
    logits = _logits(n=1, vocab=30)
    allowed = set(logits[0].topk(5).indices.tolist())
    s = Sampler(seed=1)
    seen = {int(s(logits, [_row(temperature=5.0, top_k=5)])[0]) for _ in range(200)}
    assert seen <= allowed and len(seen) > 1


def test_top_p_restricts_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    s = Sampler(seed=2)
    seen = {int(s(logits, [_row(temperature=1.0, top_p=0.7)])[0]) for _ in range(300)}
    assert seen == {0, 1}


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    s = Sampler(seed=0)
    draws = torch.stack([s(torch.log(probs)[None], [_row(temperature=1.0)])[0] for _ in range(3000)])
    freq = torch.bincount(draws, minlength=3).float() / 3000
    assert torch.allclose(freq, probs, atol=0.04)


def test_seeded_rows_do_not_depend_on_the_batch():
    logits = _logits(n=3, vocab=1000, seed=5)
    seeded = _row(temperature=1.0, seed=42, num_out=7)
    alone = Sampler(seed=0)(logits[1:2], [seeded])
    batched = Sampler(seed=99)(logits, [_row(temperature=1.0), seeded, _row(temperature=0.0)])
    assert int(alone[0]) == int(batched[1])
    # the next output position draws fresh noise
    draws = {int(Sampler()(logits[1:2], [_row(temperature=1.0, seed=42, num_out=k)])[0]) for k in range(20)}
    assert len(draws) > 1


def test_min_tokens_masks_eos_and_stop_ids():
    logits = torch.zeros(2, 10)
    logits[:, 2] = 10.0  # eos is the favourite
    logits[:, 5] = 9.0  # then a stop token
    rows = [_row(num_out=0, eos=2, temperature=0.0, min_tokens=3, max_tokens=5, stop_token_ids=(5,)),
            _row(num_out=3, eos=2, temperature=0.0, min_tokens=3, max_tokens=5, stop_token_ids=(5,))]
    out = Sampler()(logits.clone(), rows).tolist()
    assert out[0] not in (2, 5) and out[1] == 2
    ignore = _row(num_out=0, eos=2, temperature=0.0, min_tokens=3, max_tokens=5, ignore_eos=True)
    assert Sampler()(logits.clone()[:1], [ignore]).tolist() == [2]  # eos is not a stop with ignore_eos


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2), dict(max_tokens=0),
                                 dict(min_tokens=9, max_tokens=3)])
def test_bad_params_are_refused(bad):
    with pytest.raises(ValueError, match="SamplingParams"):
        SamplingParams(**bad)
