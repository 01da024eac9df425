"""`folovllm profile`: time the executor's own layer operators one by one over a grid of token
counts and write the project's operator profile (`ops.csv`, format in sim/cost/op_profile.py).

The operators are the executor's modules of one decoder layer (norms, q/k/v, RoPE, o, gate/up,
SiLU*mul, down, the two residual adds) and the embedding, called on random activations of T rows,
so the timings are those of the kernels the executor really runs at that dtype and device. On the
CPU (SmolLM2 fp32) the profile feeds `folovllm cost validate` and the profile-driven model; on a
GPU (bf16) it is the measurement the fitted laws can be checked or refitted against
(`python -m sim.cost.fit_laws DIR`).

Attention is not profiled here yet (it needs a KV cache and block tables per batch x context).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import click

DEFAULT_CPU_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DEFAULT_GPU_TOKENS = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 320, 384, 448, 512, 768, 1024, 1536, 2048, 3072, 4096)


def _one_layer_model(name: str, device, dtype):
    """The executor's model with ONE decoder layer (all we time), from a prepared directory, the
    embedded SmolLM2 or a named random shape; plus the sim ModelShape of the full model."""
    import torch

    from executor.config import ModelConfig
    from executor.loader import build_model
    from executor.models_registry import SHAPES, resolve_model
    from sim.models import get_model_shape, shape_from_hf_config

    if name in SHAPES:
        config = ModelConfig.from_dict({**SHAPES[name], "num_hidden_layers": 1}, source=f"shape {name}")
        full = get_model_shape(name)
    else:
        model_dir = resolve_model(name)
        import json

        raw = json.loads((model_dir / "config.json").read_text())
        config = ModelConfig.from_dict({**raw, "num_hidden_layers": 1}, source=str(model_dir))
        full = shape_from_hf_config(model_dir / "config.json")
    model = build_model(config, device=device, dtype=dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            fill = torch.ones(p.shape) if "norm" in pname else torch.randn(p.shape, generator=gen) * 0.02
            p.copy_(fill.to(dtype))
    model.eval().requires_grad_(False)
    return model, full


def _timer(device):
    import torch

    if str(device).startswith("cuda"):
        def sync():
            torch.cuda.synchronize()
    else:
        def sync():
            return None
    return sync


def time_ops(model, tokens_grid, device, dtype, repeats: int = 10, warmup: int = 3) -> list[tuple[int, dict[str, float]]]:
    """[(T, {op: median seconds of one call})] for the first decoder layer of `model`."""
    import torch

    from executor.layers.activation import silu_and_mul
    from executor.layers.rotary import apply_rotary

    sync = _timer(device)
    layer = model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    cfg = model.config
    out = []
    gen = torch.Generator(device="cpu").manual_seed(1)
    for t in tokens_grid:
        x = (torch.randn(t, cfg.hidden_size, generator=gen) * 0.5).to(device=device, dtype=dtype)
        ids = torch.randint(0, cfg.vocab_size, (t,), generator=gen).to(device)
        cos, sin = model.rotary.cos_sin(torch.arange(t, device=device), dtype)
        q = attn.q_proj(x).view(t, attn.num_heads, attn.head_dim)
        k = attn.k_proj(x).view(t, attn.num_kv_heads, attn.head_dim)
        o = q.reshape(t, -1).contiguous()
        g, u = mlp.gate_proj(x), mlp.up_proj(x)
        a = silu_and_mul(g, u)

        def rope():
            qq, kk = q, k
            if attn.q_norm is not None:
                qq, kk = attn.q_norm(qq), attn.k_norm(kk)
            return apply_rotary(qq, cos, sin), apply_rotary(kk, cos, sin)

        ops = {
            "embed": lambda: model.model.embed_tokens(ids),
            "input_norm": lambda: layer.input_layernorm(x),
            "qkv_proj": lambda: (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)),
            "rope": rope,
            "o_proj": lambda: attn.o_proj(o),
            "post_attn_norm": lambda: layer.post_attention_layernorm(x),
            "up_proj": lambda: (mlp.gate_proj(x), mlp.up_proj(x)),
            "act": lambda: silu_and_mul(g, u),
            "down_proj": lambda: mlp.down_proj(a),
            "add": lambda: (x + x, x + x),  # the layer's two residual additions
        }
        times = {}
        with torch.no_grad():
            for op, fn in ops.items():
                for _ in range(warmup):
                    fn()
                samples = []
                for _ in range(repeats):
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    samples.append(time.perf_counter() - t0)
                times[op] = statistics.median(samples)
        out.append((t, times))
    return out


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True,
              help="smollm2-135m, an HF model directory, or a random shape (qwen3-0.6b, qwen2.5-0.5b, qwen2.5-7b).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Default: fp32 on the CPU, bf16 on a GPU.")
@click.option("--tokens", default=None, help="Comma-separated token counts (default: a grid for the device).")
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads for torch (default: torch's).")
@click.option("--device-name", default=None, help="The profile's device column (default: cpu, or the GPU's name).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write ops.csv into.")
def profile(model, device, dtype, tokens, repeats, threads, device_name, out_dir):
    """Time one decoder layer's operators at each token count and write OUT/ops.csv."""
    import torch

    from sim.cost.op_profile import write_own

    on_gpu = device.startswith("cuda")
    if threads:
        torch.set_num_threads(threads)
    if on_gpu and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA device is available")
    dtype = dtype or ("bf16" if on_gpu else "fp32")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    try:
        grid = tuple(int(v) for v in tokens.split(",")) if tokens else (DEFAULT_GPU_TOKENS if on_gpu else DEFAULT_CPU_TOKENS)
    except ValueError:
        raise click.ClickException(f"--tokens {tokens!r}: expected comma-separated whole numbers") from None
    if not grid or min(grid) < 1:
        raise click.ClickException("--tokens: token counts must be >= 1")
    try:
        net, full = _one_layer_model(model, device, torch_dtype)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    name = device_name or (torch.cuda.get_device_name(device).lower().replace("nvidia ", "").split()[0] if on_gpu else "cpu")
    measurements = time_ops(net, grid, device, torch_dtype, repeats=repeats)
    path = write_own(Path(out_dir) / "ops.csv", device=name, dtype=dtype, model=full, tp=1, measurements=measurements)
    for t, times in measurements:
        layer = sum(v for k, v in times.items() if k != "embed")
        click.echo(f"{t:6d} tokens: one layer {layer * 1e3:8.3f} ms")
    click.echo(f"wrote {path} ({model}, {dtype} on {name})")
