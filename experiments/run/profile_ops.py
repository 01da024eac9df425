"""`folovllm profile`: time the executor's own layer operators one by one over a grid of token
counts and write the project's operator profile (`ops.csv`, format in sim/cost/op_profile.py).

The operators are the executor's modules of one decoder layer (norms, q/k/v, RoPE, o, gate/up,
SiLU*mul, down, the two residual adds) and the embedding, called on random activations of T rows,
so the timings are those of the kernels the executor really runs at that dtype and device. On the
CPU (SmolLM2 fp32) the profile feeds `folovllm cost validate` and the profile-driven model; on a
GPU (bf16) it is the measurement the fitted laws can be checked or refitted against
(`python -m sim.cost.fit_laws DIR`).

Attention is timed through the executor's attention backend on a paged KV cache, for decode
batches over a grid of batch size x context, and for one prefill chunk over query length x cached
context; it is written to `attention.csv` beside `ops.csv`, where the profile-driven cost model
finds it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import click

DEFAULT_CPU_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DEFAULT_CPU_DECODE = ((1, 4, 16, 64), (128, 512, 2048))  # batch sizes x context lengths
DEFAULT_CPU_PREFILL = ((16, 64, 256, 512), (0, 512, 2048))  # query lengths x cached context
DEFAULT_GPU_DECODE = ((1, 8, 32, 128, 256), (128, 512, 2048, 4096))
DEFAULT_GPU_PREFILL = ((16, 64, 256, 512, 1024, 2048), (0, 512, 2048, 4096))
DEFAULT_GPU_TOKENS = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 320, 384, 448, 512, 768, 1024, 1536, 2048, 3072, 4096)


def _one_layer_model(name: str, device, dtype):
    """The executor's model with ONE decoder layer (all we time), from a prepared directory, the
    embedded SmolLM2 or a named random shape; plus the sim ModelShape of the full model."""
    import torch

    from executor.config import ModelConfig
    from executor.loader import build_model
    from executor.models_registry import SHAPES, resolve_model
    from sim.models import shape_from_hf_config

    if name in SHAPES:
        config = ModelConfig.from_dict({**SHAPES[name], "num_hidden_layers": 1}, source=f"shape {name}")
        full = _shape_of_config(name, SHAPES[name])
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


def _shape_of_config(name: str, cfg: dict):
    """The sim shape of an executor shape (a sim preset when there is one, else read from its config)."""
    import json
    import tempfile

    from sim.models import get_model_shape, shape_from_hf_config

    try:
        return get_model_shape(name)
    except ValueError:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name / "config.json"
            path.parent.mkdir()
            path.write_text(json.dumps(cfg))
            return shape_from_hf_config(path)


def _grid(text: str | None, default, option: str):
    """"A,B/C,D" -> ((A, B), (C, D))."""
    if not text:
        return default
    try:
        first, second = text.split("/")
        grid = (tuple(int(v) for v in first.split(",")), tuple(int(v) for v in second.split(",")))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected A,B,.../C,D,... (whole numbers)", param_hint=option) from None
    return grid


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
        with torch.no_grad():
            times = {op: _median_time(fn, sync, repeats, warmup) for op, fn in ops.items()}
        out.append((t, times))
    return out


def _median_time(fn, sync, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def time_attention(model, backend_name: str, device, dtype, decode_grid, prefill_grid, repeats: int = 5,
                   block_size: int = 16):
    """(decode [(batch, context, s)], prefill [(query, context, s)]): one layer's attention call
    (KV write + attention) through the executor's backend on a paged cache."""
    import torch

    from executor.attention import get_backend
    from executor.model_runner import build_step_inputs

    sync = _timer(device)
    attn = model.model.layers[0].self_attn
    backend = get_backend(backend_name, device)
    heads, kv_heads, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    batches, contexts = decode_grid
    queries, prefixes = prefill_grid
    need = max(max(batches) * (max(contexts) + 1), max(queries) + max(prefixes))
    num_blocks = -(-need // block_size) + max(batches) + 1
    k_cache = torch.zeros(num_blocks, block_size, kv_heads, d, device=device, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    gen = torch.Generator(device="cpu").manual_seed(2)

    def run(rows):
        inputs = build_step_inputs(rows, [True] * len(rows), block_size, torch.device(device))
        n = inputs.meta.num_tokens
        q = torch.randn(n, heads, d, generator=gen).to(device=device, dtype=dtype)
        k = torch.randn(n, kv_heads, d, generator=gen).to(device=device, dtype=dtype)
        v = torch.randn(n, kv_heads, d, generator=gen).to(device=device, dtype=dtype)
        with torch.no_grad():
            return _median_time(lambda: backend.forward(q, k, v, k_cache, v_cache, inputs.meta, attn.scale), sync,
                                repeats, 2)

    def tables(count: int, length: int):
        per = -(-length // block_size)
        return [list(range(i * per, (i + 1) * per)) for i in range(count)]

    decode = []
    for b in batches:
        for c in contexts:
            decode.append((b, c, run([([0], c, t) for t in tables(b, c + 1)])))
    prefill = []
    for qlen in queries:
        for c in prefixes:
            prefill.append((qlen, c, run([([0] * qlen, c, tables(1, c + qlen)[0])])))
    return decode, prefill


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True,
              help="smollm2-135m, an HF model directory, or a random shape (qwen3-0.6b, qwen2.5-0.5b, qwen2.5-7b).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Default: fp32 on the CPU, bf16 on a GPU.")
@click.option("--tokens", default=None, help="Comma-separated token counts (default: a grid for the device).")
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--attention-backend", default=None, help="torch, triton or flash-attn (default: torch on the CPU, triton on a GPU).")
@click.option("--decode-grid", default=None, help="Attention decode grid BATCHES/CONTEXTS, e.g. 1,8,64/128,2048.")
@click.option("--prefill-grid", default=None, help="Attention prefill grid QUERY_LENS/CONTEXTS, e.g. 64,512/0,2048.")
@click.option("--no-attention", is_flag=True, help="Time the layer operators only.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads for torch (default: torch's).")
@click.option("--device-name", default=None, help="The profile's device column (default: cpu, or the GPU's name).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write ops.csv into.")
def profile(model, device, dtype, tokens, repeats, attention_backend, decode_grid, prefill_grid, no_attention, threads, device_name, out_dir):
    """Time one decoder layer's operators at each token count and write OUT/ops.csv."""
    import torch

    from sim.cost.attention_profile import write_own_attention
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
    if no_attention:
        return
    backend = attention_backend or ("triton" if on_gpu else "torch")
    decode, prefill = time_attention(
        net, backend, device, torch_dtype,
        _grid(decode_grid, DEFAULT_GPU_DECODE if on_gpu else DEFAULT_CPU_DECODE, "--decode-grid"),
        _grid(prefill_grid, DEFAULT_GPU_PREFILL if on_gpu else DEFAULT_CPU_PREFILL, "--prefill-grid"),
        repeats=max(3, repeats // 2))
    apath = write_own_attention(Path(out_dir) / "attention.csv", device=name, dtype=dtype, model=full, tp=1,
                                decode=decode, prefill=prefill)
    for b, c, t in decode:
        click.echo(f"decode  batch {b:4d} x context {c:5d}: {t * 1e3:8.3f} ms")
    for q, c, t in prefill:
        click.echo(f"prefill query {q:4d} after {c:5d}: {t * 1e3:8.3f} ms")
    click.echo(f"wrote {apath} ({backend} backend)")
