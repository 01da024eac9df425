"""Turns a scheduler plan into one forward pass over the paged KV cache.

For each scheduled row it takes the tokens `all_token_ids[computed : computed + new]`, their
positions and cache slots (through the request's block table, which the runner mirrors from
the plans), packs every row back to back — prefill chunks and decodes alike — runs the model
once, and computes logits only at the last token of rows that sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from executor.attention.base import AttentionBackend, AttentionMetadata
from executor.kv_cache import KVCache
from executor.sampler import SampleRow, Sampler, SamplingParams
from policy.utils import cdiv


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    meta: AttentionMetadata
    logits_rows: torch.Tensor  # [num_sampling] flat token index of each sampling row's last token
    sampling_plan_rows: list[int]  # index into plan.scheduled of each sampling row


def build_step_inputs(
    rows: list[tuple[list[int], int, list[int]]],
    samples: list[bool],
    block_size: int,
    device: torch.device,
) -> StepInputs:
    """rows: (token ids to compute, num_computed_tokens, block table) per sequence."""
    ids: list[int] = []
    pos_parts, slot_parts = [], []
    q_lens, seq_lens, starts = [], [], [0]
    max_blocks = 1
    for tokens, computed, table in rows:
        n = len(tokens)
        need = cdiv(computed + n, block_size)
        if need > len(table):
            raise ValueError(
                f"block table of {len(table)} blocks cannot hold {computed + n} tokens (block_size={block_size})"
            )
        ids.extend(tokens)
        if n == 1:
            pos_parts.append(np.array([computed], dtype=np.int64))
            slot_parts.append(np.array([table[computed // block_size] * block_size + computed % block_size], dtype=np.int64))
        else:
            pos = np.arange(computed, computed + n, dtype=np.int64)
            pos_parts.append(pos)
            slot_parts.append(np.asarray(table, dtype=np.int64)[pos // block_size] * block_size + pos % block_size)
        q_lens.append(n)
        seq_lens.append(computed + n)
        starts.append(starts[-1] + n)
        max_blocks = max(max_blocks, need)
    tables = np.zeros((len(rows), max_blocks), dtype=np.int32)
    for i, (_, _, table) in enumerate(rows):
        k = min(len(table), max_blocks)
        tables[i, :k] = table[:k]
    last = [starts[i + 1] - 1 for i, s in enumerate(samples) if s]
    meta = AttentionMetadata(
        slot_mapping=torch.from_numpy(np.concatenate(slot_parts)).to(device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.from_numpy(tables).to(device),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        block_size=block_size,
        query_lens_host=q_lens,
        seq_lens_host=seq_lens,
    )
    return StepInputs(
        input_ids=torch.tensor(ids, dtype=torch.int64, device=device),
        positions=torch.from_numpy(np.concatenate(pos_parts)).to(device),
        meta=meta,
        logits_rows=torch.tensor(last, dtype=torch.int64, device=device),
        sampling_plan_rows=[i for i, s in enumerate(samples) if s],
    )


@dataclass
class RequestState:
    """The worker's own copy of a running request, built from plans alone: its tokens (the
    ones the plan sent when it started, plus every token this runner sampled for it), its
    block table, and how to sample it."""

    token_ids: list[int]
    num_prompt_tokens: int
    block_table: list[int]
    params: SamplingParams
    eos_token_id: int | None

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


_GREEDY = SamplingParams(temperature=0.0)


class ModelRunner:
    """Owns the model, its KV cache and a per-request mirror kept from the plans; executes
    plans. It never sees the scheduler or its `Request` objects (vLLM v1's worker split)."""

    def __init__(self, model, kv_cache: KVCache, backend: AttentionBackend, *, device: torch.device | str,
                 sampler: Sampler | None = None, graph_runner=None) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.backend = backend
        self.device = torch.device(device)
        self.block_size = kv_cache.block_size
        self.sampler = sampler or Sampler(self.device)
        self.states: dict[str, RequestState] = {}
        self.graph_runner = graph_runner
        kv_cache.bind(model, backend)

    # -- per-request state, from plans only ----------------------------------------------
    def drop(self, request_id: str) -> None:
        self.states.pop(request_id, None)

    def reset(self) -> None:
        self.states.clear()

    def _update_states(self, plan) -> None:
        states = self.states
        for rid in plan.preempted_ids:
            states.pop(rid, None)
        for rid in plan.finished_ids:
            states.pop(rid, None)
        for row in plan.scheduled:
            if row.new_table:
                new = row.new_request
                if new is None:
                    raise ValueError(f"plan step {plan.step_id}: request {row.request_id!r} starts without its tokens")
                states[row.request_id] = RequestState(
                    list(new.token_ids), new.num_prompt_tokens, list(row.block_ids),
                    new.sampling_params if new.sampling_params is not None else _GREEDY, new.eos_token_id,
                )
            else:
                state = states.get(row.request_id)
                if state is None:
                    raise KeyError(f"plan step {plan.step_id}: request {row.request_id!r} has no state (new_table=False)")
                if row.block_ids:
                    state.block_table.extend(row.block_ids)

    # -- execution ------------------------------------------------------------------
    def prepare(self, plan) -> StepInputs:
        self._update_states(plan)
        states = self.states
        rows, samples = [], []
        for row in plan.scheduled:
            state = states[row.request_id]
            c, n = row.num_computed_tokens, row.num_new_tokens
            tokens = state.token_ids[c : c + n]
            if len(tokens) != n:
                raise ValueError(
                    f"plan step {plan.step_id}: request {row.request_id!r} asks for tokens [{c}, {c + n}) "
                    f"but the worker knows only {len(state.token_ids)}"
                )
            rows.append((tokens, c, state.block_table))
            samples.append(row.samples)
        return build_step_inputs(rows, samples, self.block_size, self.device)

    @torch.inference_mode()
    def forward_logits(self, inputs: StepInputs) -> torch.Tensor:
        """Logits [num_sampling, vocab] in float32 for the rows that sample."""
        graph = self.graph_runner
        if graph is not None and graph.can_run(inputs):
            hidden = graph.run(inputs)
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        if inputs.logits_rows.numel() == 0:
            return hidden.new_zeros((0, self.model.config.vocab_size), dtype=torch.float32)
        return self.model.compute_logits(hidden[inputs.logits_rows]).to(torch.float32)

    @torch.inference_mode()
    def execute(self, plan) -> list[int | None]:
        """Run one plan; entry i is the token sampled for plan.scheduled[i] (None if it does not
        sample). Each sampled token is also appended to the runner's copy of the request."""
        if plan.is_empty:
            self._update_states(plan)
            return []
        inputs = self.prepare(plan)
        logits = self.forward_logits(inputs)
        out: list[int | None] = [None] * len(plan.scheduled)
        if logits.shape[0] == 0:
            return out
        states = self.states
        sample_states = [states[plan.scheduled[i].request_id] for i in inputs.sampling_plan_rows]
        sample_rows = [SampleRow(st.params, st.num_output_tokens, st.eos_token_id, plan.scheduled[i].request_id)
                       for i, st in zip(inputs.sampling_plan_rows, sample_states)]
        tokens = self.sampler(logits, sample_rows, step=plan.step_id).tolist()
        for i, state, tok in zip(inputs.sampling_plan_rows, sample_states, tokens):
            tok = int(tok)
            out[i] = tok
            state.token_ids.append(tok)
        return out
