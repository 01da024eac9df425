"""A deterministic stand-in for the model runner, shared by the policy tests.

It keeps its own block tables *only from the plans* (as a real worker must), writes a
fingerprint of every computed token position into a fake KV store addressed by slot, and
before sampling checks that every position a row attends to holds the fingerprint of that
request's true prefix. A stale prefix-cache hit, a wrong block id, or a table the worker was
never told about therefore fails loudly here, and the sampled token is derived from what the
"attention" read, so wrong KV also shows up as different outputs.
"""

from __future__ import annotations

from policy import Scheduler, SchedulerOutput

_MOD = (1 << 61) - 1


def prefix_fingerprints(token_ids: list[int], cache: list[int]) -> list[int]:
    """`cache[p]` identifies `token_ids[: p + 1]` (a rolling hash; grows `cache` in place)."""
    prev = cache[-1] if cache else 7
    for tok in token_ids[len(cache):]:
        prev = (prev * 1_000_003 + tok + 1) % _MOD
        cache.append(prev)
    return cache


class KVMismatch(AssertionError):
    pass


class FakeEngine:
    def __init__(self, scheduler: Scheduler, vocab: int = 50, first_token: int = 5) -> None:
        self.s = scheduler
        self.bs = scheduler.config.block_size
        self.vocab = vocab
        self.first_token = first_token
        self.kv: dict[int, int] = {}  # slot -> fingerprint of the prefix ending at that position
        self.tables: dict[str, list[int]] = {}
        self._fp: dict[str, list[int]] = {}
        self.outputs: dict[str, list[int]] = {}
        self.finish_reasons: dict[str, str] = {}
        self.num_steps = 0

    def slot(self, rid: str, pos: int) -> int:
        table = self.tables[rid]
        idx = pos // self.bs
        if idx >= len(table):
            raise KVMismatch(f"{rid}: position {pos} lies beyond its {len(table)}-block table")
        return table[idx] * self.bs + pos % self.bs

    def next_token(self, fingerprint: int) -> int:
        return self.first_token + fingerprint % self.vocab

    def run_plan(self, plan: SchedulerOutput) -> list[int | None]:
        s = self.s
        for rid in plan.preempted_ids + plan.finished_ids:
            self.tables.pop(rid, None)
        for row in plan.scheduled:
            if row.new_table:
                self.tables[row.request_id] = list(row.block_ids)
            else:
                if row.request_id not in self.tables:
                    raise KVMismatch(f"{row.request_id}: incremental blocks for a table the worker never got")
                self.tables[row.request_id].extend(row.block_ids)
            # The table rebuilt from plans alone must be the scheduler's (append-only tables).
            if self.tables[row.request_id] != s.get_block_ids(row.request_id):
                raise KVMismatch(f"step {plan.step_id}: {row.request_id}: table rebuilt from plans "
                                 f"{self.tables[row.request_id]} != scheduler's {s.get_block_ids(row.request_id)}")
        fps = {}
        # Write every row's new KV first (as a layer does for the whole batch), then read.
        for row in plan.scheduled:
            req = s.requests[row.request_id]
            fp = prefix_fingerprints(req.all_token_ids, self._fp.setdefault(row.request_id, []))
            fps[row.request_id] = fp
            for p in range(row.num_computed_tokens, row.num_computed_tokens + row.num_new_tokens):
                self.kv[self.slot(row.request_id, p)] = fp[p]
        sampled: list[int | None] = []
        for row in plan.scheduled:
            fp = fps[row.request_id]
            end = row.num_computed_tokens + row.num_new_tokens
            for p in range(end):
                got = self.kv.get(self.slot(row.request_id, p))
                if got != fp[p]:
                    raise KVMismatch(
                        f"step {plan.step_id}: {row.request_id} reads stale KV at position {p} "
                        f"(slot {self.slot(row.request_id, p)})"
                    )
            sampled.append(self.next_token(self.kv[self.slot(row.request_id, end - 1)]) if row.samples else None)
        return sampled

    def step(self, token: int | None = None):
        """One engine iteration; `token` forces every sampled token (for tests that want it)."""
        plan = self.s.schedule()
        sampled = self.run_plan(plan)
        if token is not None:
            sampled = [None if t is None else token for t in sampled]
        result = self.s.update_from_output(plan, sampled)
        for rid, tok in result.new_tokens:
            self.outputs.setdefault(rid, []).append(tok)
        for req in result.finished:
            self.finish_reasons[req.request_id] = req.finish_reason
            self._fp.pop(req.request_id, None)
            self.tables.pop(req.request_id, None)
        self.num_steps += 1
        return plan, result

    def forget(self, rid: str) -> None:
        """Drop per-request caches after an abort (the next plan's finished_ids does the same)."""
        self._fp.pop(rid, None)
