"""Every knob of the policy layer in one validated record.

Both engines build their scheduler from this, so a simulated variant and a measured one are
the same object graph by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from policy.utils import cdiv

QUEUE_POLICIES = ("fcfs", "priority", "shortest-prompt-first", "longest-prefix-match")
BATCHING_MODES = ("continuous", "static")
KV_LAYOUTS = ("paged", "contiguous")


DEFAULT_MAX_MODEL_LEN = 4096  # when not set: this, or the model's positions if fewer


def _knob(default, help: str, choices: tuple[str, ...] | None = None):
    """A SchedulerConfig field with the help text and choices every CLI and the spec schema use."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class SchedulerConfig:
    """Every scheduling knob, validated: the one place a knob is defined.

    The spec schema (`experiments/run/spec.py`), the CLIs that schedule (`sim`, `replay`,
    `generate`; `traces/knobs_cli.py` turns these fields into options) and `LLMEngine` all
    derive their knob names, defaults, help and checks from these fields, so a simulated
    variant and a measured one are the same object graph by construction.

    Two fields may be left unset (None) and are resolved by the engine that builds the
    scheduler: `num_blocks` (from its KV memory budget) and `max_model_len` (the model's
    positions, at most DEFAULT_MAX_MODEL_LEN). `resolved()` fills them in.
    """

    num_blocks: int | None = _knob(None, "KV pool size in blocks (default: derived from the KV memory budget)")
    block_size: int = _knob(16, "Tokens per KV block")
    max_model_len: int | None = _knob(
        None, f"Longest prompt + output in tokens (default: the model's positions, at most {DEFAULT_MAX_MODEL_LEN})")
    max_num_seqs: int = _knob(128, "Most requests running at once")
    max_num_batched_tokens: int = _knob(2048, "Token budget of one step (prefill chunks + decodes)")
    enable_chunked_prefill: bool = _knob(True, "Split long prompts over several steps")
    long_prefill_token_threshold: int = _knob(0, "Per-request prefill tokens per step; 0 = no cap")
    enable_prefix_caching: bool = _knob(True, "Reuse KV blocks of shared prompt prefixes")
    policy: str = _knob("fcfs", "Waiting-queue order", QUEUE_POLICIES)
    batching: str = _knob("continuous", "Continuous batching, or the static-batching baseline", BATCHING_MODES)
    kv_layout: str = _knob("paged", "Paged KV blocks, or the contiguous max-length baseline", KV_LAYOUTS)
    # Admission guards against preemption storms: admit a waiting request only if its whole
    # remaining prompt fits now, and keep this fraction of the pool free when admitting.
    reserve_full_prompt: bool = _knob(True, "Admit a request only if its whole remaining prompt fits in KV now")
    watermark: float = _knob(0.0, "Fraction of the KV pool kept free when admitting")

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ValueError(f"SchedulerConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("num_blocks", "block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if value is None and name in ("num_blocks", "max_model_len"):
                continue  # resolved by the engine
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "must be an integer >= 1")
        for name in ("enable_chunked_prefill", "enable_prefix_caching", "reserve_full_prompt"):
            need(isinstance(getattr(self, name), bool), name, "must be true or false")
        need(self.long_prefill_token_threshold >= 0, "long_prefill_token_threshold", "must be >= 0")
        need(0.0 <= self.watermark < 1.0, "watermark", "must be in [0, 1)")
        need(self.policy in QUEUE_POLICIES, "policy", f"must be one of {', '.join(QUEUE_POLICIES)}")
        need(self.batching in BATCHING_MODES, "batching", f"must be one of {', '.join(BATCHING_MODES)}")
        need(self.kv_layout in KV_LAYOUTS, "kv_layout", f"must be one of {', '.join(KV_LAYOUTS)}")
        if not self.enable_chunked_prefill and self.max_model_len is not None:
            need(
                self.max_num_batched_tokens >= self.max_model_len,
                "max_num_batched_tokens",
                f"must be >= max_model_len ({self.max_model_len}) when chunked prefill is off, "
                "or a long prompt could never be scheduled",
            )
        if self.kv_layout == "contiguous" and self.enable_prefix_caching:
            raise ValueError(
                "SchedulerConfig.enable_prefix_caching=True: the contiguous KV baseline has no "
                "prefix cache; set enable_prefix_caching=False with kv_layout='contiguous'"
            )

    @property
    def is_resolved(self) -> bool:
        return self.num_blocks is not None and self.max_model_len is not None

    def resolved(self, *, num_blocks: int | None = None, model_max_len: int | None = None) -> "SchedulerConfig":
        """This config with its unset fields filled in: `num_blocks` from the engine's budget,
        `max_model_len` from the model's positions. Setting a field the user already set is
        an error: an explicit knob is never silently overridden."""
        changes = {}
        if self.num_blocks is None:
            if num_blocks is None:
                raise ValueError("SchedulerConfig.num_blocks is not set and no KV budget was given to derive it")
            changes["num_blocks"] = num_blocks
        if self.max_model_len is None:
            changes["max_model_len"] = min(DEFAULT_MAX_MODEL_LEN, model_max_len or DEFAULT_MAX_MODEL_LEN)
        elif model_max_len is not None and self.max_model_len > model_max_len:
            raise ValueError(
                f"SchedulerConfig.max_model_len={self.max_model_len} exceeds the model's {model_max_len} positions"
            )
        return replace(self, **changes) if changes else self

    @classmethod
    def knob_fields(cls):
        """The knobs, in declaration order: (name, type, default, help, choices)."""
        hints = {"int": int, "int | None": int, "bool": bool, "str": str, "float": float}
        return [(f.name, hints[f.type] if isinstance(f.type, str) else f.type, f.default, f.metadata["help"],
                 f.metadata["choices"]) for f in fields(cls)]

    @property
    def blocks_per_max_request(self) -> int:
        return cdiv(self.max_model_len, self.block_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SchedulerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SchedulerConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


KNOB_NAMES = tuple(f.name for f in fields(SchedulerConfig))
