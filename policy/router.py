"""Routers: which replica of a cluster serves a new request.

A router is a policy object like the scheduler: pure Python, no clock, reading only the
replicas' schedulers (their queues and KV caches) and what it was told about requests it
routed and requests that ended. The simulator's cluster (`sim/cluster.py`) calls it; a
multi-replica executor would call the same object.

    route(request, schedulers) -> replica index      # once per arriving request
    on_finished(index, request)                       # a routed request ended

Routers:

- `round-robin`: replicas in turn.
- `least-tokens`: the replica with the fewest outstanding tokens, counted as prompt plus
  `max_tokens` of every request routed to it that has not ended (the work it has been
  promised); ties go to the lowest index.
- `prefix-aware`: the replica whose KV cache holds the longest prefix of the request's
  prompt, unless the load is imbalanced (then least-tokens), or no replica matches at least
  `min_match` of the prompt (then least-tokens too). This is SGLang's cache-aware routing
  rule, with outstanding tokens as the load.
"""

from __future__ import annotations

from policy.request import Request


class Router:
    name = "router"

    def __init__(self, num_replicas: int) -> None:
        if num_replicas < 1:
            raise ValueError(f"a cluster needs at least one replica, got {num_replicas}")
        self.num_replicas = num_replicas
        self.outstanding = [0] * num_replicas  # prompt + max_tokens of live routed requests
        self.routed = [0] * num_replicas
        self._where: dict[str, int] = {}

    def route(self, request: Request, schedulers: list) -> int:
        index = self.choose(request, schedulers)
        self.routed[index] += 1
        self.outstanding[index] += request.num_prompt_tokens + request.max_tokens
        self._where[request.request_id] = index
        return index

    def on_finished(self, index: int, request: Request) -> None:
        if self._where.pop(request.request_id, None) is not None:
            self.outstanding[index] -= request.num_prompt_tokens + request.max_tokens

    def choose(self, request: Request, schedulers: list) -> int:
        raise NotImplementedError

    def least_loaded(self) -> int:
        load = self.outstanding
        return min(range(self.num_replicas), key=load.__getitem__)


class RoundRobinRouter(Router):
    name = "round-robin"

    def __init__(self, num_replicas: int) -> None:
        super().__init__(num_replicas)
        self._next = 0

    def choose(self, request: Request, schedulers: list) -> int:
        index = self._next
        self._next = (index + 1) % self.num_replicas
        return index


class LeastTokensRouter(Router):
    name = "least-tokens"

    def choose(self, request: Request, schedulers: list) -> int:
        return self.least_loaded()


class PrefixAwareRouter(Router):
    """`balance_abs` / `balance_rel`: the load is imbalanced when the most loaded replica has
    more than `balance_abs` outstanding tokens more than the least loaded, and more than
    `balance_rel` times its load (SGLang's two thresholds)."""

    name = "prefix-aware"

    def __init__(self, num_replicas: int, *, min_match: float = 0.3, balance_abs: int = 32768,
                 balance_rel: float = 1.5) -> None:
        super().__init__(num_replicas)
        self.min_match = min_match
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel

    def choose(self, request: Request, schedulers: list) -> int:
        load = self.outstanding
        lo, hi = min(load), max(load)
        if hi - lo > self.balance_abs and hi > self.balance_rel * lo:
            return self.least_loaded()
        best, best_hit = -1, 0
        for i, sched in enumerate(schedulers):
            hit = sched.kv.peek_prefix_hit_tokens(request) if sched.kv.enable_caching else 0
            if hit > best_hit or (hit == best_hit and best >= 0 and hit and load[i] < load[best]):
                best, best_hit = i, hit
        if best >= 0 and best_hit >= self.min_match * request.num_prompt_tokens:
            return best
        return self.least_loaded()


ROUTERS = {cls.name: cls for cls in (RoundRobinRouter, LeastTokensRouter, PrefixAwareRouter)}


def build_router(name: str, num_replicas: int, **options) -> Router:
    """A router by name; unknown names and replica counts below one are clear errors."""
    cls = ROUTERS.get(name)
    if cls is None:
        raise ValueError(f"unknown router {name!r}; known routers: {', '.join(ROUTERS)}")
    return cls(num_replicas, **options)
