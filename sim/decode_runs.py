"""Advancing decode-only stretches in bulk, with results identical to stepping one at a time.

`DecodeRuns` is the simulator's `StepDriver.after_step` hook. With a recorder that keeps
`TimelineRecorder`'s own step methods it hands every stretch to `sim/bulk_steps.py`, which
also runs prefill chunks, admissions, finishes and arrivals without `schedule()`; with any
other recorder (the streaming one writes per step) it runs the decode-only stretches below.

Most simulated steps of a busy replica are plain decodes: every running request computes one
token, nobody arrives, nobody finishes, and the scheduler would make the same plan again with
each context one token longer. Walking the full `schedule()` / `update_from_output()` pair
for each of those steps costs about a microsecond per running request; here a stretch of them
costs a cost-model call and a step record per step, and a few list extends per request.

A stretch starts after a normal step whose plan was decode-only and ends *before* the first
step where anything could differ from that pattern:

- an arrival is due (the driver's loop would submit it before the next plan);
- a request would finish (its next token reaches `max_tokens` or `max_model_len`);
- a request needs new KV blocks the pool cannot give (the scheduler would preempt);
- with requests waiting and room in the batch: any KV-manager call at all (allocating or
  publishing a block changes what the waiting head could get), so such stretches end at the
  first block boundary of any running request, and need the step before them to have made
  no manager call either (then the admission the scheduler tried there fails again, for the
  same reasons, on every step of the stretch).

Inside a stretch, requests whose decode fills a block or needs a new one go through
`KVCacheManager.allocate_slots` exactly as the scheduler would call it, in the same row
order, so block ids, prefix-cache contents and eviction order are those of step-by-step
simulation. Every step keeps its own `StepRecord` (the steps table is exact, not collapsed),
and every token its own time. `tests/sim/test_decode_runs.py` checks all of it against the
step-by-step loop, with prefix caching, chunking and forced preemptions.

Only the continuous-batching `Scheduler` over the paged `KVCacheManager` is advanced this
way; other policies (static batching, contiguous KV) always step one at a time.
"""

from __future__ import annotations

from policy.kv_cache_manager import KVCacheManager
from policy.plan import StepShape
from policy.scheduler import Scheduler
from sim.bulk_steps import BulkSteps
from traces.timeline import StepRecord, TimelineRecorder

_INF = float("inf")


