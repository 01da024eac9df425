"""Non-finite numbers never pass as results (issue 17): NaN/Inf logits stop generation with an error
naming the step and the request; `eval ppl` / `eval kl` exit non-zero instead of printing nan.

The model used here is finite on disk (so the load-time checks pass) but overflows in its forward
pass: MLP weights of 1e20 push the residual stream past float32's 3.4e38, and the final norm turns
the Inf into NaN. Before the fix, `generate`
returned token 0 repeatedly and `eval ppl` printed `perplexity nan` with exit code 0.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from executor.cli import generate
from executor.evaluate import kl_divergence, perplexity
from executor.gptq.cli import eval_group
from executor.numerics import NonFiniteError
from executor.sampler import SampleRow, Sampler, SamplingParams
from tests.executor.gptq_tiny_model import sample_text, write_tiny_model


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    root = tmp_path_factory.mktemp("overflow")
    good = write_tiny_model(root / "good", hidden=64, intermediate=128, layers=1)
    bad = root / "bad"
    shutil.copytree(good, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        tensors[name] = torch.full_like(tensors[name], 1e20)
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    text = root / "eval.txt"
    text.write_text(sample_text()[:3000])
    return good, bad, text


def test_sampler_names_step_and_request_of_non_finite_logits():
    logits = torch.zeros(3, 10)
    logits[1, 4] = float("nan")
    rows = [SampleRow(SamplingParams(temperature=0.0), 0, None, request_id=rid) for rid in ("a", "b", "c")]
    with pytest.raises(NonFiniteError, match=r"step 7 for request\(s\) b\b"):
        Sampler()(logits, rows, step=7)
    sampler = Sampler()
    sampler(torch.zeros(1, 10), rows[:1])
    with pytest.raises(NonFiniteError, match=r"step 2 for request\(s\) a, c"):
        bad = torch.ones(3, 10)
        bad[0, 0], bad[2, 9] = float("inf"), float("-inf")
        sampler(bad, rows)


def test_generate_stops_on_non_finite_logits(overflowing):
    good, bad, _ = overflowing
    args = ["--prompt", "hello there", "--max-tokens", "3", "--kv-cache-memory", str(2**20), "--max-model-len", "64",
            "--ignore-eos"]
    assert CliRunner().invoke(generate, ["--model", str(good), *args]).exit_code == 0
    res = CliRunner().invoke(generate, ["--model", str(bad), *args])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert "non-finite logits" in res.output and "step 1" in res.output


@pytest.mark.parametrize("command", ["ppl", "kl"])
def test_eval_exits_non_zero_on_non_finite_results(overflowing, command):
    good, bad, text = overflowing
    models = [str(bad)] if command == "ppl" else [str(good), str(bad)]
    res = CliRunner().invoke(eval_group, [command, *models, "--text", str(text), "--max-tokens", "64",
                                          "--window", "32", "--stride", "16", "--json"])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert "non-finite" in res.output and str(bad) in res.output
    assert not any(line.startswith("{") for line in res.output.splitlines())  # no result printed


class _Scorer:
    backend = "test"

    def __init__(self, name, poison_at=None):
        self.name, self.poison_at = name, poison_at

    def logits(self, token_ids):
        out = torch.zeros(len(token_ids), 8)
        if self.poison_at is not None and self.poison_at < len(token_ids):
            out[self.poison_at, 0] = float("nan")
        return out


def test_perplexity_and_kl_refuse_nan_logits():
    ids = list(range(8)) * 4
    assert perplexity(_Scorer("ok"), ids, window=8, stride=4).perplexity == pytest.approx(8.0)
    with pytest.raises(NonFiniteError, match=r"poisoned: non-finite logits .* tokens 0\.\.7"):
        perplexity(_Scorer("poisoned", poison_at=2), ids, window=8, stride=4)
    with pytest.raises(NonFiniteError, match="poisoned"):
        kl_divergence(_Scorer("ok"), _Scorer("poisoned", poison_at=2), ids, window=8, stride=4)
