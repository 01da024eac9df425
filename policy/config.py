"""Every knob of the policy layer in one validated record.

Both engines build their scheduler from this, so a simulated variant and a measured one are
the same object graph by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

QUEUE_POLICIES = ("fcfs", "priority", "shortest-prompt-first", "longest-prefix-match")
BATCHING_MODES = ("continuous", "static")
KV_LAYOUTS = ("paged", "contiguous")


@dataclass(frozen=True)
class SchedulerConfig:
    num_blocks: int  # KV pool size in blocks (derived from a memory budget by the engine)
    block_size: int = 16
    max_model_len: int = 4096
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0  # per-request per-step prefill cap; 0 = off
    enable_prefix_caching: bool = True
    policy: str = "fcfs"
    batching: str = "continuous"
    kv_layout: str = "paged"
    # Admission guards against preemption storms: admit a waiting request only if its whole
    # remaining prompt fits now, and keep this fraction of the pool free when admitting.
    reserve_full_prompt: bool = True
    watermark: float = 0.0

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ValueError(f"SchedulerConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("num_blocks", "block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "must be an integer >= 1")
        need(self.long_prefill_token_threshold >= 0, "long_prefill_token_threshold", "must be >= 0")
        need(0.0 <= self.watermark < 1.0, "watermark", "must be in [0, 1)")
        need(self.policy in QUEUE_POLICIES, "policy", f"must be one of {', '.join(QUEUE_POLICIES)}")
        need(self.batching in BATCHING_MODES, "batching", f"must be one of {', '.join(BATCHING_MODES)}")
        need(self.kv_layout in KV_LAYOUTS, "kv_layout", f"must be one of {', '.join(KV_LAYOUTS)}")
        if not self.enable_chunked_prefill:
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
    def blocks_per_max_request(self) -> int:
        return -(-self.max_model_len // self.block_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SchedulerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SchedulerConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
