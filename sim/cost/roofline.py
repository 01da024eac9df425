"""Roofline step cost: each part of a forward pass runs at whichever ceiling binds it.

For the exact mix of prefill chunks and decodes in a plan (T tokens, of which `n_sampled`
rows reach the LM head):

- linear layers: max(2 * linear_params * T FLOPs / GEMM rate, weight bytes / bandwidth). The
  weights are streamed once per step however many tokens share them; this is why decode is
  memory-bound until T reaches the ridge (~266 tokens for bf16 on an H100).
- LM head: the same, over the sampled rows only.
- attention: 4 * q_dim * layers FLOPs per query-key pair (QK^T and PV), pairs counted exactly
  (causal chunks: q*c + q(q+1)/2; decodes: their context), against the KV bytes it reads
  (every cached token once per row) and writes (the new tokens).
- activations: elementwise traffic per token and layer (norms, RoPE, SiLU*mul, residuals)
  and the fp32 logits of the sampled rows, at bandwidth.
- overheads: a fixed per-step term (host scheduling, input prep, sampling, launches) and a
  per-layer term (kernel launch tails), both from the hardware preset.

The parts run one after another, so their times add. int4 (GPTQ) weights are read as packed
4-bit + group scales/zeros while T is small (a fused w4a16 kernel); above
`INT4_DEQUANT_TOKENS` tokens the executor dequantizes to 16-bit and uses a dense GEMM, which
costs one extra pass over the weights.
"""

from __future__ import annotations

from sim.cost.base import CostModel
from sim.hardware import DTYPE_BYTES, HardwareSpec, get_hardware, weight_bytes_per_step
from sim.models import ModelShape, get_model_shape, shard

INT4_DEQUANT_TOKENS = 64
PARTS = ("linear", "lm_head", "attention", "activations", "overhead")


