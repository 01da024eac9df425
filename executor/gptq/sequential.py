"""Quantize a whole HF causal LM with GPTQ, one decoder layer at a time.

Why sequential: each layer's Hessian should come from the inputs it will really see once the
layers before it are quantized. So we capture the inputs of decoder layer 0 for all calibration
windows, then for each layer i:
1. find the layer's linears and group those that read the same input tensor, in execution
   order (Llama/Qwen: [q, k, v] -> [o] -> [gate, up] -> [down]);
2. for each group in turn ("true sequential"): run the layer on the calibration inputs, with
   hooks accumulating H = 2 X X^T for that group's linears (the forward stops right after the
   group's last linear), quantize them and put the dequantized weights in place, so later
   groups see the outputs of already-quantized sublayers;
3. run the quantized layer once more to produce the inputs of layer i+1.

The calibration forward passes use the transformers model in float32 (independent of our
executor); only decoder-layer linears are quantized, the LM head and embeddings stay 16-bit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoint import GPTQCheckpointError, GPTQConfig, read_tensors, write_model_dir
from .linear import validate_layer_shape
from .packing import pack_cols, pack_rows
from .quantizer import HessianAccumulator, QuantizedWeight, flush_denormals, gptq_quantize


@dataclass
class LayerRecord:
    name: str
    in_features: int
    out_features: int
    loss: float
    damp_used: float
    seconds: float


@dataclass
class QuantizeReport:
    out_dir: Path
    config: GPTQConfig
    n_samples: int
    seq_len: int
    calib_tokens_available: int
    seconds_total: float
    seconds_quantize: float
    layers: list[LayerRecord] = field(default_factory=list)
    packed_bytes: int = 0
    dense16_bytes: int = 0

    @property
    def memory_ratio(self) -> float:
        return self.packed_bytes / self.dense16_bytes if self.dense16_bytes else float("nan")


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the needed activations are captured."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of an HF causal LM (`model.model.layers` for Llama/Qwen/Mistral)."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return obj
    raise GPTQCheckpointError(f"{type(model).__name__}: cannot find its decoder layers (expected model.layers)")


def _layer_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def capture_layer0_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int):
    """Run the model on the windows up to decoder layer 0; return [(hidden_states, kwargs)] per batch."""
    layer0 = decoder_layers(model)[0]
    captured: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        captured.append((hidden.detach(), kw))
        raise _StopForward

    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b0 in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[b0:b0 + batch_size], use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def linear_groups(layer: nn.Module, sample: tuple[torch.Tensor, dict]) -> list[list[str]]:
    """Linears of `layer` in execution order, grouped by the input tensor they read."""
    order: list[tuple[str, torch.Tensor]] = []  # the tensors themselves: ids could be reused
    handles = []
    for name, mod in layer.named_modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: order.append((name, a[0])) if all(n != name for n, _ in order) else None))
    try:
        with torch.no_grad():
            layer(sample[0][:1], **_slice_kwargs(sample[1], 1))
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last_input = None
    for name, seen_input in order:
        if groups and seen_input is last_input:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_input = seen_input
    return groups


def _slice_kwargs(kwargs: dict, n: int) -> dict:
    """Layer kwargs for the first n rows of a batch (tensors with a batch dim are sliced)."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] > 1:
            out[k] = v[:n]
        elif isinstance(v, tuple) and all(isinstance(t, torch.Tensor) for t in v):
            out[k] = tuple(t[:n] if t.dim() > 0 and t.shape[0] > 1 else t for t in v)
        else:
            out[k] = v
    return out


def quantize_layer(layer: nn.Module, inputs, cfg: GPTQConfig, true_sequential: bool,
                   results: dict[str, dict[str, torch.Tensor]], prefix: str, records: list[LayerRecord]) -> None:
    """GPTQ every linear of one decoder layer in place (weights replaced by their dequantized values).

    `results[<full linear name>]` receives the packed checkpoint tensors (packed right away, so
    the float copies of all layers are never held at once).
    """
    modules = dict(layer.named_modules())
    groups = linear_groups(layer, inputs[0])
    # True sequential: one stage per group, so each group sees the already-quantized earlier ones.
    # Otherwise one stage collects every group's Hessian from the unquantized layer.
    stages = [[g] for g in groups] if true_sequential else [groups]
    for stage in stages:
        # Linears of a group read the same tensor, so they share one Hessian; the forward stops
        # right before the stage's last linear, since nothing later is needed yet.
        accs = {g[0]: HessianAccumulator(modules[g[0]].in_features) for g in stage}
        last = stage[-1][-1]

        def hook(module, args, name):
            if name in accs:
                accs[name].add(args[0])
            if name == last:
                raise _StopForward

        handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n))
                   for g in stage for n in g]
        try:
            with torch.no_grad():
                for hidden, kw in inputs:
                    try:
                        layer(hidden, **kw)
                    except _StopForward:
                        pass
        finally:
            for h in handles:
                h.remove()
        for group in stage:
            H = accs.pop(group[0]).H
            for name in group:
                lin = modules[name]
                t0 = time.perf_counter()
                res = gptq_quantize(lin.weight.data, H, bits=cfg.bits, group_size=cfg.group_size,
                                    sym=cfg.sym, desc_act=cfg.desc_act, static_groups=cfg.static_groups,
                                    damp=cfg.damp_percent)
                lin.weight.data.copy_(res.dequantized.to(lin.weight.dtype))
                full = f"{prefix}.{name}"
                results[full] = packed_tensors(full, res, cfg, lin.bias)
                records.append(LayerRecord(full, lin.in_features, lin.out_features, res.loss, res.damp_used,
                                           time.perf_counter() - t0))


