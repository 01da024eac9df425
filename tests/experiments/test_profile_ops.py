"""`folovllm profile` writes a profile the cost models read back (tiny random shape, CPU)."""

from __future__ import annotations

from click.testing import CliRunner

from experiments.run.profile_ops import profile
from sim.cost.profiles import load_attention_profile, load_op_profile
from sim.cost.layer_ops import LAYER_OPS


def test_profile_writes_ops_and_attention_that_read_back(tmp_path):
    out = tmp_path / "prof"
    res = CliRunner().invoke(profile, ["--model", "tiny-qwen3", "--tokens", "1,4,16", "--repeats", "2",
                                       "--decode-grid", "1,4/16,64", "--prefill-grid", "4,16/0,32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    p = load_op_profile(out)
    assert list(p.tokens) == [1, 4, 16] and p.layer_ops == LAYER_OPS and p.device == "cpu" and p.dtype == "fp32"
    assert (p.layer_seconds() > 0).all()
    attn = load_attention_profile(out)
    assert attn is not None and attn.decode is not None and attn.prefill is not None
    assert attn.seconds(1, 16, 32, 4, 4 * 64) > 0


def test_profile_rejects_bad_grids(tmp_path):
    res = CliRunner().invoke(profile, ["--model", "tiny-qwen3", "--tokens", "1,x", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--tokens" in res.output
