"""The runner: results keyed by their inputs, resumable, reused when unchanged, atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from experiments.run.runner import plan_jobs, run_spec
from experiments.run.spec import SpecError, load_spec


def sim_spec(tmp_path: Path, **over) -> Path:
    data = {
        "name": "resume",
        "trace": {"preset": "poisson", "params": {"num_requests": 24, "rate": 8.0}, "max_prompt_len": 256,
                  "max_output_len": 32},
        "model": "qwen3-0.6b",
        "hardware": "h100-sxm",
        "cost_model": "roofline",
        "engines": ["sim"],
        "base": {"max_model_len": 1024},
        "variants": [{"name": "cont"}, {"name": "static", "batching": "static"}],
        "grid": {"max_num_seqs": [2, 8]},
    }
    data.update(over)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _stat(run_dir: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(run_dir.iterdir())}


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_redoing_finished_variants(tmp_path):
    spec = load_spec(sim_spec(tmp_path))
    out = tmp_path / "out"
    finished = []

    def fail_after_first(job):
        finished.append(job)
        raise Interrupt("injected failure after the first variant")

    with pytest.raises(Interrupt):
        run_spec(spec, out, workers=1, progress=False, on_job_done=fail_after_first)
    runs = sorted(p for p in (out / "runs").iterdir())
    assert [p.name for p in runs] == [finished[0].dirname]  # exactly one finished, no half-written folder
    before = _stat(runs[0])

    report = run_spec(spec, out, workers=1, progress=False)
    assert len(report.reused) == 1 and len(report.ran) == 3
    assert _stat(runs[0]) == before  # not rewritten: same inode and mtime for every file
    index = json.loads((out / "index.json").read_text())["jobs"]
    assert len(index) == 4
    for job in index:
        summary = json.loads((out / job["dir"] / "summary.json").read_text())
        assert summary["num_finished"] == 24


def test_changed_variant_reruns_and_unchanged_ones_are_reused(tmp_path):
    out = tmp_path / "out"
    first = run_spec(load_spec(sim_spec(tmp_path)), out, workers=1, progress=False)
    assert len(first.ran) == 4
    # Renaming a variant changes nothing about its inputs; changing a knob does.
    spec = load_spec(sim_spec(tmp_path, variants=[{"name": "continuous"},
                                                  {"name": "static", "batching": "static", "max_model_len": 2048}]))
    second = run_spec(spec, out, workers=1, progress=False)
    assert sorted(j.variant.name for j in second.reused) == ["continuous/max_num_seqs=2", "continuous/max_num_seqs=8"]
    assert sorted(j.variant.name for j in second.ran) == ["static/max_num_seqs=2", "static/max_num_seqs=8"]


def test_keys_cover_the_inputs(tmp_path):
    keys = {j.variant.name: j.key for j in plan_jobs(load_spec(sim_spec(tmp_path)))}
    assert len(set(keys.values())) == 4
    other_seed = {j.variant.name: j.key for j in plan_jobs(load_spec(sim_spec(tmp_path, seeds=[1])))}
    assert not set(keys.values()) & set(other_seed.values())
    other_hw = {j.key for j in plan_jobs(load_spec(sim_spec(tmp_path, hardware="a100-80g")))}
    assert not set(keys.values()) & other_hw
    assert keys == {j.variant.name: j.key for j in plan_jobs(load_spec(sim_spec(tmp_path)))}  # deterministic


def test_a_change_to_the_engine_code_reruns(tmp_path, monkeypatch):
    """Results measured or priced by older code are not reused (e.g. after a faster kernel lands)."""
    import experiments.run.runner as runner

    before = {j.key for j in plan_jobs(load_spec(sim_spec(tmp_path)))}
    monkeypatch.setattr(runner, "code_fingerprint", lambda *packages: "changed")
    assert not before & {j.key for j in plan_jobs(load_spec(sim_spec(tmp_path)))}


def test_parallel_workers_give_the_same_results(tmp_path):
    spec = load_spec(sim_spec(tmp_path))
    run_spec(spec, tmp_path / "serial", workers=1, progress=False)
    run_spec(spec, tmp_path / "parallel", workers=2, progress=False)
    for job in json.loads((tmp_path / "serial" / "index.json").read_text())["jobs"]:
        a = (tmp_path / "serial" / job["dir"] / "summary.json").read_text()
        b = (tmp_path / "parallel" / job["dir"] / "summary.json").read_text()
        assert a == b


def test_ray_without_ray_installed_is_a_clear_error(tmp_path):
    pytest.importorskip("yaml")
    try:
        import ray  # noqa: F401

        pytest.skip("ray is installed here")
    except ImportError:
        pass
    with pytest.raises(SpecError, match="--ray needs the optional 'ray' package"):
        run_spec(load_spec(sim_spec(tmp_path)), tmp_path / "out", ray_address="auto", progress=False)


def test_spec_selects_the_profile_driven_cost_model(tmp_path):
    """`cost_model: profile:DIR` in a spec reaches the simulator (folder relative to the spec)."""
    from sim.cost.op_laws import laws_for
    from sim.cost.layer_ops import elementwise_bytes_per_token, gemm_dims
    from sim.cost.op_profile import write_own
    from sim.models import get_model_shape

    shape, laws = get_model_shape("qwen3-0.6b"), laws_for("h100-sxm")
    dims, nbytes = gemm_dims(shape), elementwise_bytes_per_token(shape)
    meas = [(t, {**{op: 3 * laws.gemm[op].seconds(t, *dims[op]) for op in dims},
                 **{op: 3 * law.seconds(t * nbytes[op]) for op, law in laws.elementwise.items()}}) for t in (1, 64, 1024)]
    write_own(tmp_path / "prof" / "ops.csv", device="h100", dtype="bf16", model=shape, tp=1, measurements=meas)
    spec = load_spec(sim_spec(tmp_path, cost_model="profile:prof", dtype="bf16", variants=[{"name": "cont"}],
                              grid={"max_num_seqs": [8]}))
    assert spec.cost_model == f"profile:{tmp_path / 'prof'}"
    report = run_spec(spec, tmp_path / "out", workers=1, progress=False)
    run = json.loads((tmp_path / "out" / "runs" / report.ran[0].dirname / "run.json").read_text())
    assert run["cost_model"]["spec"].startswith("profile:") and run["cost_model_describe"]["kind"] == "profile"
    with pytest.raises(SpecError, match="no ops.csv or mlp.csv"):
        load_spec(sim_spec(tmp_path, cost_model="profile:nowhere"))


def test_executor_runs_go_round_by_round(tmp_path, monkeypatch):
    """Every variant's first repeat before any variant's second: machine drift over a long spec
    lands in each variant's spread, not between variants."""
    from experiments.run import runner

    order = []

    class FakePool:  # records the order; the runs themselves are not what this test is about
        def __init__(self, spec, max_blocks, speed_reference_s=None):
            pass

        def run(self, job, out):
            order.append((job.variant.name, job.repeat))

    monkeypatch.setattr(runner, "ExecutorPool", FakePool)
    spec = load_spec(sim_spec(tmp_path, engines=["executor"], model="smollm2-135m", repeats=2, grid={},
                              variants=[{"name": "a"}, {"name": "b"}, {"name": "c"}]))
    jobs = [j for j in plan_jobs(spec) if j.engine == "executor"]
    assert [(j.variant.name, j.repeat) for j in jobs][:2] == [("a", 0), ("a", 1)]  # planned variant by variant
    run_spec(spec, tmp_path / "out", workers=1, progress=False)
    assert order == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1)]


