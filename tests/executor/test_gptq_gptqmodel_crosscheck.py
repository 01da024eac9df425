"""Optional cross-check against GPTQModel (7.6.0, `pip install folovllm[gptqmodel]`); skipped when absent.

On a 2-core machine GPTQModel 7.6.0 needs GPTQMODEL_CPU_WORKERS=2 (1, or unset, fails with a
"Virtual pool ... requests 2 workers" error).

1. A checkpoint GPTQModel writes loads in our executor (and our transformers path) with the logits
   GPTQModel's own CPU inference (BACKEND.TORCH) gives.
2. A checkpoint we write loads in transformers (+ optimum / GPTQModel kernels) with our logits.
"""

from __future__ import annotations

import pytest
import torch

gptqmodel = pytest.importorskip("gptqmodel", reason="GPTQModel is not installed (optional cross-check)")

from click.testing import CliRunner  # noqa: E402

from executor.gptq.cli import quantize  # noqa: E402
from executor.gptq.hf import load_hf_model  # noqa: E402
from tests.executor.gptq_tiny_model import sample_text, write_tiny_model  # noqa: E402

IDS = list(range(3, 43))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0].float()


@pytest.mark.slow
def test_gptqmodel_checkpoint_loads_in_our_executor_with_gptqmodel_logits(tmp_path, monkeypatch):
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    monkeypatch.chdir(tmp_path)   # GPTQModel writes a logs/ folder into the working directory

    base = write_tiny_model(tmp_path / "tiny", hidden=128, intermediate=256, layers=2)
    out = tmp_path / "by-gptqmodel"
    text = sample_text()
    calib = [text[i:i + 2000] for i in range(0, 32000, 2000)]
    model = GPTQModel.load(str(base), QuantizeConfig(bits=4, group_size=32, desc_act=False, sym=True))
    model.quantize(calib, batch_size=1)
    model.save(str(out))
    theirs = _logits(GPTQModel.load(str(out), device="cpu", backend=BACKEND.TORCH).model.float())

    assert torch.allclose(_logits(load_hf_model(out)), theirs, atol=5e-3, rtol=1e-2)
    loader = pytest.importorskip("executor.loader")
    api = pytest.importorskip("executor.api")
    ours = api.prompt_logits(loader.load_model(out, device="cpu", dtype=torch.float32), IDS)
    assert torch.allclose(ours, theirs, atol=5e-3, rtol=1e-2)


@pytest.mark.slow
def test_our_checkpoint_loads_in_transformers_with_our_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    base = write_tiny_model(tmp_path / "tiny", hidden=128, intermediate=256, layers=2)
    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text())
    for extra in (["--no-desc-act"], ["--asym", "--desc-act"]):
        out = tmp_path / ("ours" + "".join(extra))
        r = CliRunner().invoke(quantize, [str(base), "--group-size", "32", "--calib", str(calib), "--out", str(out),
                                          "--nsamples", "8", "--seq-len", "64", *extra])
        assert r.exit_code == 0, r.output
        # transformers refuses .float() on a quantized model; its GPTQ kernels compute in 16-bit anyway
        hf = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu", dtype=torch.float32)
        assert torch.allclose(_logits(hf), _logits(load_hf_model(out)), atol=5e-3, rtol=1e-2)
