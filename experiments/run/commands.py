"""`folovllm run | calibrate | report | demo`: the experiment commands users run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

DEMO_SPEC = Path(__file__).resolve().parents[1] / "specs" / "demo.yaml"


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _print_summary(out: Path, comparison: dict | None = None) -> None:
    from experiments.analysis import compare as compare_mod
    from experiments.analysis.report import fmt, pct

    runs = compare_mod.load_runs(out)
    if runs.empty:
        click.echo("no finished runs")
        return
    cols = [("variant", 28), ("engine", 9), ("seed", 4), ("repeat", 3), ("ttft_p50_s", 10), ("ttft_p90_s", 10),
            ("tpot_p50_s", 10), ("e2el_p50_s", 10), ("output_throughput", 10), ("num_preemptions", 7)]
    cols = [(c, w) for c, w in cols if c in runs.columns]
    # the first column is as wide as the longest variant name: grid rows differ only at the end
    cols[0] = ("variant", max([len("variant")] + [len(str(v)) for v in runs["variant"]]))
    names = {"ttft_p50_s": "TTFT p50", "ttft_p90_s": "TTFT p90", "tpot_p50_s": "TPOT p50", "e2el_p50_s": "E2EL p50",
             "output_throughput": "out tok/s", "num_preemptions": "preempt", "repeat": "rep"}
    click.echo("  ".join(names.get(c, c).rjust(w) if i else names.get(c, c).ljust(w) for i, (c, w) in enumerate(cols)))
    for _, row in runs.iterrows():
        click.echo("  ".join((str(row[c])[:w].ljust(w) if i == 0 else fmt(row[c])[:w].rjust(w))
                             for i, (c, w) in enumerate(cols)))
    if comparison and comparison.get("headline"):
        h = comparison["headline"]
        click.echo(f"\nsim vs executor: median |error| {pct(h['median_abs_error'])} across {', '.join(h['metrics'])} "
                   f"(max {pct(h['max_abs_error'])}); executor run-to-run spread {pct(h['median_run_to_run_spread'])}")
        for metric, r in comparison["rankings"].items():
            click.echo(f"  ranking by {metric}: Kendall tau {fmt(r.get('tau'))}"
                       + ("" if r.get("same_order") is None else (", same order" if r["same_order"] else ", DIFFERENT order")))


def _run_and_report(spec, out: Path, *, workers, ray, report: bool, profile_path=None) -> dict | None:
    from experiments.run.runner import run_spec

    rep = run_spec(spec, out, workers=workers, ray_address=ray, profile_path=profile_path)
    click.echo(f"{len(rep.ran)} run(s) done, {len(rep.reused)} reused, in {rep.wall_s:.1f} s -> {out}")
    from experiments.analysis.compare import write_comparison

    comparison = write_comparison(out)
    if report:
        from experiments.analysis.report import write_report

        html_path, md_path = write_report(out)
        click.echo(f"report: {html_path} and {md_path}")
    return comparison


def _spec_max_model_len(spec) -> int:
    """The longest context any variant of the spec allows: the calibration grid spans it."""
    return max(int(v.knobs["max_model_len"]) for v in spec.variants)


def _profile_for(spec) -> str | None:
    if spec.cost_model == "calibrated" and "sim" in spec.engines:
        from experiments.run.calibrate import ensure_profile

        return str(ensure_profile(spec.model, spec.dtype, echo=click.echo, threads=spec.executor.get("threads"),
                                  max_model_len=_spec_max_model_len(spec), clock=spec.executor.get("clock", "wall")))
    return None


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Results folder (default: results/<spec name>). Rerunning resumes it.")
@click.option("--workers", type=int, default=None, help="Simulation worker processes (default: one per core).")
@click.option("--ray", "ray", metavar="ADDRESS", default=None, help="Run the simulation grid on a Ray cluster.")
@click.option("--engines", default=None, help="Override the spec's engines, e.g. 'sim' or 'sim,executor'.")
@click.option("--cost-model", "cost_model", default=None,
              help="Override the spec's cost model: roofline, roofline-ideal, roofline-fitted, profile:DIR, "
                   "calibrated, constant, or a profile .json.")
@click.option("--report/--no-report", default=True, help="Write report.html / report.md at the end.")
@click.option("--arrival-mode", type=click.Choice(["batch", "spread"]), default=None,
              help="Override the spec's trace.arrival_mode (traces with quantised timestamps, e.g. Mooncake): "
                   "batch keeps each ~3 s bucket together, spread places its arrivals inside the bucket (seeded).")
def run(spec_path, out, workers, ray, engines, cost_model, report, arrival_mode):
    """Run every variant of the experiment SPEC (YAML) in each requested engine."""
    from executor.errors import CheckpointError, NonFiniteError
    from experiments.analysis.compare import ComparisonError
    from experiments.run.spec import SpecError, load_spec

    try:
        overrides = {}
        if engines:
            overrides["engines"] = [e.strip() for e in engines.split(",") if e.strip()]
        if cost_model:
            overrides["cost_model"] = cost_model
        if arrival_mode:
            from experiments.run.strict_yaml import load_yaml_file

            load_spec(spec_path)  # a missing or malformed spec is reported as such before it is read here
            overrides["trace"] = {**load_yaml_file(spec_path)["trace"], "arrival_mode": arrival_mode}
        spec = load_spec(spec_path, overrides or None)
        out_dir = Path(out) if out else Path("results") / spec.name
        comparison = _run_and_report(spec, out_dir, workers=workers, ray=ray, report=report,
                                     profile_path=_profile_for(spec))
    except (SpecError, FileNotFoundError, ComparisonError, CheckpointError, NonFiniteError) as exc:
        raise _fail(exc) from None
    _print_summary(out_dir, comparison)


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True,
              help="smollm2-135m, an HF model directory, or random:<shape>.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Profile JSON to write (default: the machine's cached profile used by `cost_model: calibrated`).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--repeats", type=int, default=2, show_default=True,
              help="Timed repeats per grid point and pass (two passes; the sample is the median).")
@click.option("--quick", is_flag=True, help="A tiny grid (for smoke tests).")
@click.option("--threads", type=int, default=None, help="torch threads (use the same as the executor runs).")
@click.option("--max-model-len", type=int, default=512, show_default=True,
              help="The longest context the workloads reach: the grid's contexts span it.")
@click.option("--clock", type=click.Choice(["wall", "cpu", "cpu-ref"]), default="wall", show_default=True,
              help="Time steps in wall time, the engine thread's CPU time, or that CPU time at the host's reference "
                   "speed (cpu and cpu-ref need --threads 1; what replays on `executor: {clock: ...}` and "
                   "`folovllm fidelity` measure).")
def calibrate(model, out, dtype, repeats, quick, threads, max_model_len, clock):
    """Profile the executor's step time on this machine and fit the simulator's cost model."""
    from experiments.run.calibrate import cached_profile_path, calibrate as do_calibrate, describe_result
    from sim.cost.profiled import ProfiledCostModel, format_fit_report

    path = Path(out) if out else cached_profile_path(model, dtype, threads, max_model_len, clock)
    try:
        res = do_calibrate(model, path, dtype=dtype, repeats=repeats, quick=quick, threads=threads,
                           max_model_len=max_model_len, clock=clock)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    click.echo(format_fit_report(ProfiledCostModel.load(res.profile_path)))
    click.echo(describe_result(res))
    click.echo(f"profile written to {res.profile_path} (use it in a spec as `cost_model: {res.profile_path}`)")


@click.command()
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, exists=True))
def report(out_dir):
    """Write DIR/report.html (self-contained) and DIR/report.md from a results folder."""
    from experiments.analysis.report import write_report

    try:
        html_path, md_path = write_report(out_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    click.echo(f"report: {html_path}\nsummary: {md_path}")


@click.command()
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Replay this trace file (first requests, clipped to CPU size) instead of the built-in workload.")
@click.option("--format", "trace_format", default=None, help="Trace file format (default: detected).")
@click.option("--out", "out", type=click.Path(file_okay=False), default="results/demo", show_default=True)
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, exists=True), default=str(DEMO_SPEC),
              show_default=True, help="The spec the demo runs.")
@click.option("--num-requests", type=int, default=None, help="Requests taken from --trace (default 48).")
@click.option("--rate-scale", type=float, default=None,
              help="Multiply the workload's request rate (e.g. 0.5 halves it); default: the spec's.")
@click.option("--recalibrate", is_flag=True, help="Calibrate again even if this machine has a cached profile.")
def demo(trace_path, trace_format, out, spec_path, num_requests, rate_scale, recalibrate):
    """The main job: prepare SmolLM2-135M, calibrate the simulator on this machine, replay a
    workload through the simulator and the CPU executor, and write the report."""
    from experiments.run.calibrate import ensure_profile
    from experiments.run.spec import SpecError, load_spec

    t0 = time.perf_counter()
    click.echo("[1/4] preparing the embedded SmolLM2-135M model")
    from experiments.run import model_ref

    try:
        model_dir = model_ref.executor_model_dir("smollm2-135m")
    except FileNotFoundError as exc:
        raise _fail(exc) from None
    click.echo(f"      {model_dir}")
    try:
        overrides = {}
        if trace_path:
            from experiments.run.strict_yaml import load_yaml_file

            base = load_yaml_file(spec_path)
            trace = {"path": str(Path(trace_path).resolve()),
                     "transforms": [{"op": "head", "n": num_requests or 48}],
                     "max_prompt_len": base["trace"].get("max_prompt_len", 256),
                     "max_output_len": base["trace"].get("max_output_len", 32)}
            if trace_format:
                trace["format"] = trace_format
            overrides["trace"] = trace
        if rate_scale is not None:
            from experiments.run.strict_yaml import load_yaml_file

            base = load_yaml_file(spec_path).get("base", {})
            overrides["base"] = {**base, "rate_scale": rate_scale}
        spec = load_spec(spec_path, overrides or None)
        click.echo(f"[2/4] calibrating the simulator ({spec.model}, {spec.dtype})")
        t_cal = time.perf_counter()
        profile = ensure_profile(spec.model, spec.dtype, force=recalibrate, echo=lambda m: click.echo("      " + m),
                                 threads=spec.executor.get("threads"), max_model_len=_spec_max_model_len(spec),
                                 clock=spec.executor.get("clock", "wall"))
        click.echo(f"      {time.perf_counter() - t_cal:.0f} s")
        click.echo(f"[3/4] running {len(spec.variants)} variant(s) in {', '.join(spec.engines)}")
        out_dir = Path(out)
        comparison = _run_and_report(spec, out_dir, workers=None, ray=None, report=False, profile_path=str(profile))
        click.echo("[4/4] writing the report")
        from experiments.analysis.report import write_report

        html_path, md_path = write_report(out_dir)
    except (SpecError, FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from None
    click.echo("")
    _print_summary(out_dir, comparison)
    click.echo(f"\nreport: {html_path.resolve()}\nsummary: {md_path.resolve()}")
    click.echo(f"demo finished in {time.perf_counter() - t0:.0f} s")
    sys.stdout.flush()
