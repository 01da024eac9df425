"""The calibration grid reaches the workload's contexts; the held-out comparison's short grid."""

from __future__ import annotations

from experiments.run.calibrate import _DECODE_HEADROOM, contexts_for
from experiments.analysis.cost_model_heldout import in_short_grid


def test_contexts_span_max_model_len():
    for max_len in (128, 512, 768, 4096):
        ctx = contexts_for(max_len)
        assert ctx == tuple(sorted(ctx)) and ctx[0] == 32
        assert ctx[-1] == max_len - _DECODE_HEADROOM  # the longest context a decode point can reach
        assert len(ctx) == 3
    assert contexts_for(40) == (32,)


def _s(n_pre=0, pre_tok=0, n_dec=0, pre_ctx=0, dec_ctx=0, group=None):
    s = {"num_prefill_requests": n_pre, "num_prefill_tokens": pre_tok, "num_decode_requests": n_dec,
         "sum_prefill_context_len": pre_ctx, "sum_context_len": pre_ctx + dec_ctx}
    if group:
        s["group"] = group
    return s


def test_short_grid_is_what_the_previous_calibration_measured():
    assert in_short_grid(_s(n_dec=8, dec_ctx=8 * 260))
    assert not in_short_grid(_s(n_dec=8, dec_ctx=8 * 700))       # long context: new
    assert not in_short_grid(_s(n_dec=2, dec_ctx=2 * 40))        # two rows: new
    assert in_short_grid(_s(n_pre=1, pre_tok=64, pre_ctx=128))    # second chunk of a 64-token prefill
    assert not in_short_grid(_s(n_pre=1, pre_tok=128, pre_ctx=128 + 352))  # prefill after a prefix hit
    assert in_short_grid(_s(n_pre=2, pre_tok=90, n_dec=3, dec_ctx=300, group="replayburst0"))
    assert not in_short_grid(_s(n_pre=1, pre_tok=90, n_dec=3, dec_ctx=900, group="replayconversation"))
