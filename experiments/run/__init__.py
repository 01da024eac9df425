"""Running experiments: specs, the resumable runner, calibration, the fidelity protocol."""
