"""The continuous-batching scheduler (vLLM v1 style): one token budget per step, running
requests first, then waiting ones.

There are no prefill and decode phases. Each request's `num_computed_tokens` chases its
`num_tokens`; a step gives each request `min(gap, budget left)` tokens. A long prompt
therefore spreads over several steps (chunked prefill), a decode is a gap of one, and a
prefix-cache hit or a resumed preemption just starts the chase further along.
"""

from __future__ import annotations

from policy.config import SchedulerConfig
from policy.contiguous import ContiguousKVCacheManager
from policy.kv_cache_manager import NO_BLOCKS, KVCacheManager, PrefixCacheStats
from policy.plan import NewRequestData, ScheduledRequest, SchedulerOutput, StepResult
from policy.queues import make_queue
from policy.request import FINISH_REASONS, Request, RequestRejected, RequestStatus

_RUNNING = RequestStatus.RUNNING


def _new_request_data(req: Request) -> NewRequestData:
    return NewRequestData(list(req.all_token_ids), req.num_prompt_tokens, req.sampling_params, req.eos_token_id)


class Scheduler:
    """Decides, each step, which requests run and how many tokens each computes, within one
    token budget, `max_num_seqs` and the KV pool; preempts by recompute when the pool runs dry.

    Engines talk to it through four calls: `add_request` / `abort` (requests in and out),
    `schedule()` (a `SchedulerOutput` plan that carries everything a worker needs) and
    `update_from_output(plan, sampled_tokens)` (append tokens, apply stop rules, free KV).
    It owns the waiting queue (ordered by the configured policy) and the running list, and
    delegates block accounting to its KV manager. It never reads a clock or touches a tensor.
    """

    def __init__(self, config: SchedulerConfig) -> None:
        if not config.is_resolved:
            config = config.resolved()  # max_model_len: the default; num_blocks must be set
        self.config = config
        if config.kv_layout == "contiguous":
            self.kv = ContiguousKVCacheManager(config.num_blocks, config.block_size, config.max_model_len)
        else:
            self.kv = KVCacheManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.requests: dict[str, Request] = {}
        self.waiting = make_queue(config.policy)
        self.running: list[Request] = []
        self._finished_since_plan: list[str] = []
        self._needs_table: set[str] = set()  # running requests whose table the worker lacks (forks)
        self._step = 0
        self.num_preemptions = 0
        self._keep_free = int(config.watermark * config.num_blocks)

    # -- requests in and out ----------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queue a request, or raise RequestRejected naming what is wrong with it."""
        self.validate(request)
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.add(request)

    def validate(self, request: Request) -> None:
        """Raise RequestRejected if `add_request` would refuse this request; changes nothing."""
        rid = request.request_id
        cfg = self.config
        if rid in self.requests:
            raise RequestRejected(f"request {rid!r}: duplicate request_id (already queued or running)")
        if request.status is not RequestStatus.WAITING or request.num_output_tokens:
            raise RequestRejected(f"request {rid!r}: already used (status {request.status.name}); submit a fresh Request")
        if not request.prompt_token_ids:
            raise RequestRejected(f"request {rid!r}: prompt_token_ids is empty")
        if not isinstance(request.max_tokens, int) or request.max_tokens < 1:
            raise RequestRejected(f"request {rid!r}: max_tokens={request.max_tokens!r} must be an integer >= 1")
        if request.min_tokens < 0:
            raise RequestRejected(f"request {rid!r}: min_tokens={request.min_tokens} must be >= 0")
        if request.num_prompt_tokens >= cfg.max_model_len:
            raise RequestRejected(
                f"request {rid!r}: prompt of {request.num_prompt_tokens} tokens leaves no room to generate "
                f"within max_model_len={cfg.max_model_len}"
            )
        longest = min(request.num_prompt_tokens + request.max_tokens, cfg.max_model_len)
        capacity = self.kv.max_blocks_per_request
        if self.kv.blocks_for_tokens(longest) > capacity:
            raise RequestRejected(
                f"request {rid!r}: up to {longest} tokens need {self.kv.blocks_for_tokens(longest)} KV blocks "
                f"but the pool has {cfg.num_blocks}; it could never finish"
            )

    def abort(self, request_id: str) -> Request:
        """Stop a live request now; its KV is freed and the next plan lists it as finished."""
        request = self.requests.pop(request_id, None)
        if request is None:
            raise KeyError(f"abort: unknown or already finished request id {request_id!r}")
        if request.status is _RUNNING:
            self.running.remove(request)
            self._needs_table.discard(request_id)
        else:
            self.waiting.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.FINISHED_ABORTED
        request.finish_reason = "abort"
        self._finished_since_plan.append(request_id)
        return request

    def fork(self, parent_id: str, child: Request) -> Request:
        """Start `child` (same prompt, e.g. another sample of a parallel-sampling request)
        sharing the parent's full KV blocks; it joins the running batch directly."""
        parent = self.requests.get(parent_id)
        if parent is None or parent.status is not _RUNNING:
            raise KeyError(f"fork: {parent_id!r} is not a running request")
        if len(self.running) >= self.config.max_num_seqs:
            raise RequestRejected(f"fork: running batch is full (max_num_seqs={self.config.max_num_seqs})")
        self.validate(child)
        if child.all_token_ids[: parent.num_tokens] != parent.all_token_ids[: child.num_tokens]:
            raise RequestRejected(f"fork: child {child.request_id!r} does not extend the parent's tokens")
        child.num_computed_tokens = self.kv.fork(parent, child)
        child.num_cached_tokens = child.num_computed_tokens
        child.status = _RUNNING
        self.requests[child.request_id] = child
        self.running.append(child)
        self._needs_table.add(child.request_id)
        return child

    # -- state ----------------------------------------------------------------------------
    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def kv_cache_usage(self) -> float:
        return self.kv.usage

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self.kv.stats

    def get_block_ids(self, request_id: str) -> list[int]:
        return self.kv.get_block_ids(request_id)

    def reset_prefix_cache(self) -> bool:
        return self.kv.reset_prefix_cache()

    # -- the step -------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        cfg = self.config
        kv = self.kv
        budget = cfg.max_num_batched_tokens
        threshold = cfg.long_prefill_token_threshold
        block_size = cfg.block_size
        rows: list[ScheduledRequest] = []
        preempted: list[str] = []
        needs_table = self._needs_table
        running = self.running

        # Phase A: running requests, in admission order.
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            computed = req.num_computed_tokens
            n = len(req.all_token_ids) - computed
            if threshold and n > threshold:
                n = threshold
            if n > budget:
                n = budget
            if n <= 0:
                i += 1
                continue
            if n == 1 and computed < req.num_kv_slots and (computed + 1) % block_size:
                # A decode that fits its last block without filling it: nothing to
                # allocate and no block to publish, so skip the manager (the hot path).
                new_ids = NO_BLOCKS
            else:
                new_ids = kv.allocate_slots(req, n)
            while new_ids is None:
                victim = self._pick_victim()
                vi = running.index(victim)
                if vi < i:
                    refund = self._unschedule(rows, victim)
                    budget += refund
                    # Blocks it published for this step's tokens will never be computed now:
                    # withdraw them, or a later hit (its own readmission) reads garbage KV.
                    kv.unpublish_uncomputed(victim, victim.num_computed_tokens - refund)
                    i -= 1
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
                new_ids = kv.allocate_slots(req, n)
            if new_ids is None:
                break
            rid = req.request_id
            if needs_table and rid in needs_table:
                needs_table.discard(rid)
                rows.append(ScheduledRequest(rid, n, computed, kv.get_block_ids(rid), True,
                                             computed + n == len(req.all_token_ids), req.num_prompt_tokens,
                                             _new_request_data(req)))
            else:
                rows.append(ScheduledRequest(rid, n, computed, new_ids, False,
                                             computed + n == len(req.all_token_ids), len(req.prompt_token_ids)))
            req.num_computed_tokens = computed + n
            budget -= n
            i += 1

        # Phase B: admissions, only in a step that preempted nobody (a preemption means the
        # pool is short; admitting now would only cause the next one).
        if not preempted:
            budget = self._admit(rows, budget)

        num_prefill = num_decode = 0
        for row in rows:
            if row.num_new_tokens == 1 and row.num_computed_tokens >= row.num_prompt_tokens:
                num_decode += 1
            else:
                num_prefill += row.num_new_tokens
        finished_ids = self._finished_since_plan
        self._finished_since_plan = []
        self._step += 1
        return SchedulerOutput(
            self._step, rows, preempted, finished_ids, num_prefill, num_decode,
            kv.num_used_blocks, cfg.num_blocks, len(self.waiting),
        )

    def _may_admit(self) -> bool:
        """Hook for batching disciplines: continuous batching admits whenever there is room."""
        return True

    def _admit(self, rows: list, budget: int, bare: bool = False) -> int:
        """Admit waiting requests while budget, `max_num_seqs` and the pool allow; append one
        plan row per admission to `rows` (with `bare`, just `(request, num_hit_tokens,
        num_new_tokens)`: the simulator's bulk steps need no worker data) and return the
        budget left."""
        cfg = self.config
        kv = self.kv
        waiting = self.waiting
        running = self.running
        threshold = cfg.long_prefill_token_threshold
        if waiting and budget > 0 and len(running) < cfg.max_num_seqs and self._may_admit():
            waiting.reorder(kv)
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs and self._may_admit():
            req = waiting.peek()
            hit_blocks, num_hit = kv.get_computed_blocks(req)
            remaining = req.num_tokens - num_hit
            n = remaining
            if threshold and n > threshold:
                n = threshold
            if n > budget:
                if not cfg.enable_chunked_prefill:
                    break
                n = budget
            new_ids = kv.allocate_slots(
                req, n, hit_blocks, num_hit,
                reserve_tokens=remaining if cfg.reserve_full_prompt else 0,
                keep_free_blocks=self._keep_free if running else 0,
            )
            if new_ids is None:
                break  # head-of-line: the queue's order is the policy, so do not skip ahead
            waiting.pop()
            kv.record_admission(req, num_hit)
            req.status = _RUNNING
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = num_hit
            running.append(req)
            if bare:
                rows.append((req, num_hit, n))
            else:
                rows.append(ScheduledRequest(req.request_id, n, num_hit, kv.get_block_ids(req.request_id), True,
                                             num_hit + n == req.num_tokens, req.num_prompt_tokens,
                                             _new_request_data(req)))
            req.num_computed_tokens = num_hit + n
            budget -= n
        return budget

    def _pick_victim(self) -> Request:
        if self.config.policy == "priority":
            # Lowest priority (largest value) first, latest arrival among equals, and among
            # requests equal in both the most recently admitted: `max` keeps the first maximum
            # it meets, so scan newest first. (Scanning oldest first preempted the request
            # furthest along, and two requests too big to fit together preempted each other
            # forever: a livelock the property tests found.)
            return max(reversed(self.running), key=lambda r: (r.priority, r.arrival_time))
        return self.running[-1]  # the most recently admitted

    @staticmethod
    def _unschedule(rows: list[ScheduledRequest], victim: Request) -> int:
        """Drop a row scheduled earlier in this step; returns the tokens to refund."""
        for k, row in enumerate(rows):
            if row.request_id == victim.request_id:
                del rows[k]
                return row.num_new_tokens
        return 0

    def _preempt(self, request: Request) -> None:
        """Preemption by recompute: free every block (they keep their hashes, so readmission
        usually hits much of its own KV), forget progress, and requeue at the head."""
        self.running.remove(request)
        self._needs_table.discard(request.request_id)
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.prepend(request)

    def update_from_output(self, plan: SchedulerOutput, sampled_token_ids) -> StepResult:
        """Append each sampled token, apply the stop rule, and free finished requests.
        `sampled_token_ids[i]` belongs to `plan.scheduled[i]` and is read only for rows
        that sample."""
        if len(sampled_token_ids) != len(plan.scheduled):
            raise ValueError(
                f"update_from_output: plan {plan.step_id} has {len(plan.scheduled)} rows but "
                f"{len(sampled_token_ids)} sampled tokens were given (one entry per row, None for rows that do not sample)"
            )
        requests = self.requests
        max_len = self.config.max_model_len
        new_tokens: list[tuple[str, int]] = []
        finished: list[Request] = []
        for row, token in zip(plan.scheduled, sampled_token_ids):
            if not row.samples:
                continue
            req = requests.get(row.request_id)
            if req is None or req.status is not _RUNNING:
                continue  # aborted or preempted after this plan was made
            req.all_token_ids.append(token)
            new_tokens.append((row.request_id, token))
            stop = req.check_stop(max_len)
            if stop is not None:
                req.status = stop
                req.finish_reason = FINISH_REASONS[stop]
                finished.append(req)
        if finished:
            done_ids = self._finished_since_plan
            for req in finished:
                done_ids.append(req.request_id)
                del requests[req.request_id]
                self.kv.free(req)
                self._needs_table.discard(req.request_id)
            self.running = [r for r in self.running if r.status is _RUNNING]
        return StepResult(new_tokens, finished)
