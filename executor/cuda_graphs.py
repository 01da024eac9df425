"""CUDA graphs for decode steps (GPU only).

For a 0.5B model a decode step is a few hundred tiny kernels, so launch overhead, not the GPU,
sets the pace. We capture the model's forward for a list of padded batch sizes (nano-vllm's
[1, 2, 4, 8, 16, 32, ...]) over persistent input buffers and replay the smallest graph that
fits. Padding rows are harmless: slot -1 skips the KV write, and a zero-length query/sequence
reads nothing. The LM head and sampler run outside the graph on the live rows only. Prefill
and mixed steps, and batches larger than the largest graph, run eagerly.
"""

from __future__ import annotations

from typing import Sequence

import torch

from executor.attention.base import AttentionMetadata
from policy.utils import cdiv


def default_batch_sizes(max_batch: int) -> list[int]:
    sizes = [s for s in (1, 2, 4, 8) if s <= max_batch] + list(range(16, max_batch + 1, 16))
    if max_batch not in sizes:
        sizes.append(max_batch)
    return sorted(set(sizes))


class DecodeGraphRunner:
    def __init__(self, model, *, max_batch: int, max_model_len: int, block_size: int, device: torch.device,
                 batch_sizes: Sequence[int] | None = None) -> None:
        # Off CUDA the runner still pads into its static buffers and runs the model eagerly on
        # them ("padded eager"): that exercises exactly the buffer logic the graphs replay, which
        # is how the CPU tests check it (with the Triton kernels in the interpreter).
        self.use_graphs = torch.device(device).type == "cuda"
        max_batch = min(max_batch, 512)
        self.model = model
        self.batch_sizes = sorted(set(int(b) for b in (batch_sizes or default_batch_sizes(max_batch)) if 0 < int(b) <= max_batch))
        if not self.batch_sizes:
            raise ValueError(f"no CUDA-graph batch size in 1..{max_batch}")
        self.max_bs = self.batch_sizes[-1]
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.max_blocks = cdiv(max_model_len, block_size)
        dev = torch.device(device)
        hidden = model.config.hidden_size
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        self.input_ids = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.slot_mapping = torch.full((self.max_bs,), -1, dtype=torch.int64, device=dev)
        self.seq_lens = torch.zeros(self.max_bs, dtype=torch.int32, device=dev)
        self.query_start_loc = torch.zeros(self.max_bs + 1, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros(self.max_bs, self.max_blocks, dtype=torch.int32, device=dev)
        self.outputs = torch.zeros(self.max_bs, hidden, dtype=dtype, device=dev)
        self._arange = torch.arange(self.max_bs + 1, dtype=torch.int32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph | None] = {}
        self.num_replays = 0

    def _meta(self, bs: int) -> AttentionMetadata:
        # max_seq_len is fixed at max_model_len: the kernel's grid must not depend on live lengths.
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs], query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs], block_tables=self.block_tables[:bs], max_query_len=1,
            max_seq_len=self.max_model_len, block_size=self.block_size,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every batch size, largest first, sharing one memory pool."""
        pool = None
        # Captured (and warmed up) with every sequence empty (q_len 0, seq_len 0, slot -1): the
        # kernels then do no work, and only tensor addresses and shapes are baked into the graph.
        self.query_start_loc.zero_()
        self.seq_lens.zero_()
        self.slot_mapping.fill_(-1)
        if not self.use_graphs:
            self.graphs = {bs: None for bs in self.batch_sizes}
            return
        for bs in reversed(self.batch_sizes):
            meta = self._meta(bs)
            self.outputs[:bs] = self.model(self.input_ids[:bs], self.positions[:bs], meta)  # warm-up (JIT, autotune)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[:bs] = self.model(self.input_ids[:bs], self.positions[:bs], meta)
            pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()

    def can_run(self, inputs) -> bool:
        meta = inputs.meta
        return (
            bool(self.graphs)
            and meta.max_query_len == 1
            and meta.num_seqs <= self.max_bs
            and meta.block_tables.shape[1] <= self.max_blocks
            and inputs.input_ids.shape[0] == meta.num_seqs
        )

    def run(self, inputs) -> torch.Tensor:
        meta = inputs.meta
        n = meta.num_seqs
        bs = next(b for b in self.batch_sizes if b >= n)
        self.input_ids[:n].copy_(inputs.input_ids)
        self.positions[:n].copy_(inputs.positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.query_start_loc[: n + 1].copy_(self._arange[: n + 1])
        if bs > n:
            self.slot_mapping[n:bs].fill_(-1)
            self.seq_lens[n:bs].fill_(0)
            self.query_start_loc[n + 1 : bs + 1].fill_(n)  # padding sequences own no rows
        width = meta.block_tables.shape[1]
        self.block_tables[:n, :width].copy_(meta.block_tables)
        graph = self.graphs[bs]
        if graph is None:
            self.outputs[:bs] = self.model(self.input_ids[:bs], self.positions[:bs], self._meta(bs))
        else:
            graph.replay()
        self.num_replays += 1
        return self.outputs[:n]
