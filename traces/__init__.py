"""Workload traces in (readers, generators, transforms, stats, the canonical table) and
request timelines out (`traces.timeline`, `traces.metrics`)."""

from traces import stats, transforms  # so `traces.stats.describe` / `traces.transforms.head` work after `import traces`
from traces.errors import TraceFormatError
from traces.generators import LengthDist, generate
from traces.io import load, write
from traces.table import TraceTable

__all__ = ["stats", "transforms", "LengthDist", "TraceFormatError", "TraceTable", "generate", "load", "write"]