class DecodeRuns:
    """The simulator's `StepDriver.after_step` hook."""

    def __init__(self, scheduler, priced_step, recorder, stats, driver=None, submit_arrivals: bool = False) -> None:
        self.sched = scheduler
        self.step = priced_step
        self.recorder = recorder
        self.stats = stats
        self.enabled = type(scheduler) is Scheduler and type(scheduler.kv) is KVCacheManager
        # The general stretches (sim/bulk_steps.py) write timelines directly: recorders that
        # keep TimelineRecorder's own step methods only (hooks such as on_request_finished may differ).
        plain = (isinstance(recorder, TimelineRecorder) and type(recorder).on_step is TimelineRecorder.on_step
                 and type(recorder).on_decode_run is TimelineRecorder.on_decode_run)
        self.bulk = BulkSteps(scheduler, priced_step, recorder, stats, driver, submit_arrivals) \
            if self.enabled and plain else None
        self._num_decode_only = 0

    @property
    def num_bulk_steps(self) -> int:
        """Steps advanced here rather than by the scheduler (for the benchmark's breakdown)."""
        return self._num_decode_only + (self.bulk.num_steps if self.bulk is not None else 0)

    def __call__(self, plan, result, pending):
        if self.bulk is not None:
            return self.bulk.run(pending)
        self._decode_only(plan, result, pending)
        return pending

    def _decode_only(self, plan, result, pending) -> None:
        if not self.enabled or result.finished or plan.preempted_ids or plan.num_prefill_tokens:
            return
        sched = self.sched
        if sched._finished_since_plan or sched._needs_table:
            return
        running = sched.running
        n_rows = len(running)
        cfg = sched.config
        if n_rows == 0 or n_rows != len(plan.scheduled) or n_rows > cfg.max_num_batched_tokens:
            return
        bs = cfg.block_size
        waiting = sched.waiting
        admission_tried = bool(waiting) and n_rows < cfg.max_num_seqs
        if admission_tried:
            if len(waiting) != plan.num_waiting:
                return
            for row in plan.scheduled:
                if row.block_ids or not (row.num_computed_tokens + 1) % bs:
                    return  # the last step touched the KV manager: the refused admission may now fit
        max_len = cfg.max_model_len
        limit = 1 << 30
        computed0 = []
        for req in running:
            c = req.num_computed_tokens
            n_tok = len(req.all_token_ids)
            n_prompt = len(req.prompt_token_ids)
            if n_tok - c != 1 or c < n_prompt:
                return
            # Steps j = 0 .. k-1 append tokens n_out+1 .. n_out+k: none may reach a stop.
            left = min(req.max_tokens - (n_tok - n_prompt), max_len - n_tok) - 1
            if left < limit:
                limit = left
            if admission_tried:
                slots = req.num_kv_slots
                to_event = 0 if c >= slots else min(bs - 1 - c % bs, slots - c)
                if to_event < limit:
                    limit = to_event
            computed0.append(c)
        if limit < 1:
            return
        self._advance(running, computed0, limit, pending.arrival_time if pending is not None else _INF,
                      with_events=not admission_tried)

    def _advance(self, running, computed0, limit, arrival, with_events) -> None:
        sched = self.sched
        kv = sched.kv
        pool = kv.pool
        free_queue = pool.free_queue
        num_blocks = pool.num_blocks
        bs = sched.config.block_size
        caching = kv.enable_caching
        step = self.step
        price = step.price
        special = step._special
        filler = step.filler
        clock = step.clock
        n_rows = len(running)
        n_waiting = len(sched.waiting)
        by_residue: dict[int, list[int]] = {}
        if with_events:
            for i, c in enumerate(computed0):
                by_residue.setdefault(c % bs, []).append(i)
        ctx0 = sum(computed0) + n_rows
        step_id = sched._step
        t = clock.t
        used = num_blocks - free_queue.num_free
        ends: list[float] = []
        records: list[StepRecord] = []
        for j in range(limit):
            if arrival <= t:
                break
            if with_events:
                fill = by_residue.get((bs - 1 - j) % bs)
                grow = by_residue.get((-j) % bs) if bs > 1 else None
                rows = fill if not grow else (grow if not fill else sorted(fill + grow))
                if rows:
                    need = 0
                    for i in rows:
                        if computed0[i] + j >= running[i].num_kv_slots:
                            need += 1
                    if need > free_queue.num_free:
                        break  # the scheduler would preempt here: leave this step to it
                    for i in rows:
                        req = running[i]
                        c = computed0[i] + j
                        if c < req.num_kv_slots and ((c + 1) % bs or not caching):
                            continue  # fits its block and publishes nothing: no manager call
                        ids = req.all_token_ids
                        missing = c + 1 - len(ids)
                        if missing:
                            ids.extend([special.get(req.request_id, filler)] * missing)
                        req.num_computed_tokens = c
                        if kv.allocate_slots(req, 1) is None:  # counted above, so it cannot happen
                            raise AssertionError(f"decode run: allocation for {req.request_id!r} failed after the check")
                    used = num_blocks - free_queue.num_free
            ctx = ctx0 + j * n_rows
            duration = price(StepShape(0, 0, n_rows, 0, ctx, 0, n_rows))
            if not duration > 0.0:
                raise ValueError(f"cost model {step.cost_name} priced step {step_id + 1} at {duration!r} s")
            end = t + duration
            step_id += 1
            records.append(StepRecord(step_id, t, end - t, n_rows, 0, n_rows, 0, n_rows, ctx, 0, 0, n_waiting,
                                      used, num_blocks, 0, n_rows))
            ends.append(end)
            t = end
        k = len(ends)
        if not k:
            return
        clock.t = t
        sched._step = step_id
        for i, req in enumerate(running):
            c = computed0[i] + k
            ids = req.all_token_ids
            missing = c + 1 - len(ids)
            if missing:
                ids.extend([special.get(req.request_id, filler)] * missing)
            req.num_computed_tokens = c
        self.recorder.on_decode_run([req.request_id for req in running], records, ends)
        self.stats.num_steps += k
        self._num_decode_only += k