def packed_tensors(name: str, res: QuantizedWeight, cfg: GPTQConfig, bias: torch.Tensor | None) -> dict:
    """The checkpoint tensors of one quantized linear, in the requested zeros convention."""
    zeros = res.zeros if cfg.checkpoint_format == "gptq_v2" else (res.zeros - 1) & (2**cfg.bits - 1)
    out = {f"{name}.qweight": pack_rows(res.qint, cfg.bits), f"{name}.qzeros": pack_cols(zeros, cfg.bits),
           f"{name}.scales": res.scales.to(torch.float16), f"{name}.g_idx": res.g_idx.to(torch.int32)}
    if bias is not None:
        out[f"{name}.bias"] = bias.detach().to(torch.float16)
    return out


def quantize_model_dir(model_dir: str | Path, out_dir: str | Path, cfg: GPTQConfig, calib_text: str, *,
                       n_samples: int = 32, seq_len: int = 512, batch_size: int = 8, overwrite: bool = False,
                       progress: bool = True, log: Callable[[str], None] = print) -> QuantizeReport:
    """Quantize the HF model in `model_dir` and write a GPTQ checkpoint to `out_dir` (atomically)."""
    from transformers import AutoModelForCausalLM

    from executor.loader import verify_model_dir
    from executor.tokenizer import load_tokenizer

    from .calibration import calibration_windows
    from .checkpoint import read_gptq_config

    t_start = time.perf_counter()
    cfg.validate("quantize settings")
    model_dir, out_dir = Path(model_dir).expanduser(), Path(out_dir).expanduser()
    if read_gptq_config(model_dir) is not None:
        raise GPTQCheckpointError(f"{model_dir}: already quantized (config.json has a quantization_config)")
    if out_dir.exists() and not overwrite:
        raise GPTQCheckpointError(f"{out_dir}: already exists (choose another --out or pass --overwrite)")
    verify_model_dir(model_dir)  # a corrupted source must not become a quietly broken quantized model

    tokenizer = load_tokenizer(model_dir)
    ids = tokenizer(calib_text, add_special_tokens=False)["input_ids"]
    windows = calibration_windows(ids, seq_len, n_samples)
    log(f"calibration: {len(ids)} tokens available, using {n_samples} windows of {seq_len} tokens")

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        for name, mod in layer.named_modules():
            if isinstance(mod, nn.Linear):
                try:
                    validate_layer_shape(mod.in_features, mod.out_features, cfg.bits, cfg.group_size)
                except ValueError as exc:
                    raise GPTQCheckpointError(f"layer {i} {name}: {exc}") from exc
    layer_prefix = _layer_prefix(model, layers)

    t_q = time.perf_counter()
    with flush_denormals():   # subnormal activations would make the calibration forwards ~100x slower
        results, records = _quantize_layers(model, layers, layer_prefix, windows, batch_size, cfg, progress)
    seconds_quantize = time.perf_counter() - t_q

    # Tensors: source tensors (16-bit) except quantized linear weights, which become packed tensors.
    source = read_tensors(model_dir)
    tensors: dict[str, torch.Tensor] = {}
    report = QuantizeReport(out_dir, cfg, n_samples, seq_len, len(ids), 0.0, seconds_quantize, records)
    for name, packed in results.items():
        if f"{name}.weight" not in source:
            raise GPTQCheckpointError(f"{model_dir}: tensor {name}.weight not found in the safetensors files")
        weight = source.pop(f"{name}.weight")
        bias = source.pop(f"{name}.bias", None)
        tensors.update(packed)
        report.packed_bytes += sum(t.numel() * t.element_size() for t in packed.values())
        report.dense16_bytes += 2 * (weight.numel() + (bias.numel() if bias is not None else 0))
    for key, t in source.items():
        tensors[key] = t.to(torch.float16) if t.is_floating_point() else t

    config = json_config(model_dir)
    config["quantization_config"] = cfg.to_quantization_config()
    config["torch_dtype"] = "float16"
    config["dtype"] = "float16"
    write_model_dir(out_dir, config, tensors, copy_from=model_dir,
                    extra_json={"quantize_config.json": cfg.to_quantization_config()}, overwrite=overwrite)
    report.seconds_total = time.perf_counter() - t_start
    return report


def _quantize_layers(model, layers, layer_prefix, windows, batch_size, cfg, progress):
    """Capture layer-0 inputs, then quantize each layer and propagate its quantized outputs."""
    results: dict[str, dict[str, torch.Tensor]] = {}
    records: list[LayerRecord] = []
    with torch.no_grad():
        inputs = capture_layer0_inputs(model, windows, batch_size)
        for i in _progress(range(len(layers)), progress, "GPTQ layers"):
            layer = layers[i]
            quantize_layer(layer, inputs, cfg, cfg.true_sequential, results, f"{layer_prefix}.{i}", records)
            inputs = [(_layer_output(layer(h, **kw)), kw) for h, kw in inputs]
    return results, records


def json_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def _layer_prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    for name, mod in model.named_modules():
        if mod is layers:
            return name
    raise GPTQCheckpointError("cannot name the decoder layer list")


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, unit="layer")
