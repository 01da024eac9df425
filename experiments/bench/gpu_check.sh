#!/usr/bin/env bash
# Executor device check: about 10 minutes on one H100, from the repository root.
#
#   OUT=/path/to/results PYTHONPATH=. bash experiments/bench/gpu_check.sh
#
# Nothing is installed: the Python parts are `python -m experiments.bench.devcheck <stage>` (see that
# module). Each stage runs under its own `timeout`, so a hung kernel costs one stage, not the
# run. Random models of the real Qwen shapes are written to $MODELS_DIR (not under $OUT).
# Prints: correctness of the triton backend (+ CUDA graphs) against the torch backend, the
# nano-vllm offline benchmark (256 requests, in/out U[100,1024], ignore_eos) for Qwen2.5-0.5B
# and Qwen3-0.6B shapes, the transformers generate() baseline, and the decode roofline bound;
# then `folovllm profile` (bf16 operator and attention timings of one layer, Qwen3-0.6B and
# the Qwen2.5-7B shape), the cost models against them (`folovllm cost validate`) and a simulation priced from one.
# GPU_HW names the hardware preset of the card (default h200) for the cost models. Last, the same
# 32 requests through the simulator (priced from that profile) and the executor: predicted vs
# measured in $OUT/fidelity/report.md.
set -u
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-.}"
PY="${PYTHON:-python}"
MODELS_DIR="${MODELS_DIR:-/tmp/folovllm_gpu_check_models}"
DEVICE="${DEVICE:-cuda}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
T_START=$(date +%s)

stage() {  # stage NAME LIMIT_SECONDS command...
  local name=$1 limit=$2
  shift 2
  echo "=== [$name] (limit ${limit}s) $*"
  local t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  # show the stage's own report lines (not the warnings)
  grep -v -i -E "warn|Loading weights|^\s*$" "$OUT/$name.log" | tail -n 12
  local what="ok"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then what="TIMEOUT"; elif [ $rc -ne 0 ]; then what="FAILED rc=$rc"; tail -n 5 "$OUT/$name.log"; fi
  printf "%-28s %-12s %4ss\n" "$name" "$what" "$dt" | tee -a "$SUMMARY"
}

DC="$PY -m experiments.bench.devcheck"
Q25="$MODELS_DIR/qwen2.5-0.5b"
Q3="$MODELS_DIR/qwen3-0.6b"

stage env 60 $DC env --out "$OUT"
stage write-qwen2.5-0.5b 60 $DC write --shape qwen2.5-0.5b --model-dir "$Q25"
stage write-qwen3-0.6b 60 $DC write --shape qwen3-0.6b --model-dir "$Q3"
stage correctness 90 $DC correctness --model-dir "$Q25" --device "$DEVICE" --backend triton --out "$OUT" --tag qwen2.5-0.5b
stage roofline-qwen2.5-0.5b 30 $DC roofline --shape qwen2.5-0.5b --out "$OUT" --tag qwen2.5-0.5b
stage roofline-qwen3-0.6b 30 $DC roofline --shape qwen3-0.6b --out "$OUT" --tag qwen3-0.6b
stage throughput-qwen2.5-0.5b 130 $DC throughput --model-dir "$Q25" --device "$DEVICE" --out "$OUT" --tag qwen2.5-0.5b
stage throughput-qwen3-0.6b 130 $DC throughput --model-dir "$Q3" --device "$DEVICE" --out "$OUT" --tag qwen3-0.6b
# Operator profiles (bf16) of the executor's own layers -> ops.csv; then the cost models against
# them (`cost validate`), per-SKU laws fitted to them, and a simulation priced from one of them.
PROF="$OUT/profiles"
stage profile-qwen3-0.6b 90 $PY -m experiments.cli profile --model qwen3-0.6b --device "$DEVICE" --repeats 5 --out "$PROF/qwen3-0.6b"
stage profile-qwen2.5-7b 90 $PY -m experiments.cli profile --model qwen2.5-7b --device "$DEVICE" --repeats 5 --out "$PROF/qwen2.5-7b"
GPU_HW="${GPU_HW:-h200}"
stage validate-ideal-qwen2.5-7b 30 $PY -m experiments.cli cost validate "$PROF/qwen2.5-7b" --hardware "$GPU_HW" --cost-model roofline-ideal
stage validate-points-qwen2.5-7b 30 $PY -m experiments.cli cost validate "$PROF/qwen2.5-7b" --hardware "$GPU_HW" --cost-model profile --leave-one-out
stage fit-laws 30 $PY -m sim.cost.fit_laws "$PROF"
stage sim-profile-qwen3-0.6b 60 $PY -m experiments.cli sim --preset poisson --limit 200 --model qwen3-0.6b --hardware "$GPU_HW" --cost-model "profile:$PROF/qwen3-0.6b"
# Predicted vs measured on the card: the same requests through the simulator (priced from the
# profile just measured) and the executor; the report puts them side by side.
cat > "$OUT/fidelity.yaml" <<YAML
name: gpu-fidelity
description: Qwen3-0.6B shape (random weights, bf16) on the GPU; the simulator is priced from the card's own profile.
trace:
  preset: poisson
  params: {num_requests: 32, rate: 8.0, prompt: "uniform:64:512", output: "uniform:16:64"}
  max_prompt_len: 512
  max_output_len: 64
