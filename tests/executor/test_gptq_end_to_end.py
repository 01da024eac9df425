"""`folovllm quantize` on a tiny random model, then loading it (transformers path and our executor),
`folovllm eval ppl/kl`, and the bad-input paths (too little calibration text, existing output)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from executor.gptq.cli import eval_group, quantize
from executor.gptq.hf import load_hf_model, quantized_memory
from tests.executor.gptq_tiny_model import sample_text, write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gptq")
    model = write_tiny_model(root / "tiny", hidden=96, intermediate=160, layers=2)
    calib = root / "calib.txt"
    calib.write_text(sample_text())
    evaltext = root / "eval.txt"
    evaltext.write_text(sample_text()[-6000:])
    return root, model, calib, evaltext


def last_json(output: str) -> dict:
    """The JSON line of a --json command (progress bars of libraries may precede it on stderr)."""
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def run_quantize(model, calib, out, *extra):
    return CliRunner().invoke(quantize, [str(model), "--group-size", "32", "--calib", str(calib), "--out", str(out),
                                         "--nsamples", "8", "--seq-len", "64", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--no-desc-act"], ["--asym", "--desc-act"]])
def test_quantize_writes_a_loadable_checkpoint_close_to_the_float_model(tiny, extra):
    root, model, calib, _ = tiny
    out = root / ("q" + "".join(extra))
    result = run_quantize(model, calib, out, *extra)
    assert result.exit_code == 0, result.output
    assert "calibration text" in result.output and "x)" in result.output
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == 32
    assert qc["checkpoint_format"] == ("gptq_v2" if "--asym" in extra else "gptq")
    assert (out / "tokenizer.json").is_file()

    ref, quant = load_hf_model(model), load_hf_model(out)
    packed, dense = quantized_memory(quant)
    assert 0 < packed < 0.35 * dense
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(ids).logits[0], quant(ids).logits[0]
    # 4-bit weights move the logits a little, never a lot.
    assert 0 < float((a - b).norm() / a.norm()) < 0.2
    assert float((a.argmax(-1) == b.argmax(-1)).float().mean()) > 0.7


@pytest.mark.slow
def test_our_executor_loads_the_checkpoint_with_the_same_logits(tiny):
    loader = pytest.importorskip("executor.loader")
    api = pytest.importorskip("executor.api")
    if not (hasattr(loader, "load_model") and hasattr(api, "prompt_logits")):
        pytest.skip("executor.loader.load_model / executor.api.prompt_logits not present yet")
    root, model, calib, _ = tiny
    out = root / "q-exec"
    assert run_quantize(model, calib, out, "--asym", "--desc-act").exit_code == 0
    ids = list(range(3, 43))
    ours = api.prompt_logits(loader.load_model(out, device="cpu", dtype=torch.float32), ids)
    with torch.no_grad():
        hf = load_hf_model(out)(torch.tensor([ids])).logits[0]
    assert torch.allclose(ours, hf, atol=2e-3, rtol=1e-3)


@pytest.mark.slow
def test_eval_ppl_and_kl(tiny):
    root, model, calib, evaltext = tiny
    out = root / "q-eval"
    assert run_quantize(model, calib, out).exit_code == 0
    runner = CliRunner()
    args = ["--text", str(evaltext), "--window", "64", "--stride", "32", "--max-tokens", "400", "--json",
            "--backend", "transformers"]
    r_ppl = runner.invoke(eval_group, ["ppl", str(model), *args])
    assert r_ppl.exit_code == 0, r_ppl.output
    res = last_json(r_ppl.output)
    assert res["n_scored"] == 399 and res["perplexity"] > 1
    # The random model is near-uniform over its vocabulary.
    assert res["perplexity"] < 2 * len(json.loads((model / "tokenizer.json").read_text())["model"]["vocab"])
    same = last_json(runner.invoke(eval_group, ["kl", str(model), str(model), *args]).output)
    assert same["mean_kl"] == pytest.approx(0.0, abs=1e-9) and same["top1_agreement"] == 1.0
    diff = last_json(runner.invoke(eval_group, ["kl", str(model), str(out), *args]).output)
    assert diff["mean_kl"] > 0 and diff["n_scored"] == 399


def test_calibration_text_too_short_is_an_error_and_writes_nothing(tiny, tmp_path):
    _, model, _, _ = tiny
    short = tmp_path / "short.txt"
    short.write_text("only a few words of text")
    out = tmp_path / "never"
    result = run_quantize(model, short, out)
    assert result.exit_code != 0
    assert "calibration text too short" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == [short]


def test_bad_options_and_existing_output_are_errors(tiny, tmp_path):
    _, model, calib, _ = tiny
    r = CliRunner().invoke(quantize, [str(model), "--bits", "3", "--calib", str(calib), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "bits=3" in r.output
    (tmp_path / "exists").mkdir()
    r = run_quantize(model, calib, tmp_path / "exists")
    assert r.exit_code != 0 and "already exists" in r.output
    r = CliRunner().invoke(quantize, [str(model), "--group-size", "0", "--calib", str(calib), "--out",
                                      str(tmp_path / "y")])
    assert r.exit_code != 0 and "group_size=0" in r.output


def test_perplexity_windows_score_every_token_once():
    from executor.evaluate import scored_windows

    for n, window, stride in [(1000, 512, 256), (1030, 512, 512), (10, 512, 256), (513, 512, 1)]:
        targets = [t for w in scored_windows(n, window, stride) for t in range(w.first_target, w.end)]
        assert targets == list(range(1, n))
        for w in scored_windows(n, window, stride):
            assert w.end - w.begin <= window and w.first_target > w.begin


def test_compare_models_agrees_with_separate_ppl_and_kl():
    from executor.evaluate import compare_models, kl_divergence, perplexity

    class Fake:
        backend = "fake"

        def __init__(self, name, seed):
            self.name = name
            self.table = torch.randn(50, 50, generator=torch.Generator().manual_seed(seed))

        def logits(self, ids):
            return self.table[torch.tensor(ids)]

    a, b = Fake("a", 0), Fake("b", 1)
    ids = torch.randint(0, 50, (300,), generator=torch.Generator().manual_seed(2)).tolist()
    ref, others = compare_models(a, {"b": b}, ids, window=40, stride=16)
    assert ref.perplexity == pytest.approx(perplexity(a, ids, 40, 16).perplexity)
    p, k = others["b"]
    assert p.perplexity == pytest.approx(perplexity(b, ids, 40, 16).perplexity)
    assert k.mean_kl == pytest.approx(kl_divergence(a, b, ids, 40, 16).mean_kl)
    assert k.mean_kl > 0
