"""The policy layer: who runs, how many tokens, and where their KV lives.

Pure Python on purpose (no torch, no numpy, no clock): the simulator and the real executor
drive these very objects, so a policy is studied and tested once.
"""

from policy.config import SchedulerConfig
from policy.contiguous import ContiguousKVCacheManager
from policy.kv_cache_manager import KVCacheManager, PrefixCacheStats
from policy.plan import ScheduledRequest, SchedulerOutput, StepResult
from policy.request import Request, RequestRejected, RequestStatus
from policy.scheduler import Scheduler
from policy.static import StaticBatchScheduler


def build_scheduler(config: SchedulerConfig) -> Scheduler:
    """The scheduler a config describes (continuous or static batching, paged or contiguous KV)."""
    if config.batching == "static":
        return StaticBatchScheduler(config)
    return Scheduler(config)


__all__ = [
    "ContiguousKVCacheManager",
    "KVCacheManager",
    "PrefixCacheStats",
    "Request",
    "RequestRejected",
    "RequestStatus",
    "ScheduledRequest",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "StaticBatchScheduler",
    "StepResult",
    "build_scheduler",
]