model: random:qwen3-0.6b
hardware: $GPU_HW
cost_model: profile:$PROF/qwen3-0.6b
dtype: bf16
engines: [sim, executor]
executor: {device: $DEVICE}
kv_cache_mib: 2048
base: {max_model_len: 1024, max_num_batched_tokens: 512, attention_backend: triton}
variants:
  - {name: seqs-32, max_num_seqs: 32}
  - {name: seqs-8, max_num_seqs: 8}
YAML
stage fidelity-qwen3-0.6b 90 $PY -m experiments.cli run "$OUT/fidelity.yaml" --out "$OUT/fidelity" --workers 1
stage hf-qwen2.5-0.5b 100 $DC hf --model-dir "$Q25" --device "$DEVICE" --num-requests 64 --hf-batch-size 64 --out "$OUT" --tag qwen2.5-0.5b

for f in "$OUT"/validate-*.log; do [ -f "$f" ] && echo "$(basename "$f" .log): $(tail -n 1 "$f")"; done
echo
echo "=== summary ($(( $(date +%s) - T_START ))s total; logs and JSON in $OUT)"
cat "$SUMMARY"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None
c = load("correctness-qwen2.5-0.5b")
if c:
    print(f"correctness (fp32, triton vs torch): ok={c.get('ok')} logits rel err {c.get('prompt_logits_rel_err_fp32'):.2e} "
          + " ".join(f"{k}: {v['identical_requests']}/{v['num_requests']} identical" for k, v in c.items() if isinstance(v, dict)))
for shape in ("qwen2.5-0.5b", "qwen3-0.6b"):
    t, r = load(f"throughput-{shape}"), load(f"roofline-{shape}")
    line = f"{shape:>13}: "
    line += f"engine {t['output_tok_per_s']:.0f} out tok/s ({t['mean_step_ms']:.1f} ms/step)" if t else "engine n/a"
    if r:
        b0, b1 = r["overhead_0ms"]["bound_out_tok_per_s"], r["overhead_1ms"]["bound_out_tok_per_s"]
        line += f" | roofline {b0:.0f} (0 ms/step), {b1:.0f} (+1 ms/step)"
        if t:
            line += f" | {100 * t['output_tok_per_s'] / b0:.0f}% of bound"
    print(line)
h = load("hf-qwen2.5-0.5b")
if h:
    print(f"hf generate qwen2.5-0.5b, first {h['num_requests']} requests, batch {h['hf_batch_size']}: "
          f"{h['hf_output_tok_per_s']:.0f} out tok/s; our engine on the same: {h.get('engine_output_tok_per_s', float('nan')):.0f} "
          f"({h.get('speedup', float('nan')):.2f}x)")
PYEOF
