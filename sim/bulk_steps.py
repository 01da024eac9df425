"""Running many steps at once, decodes kept lazily, with results identical to stepping one
plan at a time.

In a busy replica almost every step is "every running request decodes one token, and maybe
one prompt is being chunked in beside them". The full `schedule()` / `update_from_output()`
pair pays about a microsecond per running request per step for that; here a step costs a
cost-model call and a step record, plus real work only for the requests something happens to:

- **Decoding requests are kept lazily.** A request that decodes (its prompt is computed and
  it lacks one token) and sits before every other kind of row in the running list computes
  one token per step until it finishes, so its progress is `c0 + (step - j0)` and its tokens
  are filler: nothing is written per step. (The simulator's filler is never one of a
  request's stop tokens, `sim.engine.PricedStep`, so only `max_tokens` / `max_model_len` end
  it, at a step known when it starts decoding.) Its next *event* is known in advance: the step
  where its decode needs a KV-manager call (a new block, or, with prefix caching, a block to
  publish) and the step where it reaches `max_tokens` / `max_model_len`. Events sit in
  buckets keyed by step, and are replayed in running order exactly as the scheduler would
  call `KVCacheManager.allocate_slots` / free the blocks, so block ids, the prefix cache and
  the eviction order are those of step-by-step simulation.
- **Every other row is stepped explicitly** by the scheduler's own rules (the budget after
  the decodes, `long_prefill_token_threshold`, the skip of a manager call that cannot
  change anything), and admissions go through the scheduler's own `_admit`, so a waiting
  queue, a refused admission and a prefix-cache hit behave exactly as in `schedule()`.
- **Arrivals** are submitted through the driver at the step boundary where the loop would
  have submitted them (when the driver lends its arrival stream; a cluster routes arrivals
  itself, so there a stretch stops at the next one).

A stretch stops *before* any step it cannot reproduce: a step that would need more free
blocks than the pool has (the scheduler would preempt), more decodes than the token budget,
an empty running list (the driver's idle handling), or a forked request. Every step keeps
its own `StepRecord`, every token its own time; finishes reach the recorder's
`on_request_finished` and the driver's `on_finished` (a cluster's router) in the scheduler's
order. `tests/sim/test_decode_runs.py` compares all of it with the step-by-step loop (prefix
caching, chunking with and without a per-request cap, forced preemptions, waiting queues held
back by KV or by `max_num_seqs`, every queue policy, block sizes 1 to 32, stop tokens, length
caps, replicas behind each router).

Recorders that replace `TimelineRecorder`'s step methods (the streaming one writes per step)
get the decode-only stretches of `sim/decode_runs.py` instead.
"""

from __future__ import annotations

from array import array

from policy.plan import StepShape
from policy.request import FINISH_REASONS, RequestStatus
from traces.timeline import StepRecord

_RUNNING = RequestStatus.RUNNING
_INF = float("inf")
_NONE: tuple = ()  # an empty row list that is never appended to
_CAPPED = RequestStatus.FINISHED_LENGTH_CAPPED
_LENGTH = FINISH_REASONS[_CAPPED]


class _Lazy:
    """A decoding request advanced implicitly: before step `j` it has computed `c0 + j - j0`
    tokens and holds one more. `key` orders it as the running list does."""

    __slots__ = ("req", "key", "c0", "j0", "fin", "alive")

    def __init__(self, req, key: int, c0: int, j0: int, fin: int) -> None:
        self.req = req
        self.key = key
        self.c0 = c0
        self.j0 = j0
        self.fin = fin  # the step whose token reaches max_tokens / max_model_len
        self.alive = True


def _by_key(lazy: _Lazy) -> int:
    return lazy.key


def _pad(ids, token: int, n: int) -> None:
    """Append `n` copies of `token` (the filler a lazy decode sampled at each step)."""
    if type(ids) is array:
        ids.extend(array(ids.typecode, (token,)) * n)
    else:
        ids.extend([token] * n)


