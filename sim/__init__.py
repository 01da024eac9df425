"""The discrete-event simulator: the policy objects, a virtual clock, and a step cost model.
No torch, no executor: a trace replays in seconds on one CPU core."""

from sim.engine import SimulationStalled, simulate
from sim.hardware import HardwareSpec, get_hardware, kv_blocks_for
from sim.models import ModelShape, get_model_shape
from traces.run_result import RunResult

__all__ = [
    "HardwareSpec",
    "ModelShape",
    "RunResult",
    "SimulationStalled",
    "get_hardware",
    "get_model_shape",
    "kv_blocks_for",
    "simulate",
]
