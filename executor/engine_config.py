"""The executor's own knobs (where and how the model runs), in one record.

Scheduling knobs are not here: they are `policy.SchedulerConfig`'s, shared with the
simulator. `LLMEngine(model, **knobs)` routes each keyword to one of the two records by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from executor.attention.registry import BACKEND_NAMES


@dataclass(frozen=True)
class ExecutorConfig:
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: cuda when present)"})
    dtype: str | None = field(default=None, metadata={
        "help": "float32 / bfloat16 / float16 (default: bf16 on GPU, fp32 on CPU)"})
    attention_backend: str = field(default="torch", metadata={"help": "Attention kernels", "choices": BACKEND_NAMES})
    kv_cache_memory: int | None = field(default=None, metadata={
        "help": "KV cache bytes, when num_blocks is not set (default: profiled on GPU, 512 MiB on CPU)"})
    gpu_memory_utilization: float = field(default=0.90, metadata={"help": "Fraction of GPU memory the engine may use"})
    cuda_graphs: bool | None = field(default=None, metadata={"help": "Capture decode steps (default: on with CUDA + a capturable backend)"})
    cuda_graph_batch_sizes: tuple[int, ...] | None = None
    seed: int = field(default=0, metadata={"help": "Sampler seed"})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op threads (default: torch's)"})
    load_tokenizer: bool = True

    def __post_init__(self) -> None:
        if self.attention_backend not in BACKEND_NAMES:
            raise ValueError(f"ExecutorConfig.attention_backend={self.attention_backend!r}: choose one of "
                             f"{', '.join(BACKEND_NAMES)}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"ExecutorConfig.gpu_memory_utilization={self.gpu_memory_utilization}: must be in (0, 1]")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"ExecutorConfig.threads={self.threads}: must be >= 1")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