class BulkSteps:
    """Runs one stretch of steps from the scheduler's current state; see the module doc."""

    def __init__(self, scheduler, priced_step, recorder, stats, driver=None, submit_arrivals: bool = False) -> None:
        self.sched = scheduler
        self.step = priced_step
        self.recorder = recorder
        self.stats = stats
        self.driver = driver
        self.submit_arrivals = submit_arrivals and driver is not None
        self.num_steps = 0  # steps advanced here

    def run(self, pending):
        """Advance as far as exactness allows; returns the next arrival not yet submitted."""
        sched = self.sched
        running = sched.running
        if not running or sched._needs_table:
            return pending
        cfg = sched.config
        budget0 = cfg.max_num_batched_tokens
        threshold = cfg.long_prefill_token_threshold
        max_seqs = cfg.max_num_seqs
        max_len = cfg.max_model_len
        bs = cfg.block_size
        kv = sched.kv
        caching = kv.enable_caching
        pool = kv.pool
        free_queue = pool.free_queue
        num_blocks = pool.num_blocks
        allocate = kv.allocate_slots
        grow = kv.grow_by_one_block
        waiting = sched.waiting
        step = self.step
        price = step.price
        special = step._special
        filler = step.filler
        clock = step.clock
        timelines = self.recorder.timelines
        on_request_finished = self.recorder.on_request_finished
        driver = self.driver
        on_finished = driver.on_finished if driver is not None else None
        progress = driver.progress if driver is not None else None  # a progress bar's callback
        submit = self.submit_arrivals
        arrivals = driver.arrivals if submit else None
        if submit and arrivals is None:
            submit = False

        # -- split the running list: a prefix of decodes (lazy), the rest explicit -------------
        lazy_count = 0
        sum_ctx = 0  # sum over lazy requests of (computed + 1) at the current step
        events: dict[int, list[_Lazy]] = {}  # step -> lazy requests needing a manager call
        finishes: dict[int, list[_Lazy]] = {}  # step -> lazy requests finishing there
        explicit: list = []
        key = 0

        def add_lazy(req, c0: int, j0: int) -> None:
            nonlocal lazy_count, sum_ctx, key
            done = min(len(req.prompt_token_ids) + req.max_tokens, max_len)
            k_fin = j0 + done - c0 - 2
            d = _Lazy(req, key, c0, j0, k_fin)
            key += 1
            if k_fin < j0:
                raise AssertionError(f"bulk steps: {req.request_id!r} should already have finished")
            finishes.setdefault(k_fin, []).append(d)
            k_ev = _next_event(c0, req.num_kv_slots, j0)
            if k_ev <= k_fin:
                events.setdefault(k_ev, []).append(d)
            lazy_count += 1
            sum_ctx += c0 + 1

        def _next_event(c: int, slots: int, j: int) -> int:
            ahead = slots - c if slots > c else 0
            if caching:
                publish = bs - 1 - c % bs
                if publish < ahead:
                    ahead = publish
            return j + ahead

        for req in running:
            c = req.num_computed_tokens
            gap = len(req.all_token_ids) - c
            if gap < 1:
                return pending
            if not explicit and gap == 1 and c >= len(req.prompt_token_ids):
                add_lazy(req, c, 0)
            else:
                explicit.append(req)
        if lazy_count > budget0:
            return pending
        # What the next plan would tell PricedStep (the ids stay for the scheduler: if no step
        # runs here, its next plan reports them; if one does, they are replaced below).
        for rid in sched._finished_since_plan:
            special.pop(rid, None)

        t = clock.t
        step_id = sched._step
        ends: list[float] = []
        records: list[StepRecord] = []
        last_finished: list[str] = []
        next_arrival = pending.arrival_time if pending is not None else _INF
        n_waiting = len(waiting)  # changes only where requests are submitted or admitted below
        j = 0
        while True:
            # -- arrivals due at this step boundary (the driver's loop would submit them now)
            if next_arrival <= t:
                if not submit:
                    break
                while pending is not None and pending.arrival_time <= t:
                    driver.submit(pending)
                    pending = next(arrivals, None)
                next_arrival = pending.arrival_time if pending is not None else _INF
                n_waiting = len(waiting)
            if not sched.running or lazy_count > budget0:
                break
            rem = budget0 - lazy_count

            # -- plan: lazy decodes needing the manager, explicit rows; blocks they need ----
            # (A lazy request's events all come at or before its finish, which pops it, so a
            # bucket never holds a finished request.)
            due = events.pop(j, None)
            need = 0
            if due:
                if len(due) > 1:
                    due.sort(key=_by_key)
                for d in due:
                    if d.c0 + j - d.j0 >= d.req.num_kv_slots:
                        need += 1
            rows = []
            b = rem
            for req in explicit:
                if b <= 0:
                    break
                c = req.num_computed_tokens
                n = len(req.all_token_ids) - c
                if threshold and n > threshold:
                    n = threshold
                if n > b:
                    n = b
                more = -(-(c + n) // bs) - req.num_kv_slots // bs
                if more > 0:
                    need += more
                rows.append((req, c, n))
                b -= n
            if need > free_queue.num_free or (not lazy_count and not rows):
                if due:
                    events[j] = due
                break  # the scheduler would preempt (or plan nothing): leave this step to it

            # -- commit the plan, in the scheduler's order: running rows, then admissions ---
            if due:
                for d in due:
                    req = d.req
                    c = d.c0 + j - d.j0
                    if not caching:
                        # c == slots: the one call the scheduler makes here, allocate_slots(req, 1),
                        # appends a block and reads no token (nothing is published).
                        if c >= req.num_kv_slots:
                            req.num_computed_tokens = c
                            if not grow(req):
                                raise AssertionError(f"bulk steps: no block for {req.request_id!r} after the check")
                    elif c >= req.num_kv_slots or not (c + 1) % bs:
                        ids = req.all_token_ids  # the manager hashes the tokens of the blocks it publishes
                        missing = c + 1 - len(ids)
                        if missing:
                            ids.extend([special.get(req.request_id, filler)] * missing)
                        req.num_computed_tokens = c
                        if allocate(req, 1) is None:
                            raise AssertionError(f"bulk steps: allocation for {req.request_id!r} failed after the check")
                    # the next event, as _next_event(c + 1, slots, j + 1) written out
                    c += 1
                    slots = req.num_kv_slots
                    k_ev = j + 1 + (slots - c if slots > c else 0)
                    if caching:
                        publish = j + bs - c % bs
                        if publish < k_ev:
                            k_ev = publish
                    if k_ev <= d.fin:
                        bucket = events.get(k_ev)
                        if bucket is None:
                            events[k_ev] = [d]
                        else:
                            bucket.append(d)
            n_pre = pre_tok = pre_ctx = pairs = n_samp = 0
            n_dec = lazy_count
            dec_ctx = sum_ctx
            sampled = [] if rows or n_waiting else _NONE
            for req, c, n in rows:
                if not (n == 1 and c < req.num_kv_slots and (c + 1) % bs):
                    if allocate(req, n) is None:
                        raise AssertionError(f"bulk steps: allocation for {req.request_id!r} failed after the check")
                req.num_computed_tokens = c + n
            if n_waiting and b > 0 and len(sched.running) < max_seqs:
                admitted = []
                b = sched._admit(admitted, b, bare=True)
                n_waiting = len(waiting)
                for req, c, n in admitted:
                    explicit.append(req)
                    timeline = timelines[req.request_id]
                    if timeline.first_scheduled_s is None:
                        timeline.first_scheduled_s = t
                if admitted:
                    rows += admitted
            # the explicit rows' part of the step shape (policy.plan.plan_shape's sums, one pass)
            for req, c, n in rows:
                decode = n == 1 and c >= len(req.prompt_token_ids)
                if decode:
                    n_dec += 1
                    dec_ctx += c + 1
                else:
                    n_pre += 1
                    pre_tok += n
                    pre_ctx += c + n
                    pairs += n * c + (n * (n + 1) >> 1)
                if c + n == len(req.all_token_ids):
                    sampled.append(req)
                    if not decode:
                        n_samp += 1

            # -- price it -----------------------------------------------------------------
            n_samp += n_dec
            duration = price(StepShape(n_pre, pre_tok, n_dec, pre_ctx, dec_ctx, pairs, n_samp))
            if not duration > 0.0:
                raise ValueError(f"cost model {step.cost_name} priced step {step_id + 1} at {duration!r} s")
            end = t + duration
            step_id += 1
            used = num_blocks - free_queue.num_free
            records.append(StepRecord(step_id, t, end - t, n_pre + n_dec, n_pre, n_dec, pre_tok, n_dec,
                                      pre_ctx + dec_ctx, pre_ctx, 0, n_waiting, used, num_blocks, pairs, n_samp))
            ends.append(end)

            # -- update: tokens, stops, frees (update_from_output's order) ------------------
            finished = _NONE
            gone = finishes.pop(j, None)
            if gone:
                if len(gone) > 1:
                    gone.sort(key=_by_key)
                finished = []
                for d in gone:
                    req = d.req
                    c = d.c0 + j - d.j0
                    ids = req.all_token_ids
                    missing = c + 2 - len(ids)
                    if missing:
                        _pad(ids, special.get(req.request_id, filler), missing)
                    req.num_computed_tokens = c + 1
                    req.status = _CAPPED
                    req.finish_reason = _LENGTH
                    timelines[req.request_id].token_times.extend(ends[d.j0:])
                    d.alive = False
                    lazy_count -= 1
                    sum_ctx -= c + 1
                    finished.append(req)
            for req in sampled:
                req.all_token_ids.append(special.get(req.request_id, filler))
                timelines[req.request_id].token_times.append(end)
                stop = req.check_stop(max_len)
                if stop is not None:
                    req.status = stop
                    req.finish_reason = FINISH_REASONS[stop]
                    if finished is _NONE:
                        finished = []
                    finished.append(req)
            if finished:
                requests = sched.requests
                last_finished = []
                for req in finished:
                    rid = req.request_id
                    last_finished.append(rid)
                    del requests[rid]
                    kv.free(req)
                    special.pop(rid, None)
                    timeline = timelines[rid]
                    timeline.finish_s = end
                    timeline.status = "finished"
                    timeline.finish_reason = req.finish_reason
                    timeline.num_preemptions = req.num_preemptions
                    timeline.num_cached_tokens = max(req.num_cached_tokens, 0)
                for req in finished:
                    on_request_finished(timelines[req.request_id])
                running = sched.running
                if len(finished) * 8 < len(running):
                    for req in finished:
                        running.remove(req)  # (the order of the others is what matters)
                else:
                    sched.running = [r for r in running if r.status is _RUNNING]
                if explicit:
                    explicit = [r for r in explicit if r.status is _RUNNING]
                self.stats.num_finished += len(finished)
                if on_finished is not None:
                    for req in finished:
                        on_finished(req)
            elif last_finished:
                last_finished = []
            sum_ctx += lazy_count
            t = end
            j += 1
            if progress is not None and not j & 4095:
                progress(self.stats)
            # Explicit rows at the head that now decode join the lazy prefix.
            while explicit:
                req = explicit[0]
                c = req.num_computed_tokens
                if len(req.all_token_ids) - c != 1 or c < len(req.prompt_token_ids):
                    break
                explicit.pop(0)
                add_lazy(req, c, j)

        # -- hand the state back: materialise the lazy decodes --------------------------------
        if j:
            for bucket in finishes.values():
                for d in bucket:
                    if d.alive and d.j0 < j:
                        req = d.req
                        c = d.c0 + j - d.j0
                        ids = req.all_token_ids
                        missing = c + 1 - len(ids)
                        if missing:
                            _pad(ids, special.get(req.request_id, filler), missing)
                        req.num_computed_tokens = c
                        timelines[req.request_id].token_times.extend(ends[d.j0:])
            clock.t = t
            sched._step = step_id
            sched._finished_since_plan = last_finished
            self.recorder.steps.extend(records)
            self.stats.num_steps += j
            self.num_steps += j
        return pending