def test_cpu_ref_executor_runs_are_keyed_by_the_profiles_speed_reference(tmp_path, monkeypatch):
    """A cpu-ref replay reads time on its calibration's scale, so a recalibration (a new probe
    reference) must rerun it, and the pool must get that reference to build the clock with."""
    from experiments.run import runner

    got = []

    class FakePool:
        def __init__(self, spec, max_blocks, speed_reference_s=None):
            got.append(speed_reference_s)

        def run(self, job, out):
            pass

    monkeypatch.setattr(runner, "ExecutorPool", FakePool)

    def profile(reference: float) -> Path:
        path = tmp_path / f"profile-{reference}.json"
        path.write_text(json.dumps({"format": "folovllm-step-profile", "version": 2, "model": "smollm2-135m",
                                    "hardware": {"name": "measured", "speed_reference_s": reference},
                                    "coefficients": {"const": 0.01}}))
        return path

    spec = load_spec(sim_spec(tmp_path, engines=["executor"], model="smollm2-135m", cost_model="calibrated",
                              grid={}, variants=[{"name": "a"}], executor={"threads": 1, "clock": "cpu-ref"}))
    keys = {ref: plan_jobs(spec, profile_path=str(profile(ref)))[0].key for ref in (0.004, 0.005)}
    assert keys[0.004] != keys[0.005]
    run_spec(spec, tmp_path / "out", workers=1, progress=False, profile_path=str(profile(0.004)))
    assert got == [0.004]
    wall = load_spec(sim_spec(tmp_path, engines=["executor"], model="smollm2-135m", cost_model="calibrated",
                              grid={}, variants=[{"name": "a"}], executor={"threads": 1, "clock": "cpu"}))
    assert plan_jobs(wall, profile_path=str(profile(0.004)))[0].key == plan_jobs(wall, profile_path=str(profile(0.005)))[0].key