class RooflineCostModel(CostModel):
    def __init__(self, model: ModelShape, hardware: HardwareSpec, dtype: str = "bf16", weight_bits: int = 16,
                 tp: int = 1) -> None:
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {dtype!r}: supported are {', '.join(DTYPE_BYTES)}")
        if weight_bits not in (4, 16, 32):
            raise ValueError(f"weight_bits={weight_bits}: supported are 16 (dtype weights) and 4 (GPTQ int4)")
        if weight_bits == 32 and dtype != "fp32":
            raise ValueError("weight_bits=32 needs dtype='fp32'")
        if not hardware.calibrated or hardware.mem_bw <= 0 or hardware.flops_16 <= 0:
            raise ValueError(f"hardware {hardware.name!r} is not calibrated; see sim.hardware.calibrate_cpu")
        self.full_model = model
        self.tp = tp
        model = shard(model, tp)  # one GPU's part; collectives are not priced
        self.model = model
        self.hardware = hardware
        self.dtype = dtype
        self.weight_bits = 16 if weight_bits == 32 else weight_bits
        elem = DTYPE_BYTES[dtype]
        bw = hardware.mem_bw
        flops = hardware.flops(dtype)
        L = model.num_layers

        # Per-step constants (seconds per unit), precomputed so pricing a plan is a few
        # multiply-adds: the simulator calls this hundreds of thousands of times.
        lm_head_bytes = model.lm_head_params * (min(elem, 2) if self.weight_bits == 4 else elem)
        # Linear layers without the LM head (priced on its own, over the sampled rows only).
        linear_bytes = weight_bytes_per_step(model, dtype, self.weight_bits) - lm_head_bytes
        dense_linear_bytes = weight_bytes_per_step(model, dtype, 16) - model.lm_head_params * elem
        self._linear_weights_s = linear_bytes / bw
        # int4 above INT4_DEQUANT_TOKENS: read packed weights and write them 16-bit (the
        # dequant pass), then a dense GEMM bound by FLOPs or by reading the 16-bit copy.
        self._dequant_s = (linear_bytes + model.linear_params * 2) / bw if self.weight_bits == 4 else 0.0
        self._dense_linear_weights_s = min(dense_linear_bytes, linear_bytes + model.linear_params * 2) / bw
        self._lm_head_bytes_s = lm_head_bytes / bw
        self._linear_flop_s = 2 * model.linear_params / flops  # per token
        self._lm_head_flop_s = 2 * model.lm_head_params / flops  # per sampled row
        self._attn_flop_s = 4 * model.q_dim * L / (flops * hardware.attn_efficiency)  # per q-k pair
        kv_tok = model.kv_bytes_per_token(elem)
        self._kv_byte_s = kv_tok / bw  # per cached token read or new token written
        h, i = model.hidden_size, model.intermediate_size
        act_layers = (8 * h + 3 * model.q_dim + 4 * model.kv_dim + 5 * i) * elem * L
        self._act_layers_s = act_layers / bw  # per token, the decoder layers' elementwise traffic
        self._act_s = (act_layers + 2 * h * elem) / bw  # per token, with the final norm
        self._logits_s = model.vocab_size * 4 * 2 / bw  # per sampled row: fp32 write + read
        self._overhead_s = hardware.step_overhead_s + L * hardware.layer_overhead_s

    @classmethod
    def from_names(
        cls, model: str = "llama-3-8b", hardware: str = "h100-sxm", dtype: str = "bf16", weight_bits: int = 16,
        tp: int = 1,
    ) -> "RooflineCostModel":
        return cls(get_model_shape(model), get_hardware(hardware), dtype, weight_bits, tp)

    def _linear(self, tokens: int) -> float:
        if self.weight_bits == 4 and tokens > INT4_DEQUANT_TOKENS:
            t = tokens * self._linear_flop_s
            return self._dequant_s + (t if t > self._dense_linear_weights_s else self._dense_linear_weights_s)
        t = tokens * self._linear_flop_s
        return t if t > self._linear_weights_s else self._linear_weights_s

    def _lm_head(self, n_sampled: int) -> float:
        head = n_sampled * self._lm_head_flop_s
        return head if head > self._lm_head_bytes_s else self._lm_head_bytes_s

    def parts(self, shape: tuple) -> tuple[float, float, float, float, float]:
        """(linear, lm_head, attention, activations, overhead) seconds for a plan shape (see
        traces.timeline.plan_shape). The one place the roofline formula is written."""
        n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_sampled = shape
        tokens = pre_tok + n_dec
        attn_c = (pairs + dec_ctx) * self._attn_flop_s
        attn_m = (pre_ctx + dec_ctx + tokens) * self._kv_byte_s
        return (
            self._linear(tokens),
            self._lm_head(n_sampled),
            attn_c if attn_c > attn_m else attn_m,
            tokens * self._act_s + n_sampled * self._logits_s,
            self._overhead_s,
        )

    def breakdown(self, shape: tuple) -> dict[str, float]:
        """Seconds per part for a plan shape (see traces.timeline.plan_shape)."""
        return dict(zip(PARTS, self.parts(shape)))

    def time_for_shape(self, shape: tuple) -> float:
        linear, lm_head, attention, activations, overhead = self.parts(shape)
        return linear + lm_head + attention + activations + overhead

    def attention_seconds(self, shape: tuple) -> float:
        # `parts(shape)[2]`, written out: the fitted model prices every step through here.
        _, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, _ = shape
        attn_c = (pairs + dec_ctx) * self._attn_flop_s
        attn_m = (pre_ctx + dec_ctx + pre_tok + n_dec) * self._kv_byte_s
        return attn_c if attn_c > attn_m else attn_m

    def head_seconds(self, n_sampled: int) -> float:
        """LM head and logits traffic for the sampled rows."""
        return self._lm_head(n_sampled) + n_sampled * self._logits_s

    def layer_seconds(self, tokens: int, ops=None) -> float:
        """One layer's linear and elementwise work at `tokens` tokens (attention excluded): what a
        per-operator profile measures. `ops` is ignored: the roofline does not split operators."""
        return (self._linear(tokens) + tokens * self._act_layers_s) / self.model.num_layers

    def describe(self) -> dict:
        return {
            "kind": "roofline-ideal",
            "model": self.full_model.to_dict(),
            "tp": self.tp,
            "hardware": self.hardware.to_dict(),
            "dtype": self.dtype,
            "weight_bits": self.weight_bits,
        }
