"""The milestone notes' figures come from result files (experiments/analysis/notes.py).

The committed notes must be exactly their sources filled from figures.json, and every figure
whose result file exists on this machine must still match it; the renderer itself is checked
against a real (tiny, simulated) results folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from experiments.analysis import notes

ROOT = Path(__file__).resolve().parents[2]
NOTES = ROOT / "docs" / "milestones"
MILESTONES = [f"M{i}.md" for i in range(8)] + ["SIM.md", "FIDELITY.md"]


def test_ten_notes_each_naming_its_spec_and_quoting_figures():
    srcs = {p.name: p.read_text() for p in notes.sources(NOTES)}
    assert set(MILESTONES) <= set(srcs)
    for name in MILESTONES:
        text = srcs[name]
        assert "experiments/specs/" in text or "folovllm fidelity" in text, f"{name} names no spec"
        assert notes.placeholders(text), f"{name} quotes no figure from a result file"
        assert text.count("\n**Q") >= 4, f"{name}: fewer than 4 interview questions"


def test_committed_notes_match_figures_and_result_files():
    problems, checked, absent = notes.check(ROOT / "results", NOTES)
    assert problems == []
    # Without results/ (a fresh clone, CI) nothing can be compared, but the notes still must be
    # their sources filled from figures.json (checked above).
    assert checked + absent >= 1


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A real results folder: the prefix-caching spec, simulated (about a second)."""
    from experiments.cli import main

    root = tmp_path_factory.mktemp("res") / "results"
    res = CliRunner().invoke(main, ["run", str(ROOT / "experiments/specs/prefix-caching.yaml"), "--engines", "sim",
                                    "--out", str(root / "prefix-caching"), "--workers", "1", "--no-report"])
    assert res.exit_code == 0, res.output
    return root


def _summary(results: Path, variant: str) -> dict:
    index = json.loads((results / "prefix-caching" / "index.json").read_text())
    (job,) = [j for j in index["jobs"] if j["variant"] == variant]
    return json.loads((results / "prefix-caching" / job["dir"] / "summary.json").read_text())


def test_render_fills_figures_from_summary_files_then_check_catches_drift(results, tmp_path):
    on, off = _summary(results, "prefix-cache-on"), _summary(results, "prefix-cache-off")
    folder = tmp_path / "notes"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "N.md").write_text(
        "on {{fig:prefix-caching/ttft_p50_s/prefix-cache-on}}, "
        "off {{fig:prefix-caching/ttft_p50_s/prefix-cache-off|s}}, "
        "{{ratio:prefix-caching/ttft_p50_s/prefix-cache-off~prefix-cache-on}} lower, "
        "hits {{fig:prefix-caching/prefix_hit_rate/prefix-cache-on}}, "
        "steps {{fig:prefix-caching/num_steps/prefix-cache-on|int}}, "
        "exec {{fig:prefix-caching/ttft_p50_s/prefix-cache-on@executor}}, "
        "spec {{json:prefix-caching/spec.json/spec.base.max_num_seqs|int}}.\n")
    figures = notes.render(results, folder)
    text = (folder / "N.md").read_text()
    expected = (f"on {notes.format_value(on['ttft_p50_s'], 'ms', '')}, "
                f"off {notes.format_value(off['ttft_p50_s'], 's', '')}, "
                f"{notes.format_value(off['ttft_p50_s'] / on['ttft_p50_s'], 'x', '')} lower, "
                f"hits {notes.format_value(on['prefix_hit_rate'], 'pct', '')}, steps {on['num_steps']:,}, "
                "exec not measured, spec 16.\n")
    assert text == expected
    fig = figures["fig:prefix-caching/ttft_p50_s/prefix-cache-on"]
    assert fig.source.endswith("summary.json") and fig.value == on["ttft_p50_s"]
    assert notes.check(results, folder) == ([], 6, 0)

    # Results moved on: the check names the figure and the file.
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    index = json.loads((copy / "prefix-caching" / "index.json").read_text())
    (job,) = [j for j in index["jobs"] if j["variant"] == "prefix-cache-on"]
    path = copy / "prefix-caching" / job["dir"] / "summary.json"
    data = json.loads(path.read_text())
    data["ttft_p50_s"] *= 2
    path.write_text(json.dumps(data))
    problems, _, _ = notes.check(copy, folder)
    assert any("ttft_p50_s/prefix-cache-on}}" in p and "summary.json" in p for p in problems)

    # Without result files the figures cannot be compared, but the notes still are checked.
    assert notes.check(tmp_path / "nowhere", folder) == ([], 0, 6)
    (folder / "N.md").write_text(text.replace("steps", "steps (edited)"))
    problems, _, _ = notes.check(tmp_path / "nowhere", folder)
    assert len(problems) == 1 and "edited by hand" in problems[0]


@pytest.mark.parametrize("key, match", [
    ("fig:prefix-caching/ttft_p50_s", "SPEC/METRIC/VARIANT"),
    ("ratio:prefix-caching/ttft_p50_s/a", "VARIANT_A~VARIANT_B"),
    ("fig:prefix-caching/no_such_metric/prefix-cache-on", "no metric 'no_such_metric'"),
    ("json:prefix-caching/spec.json/spec.nope", "no key 'spec.nope'"),
    ("json:prefix-caching/spec.json/spec.name", "not a number"),
    ("fig:prefix-caching/ttft_p50_s/prefix-cache-on|furlongs", "unknown format 'furlongs'"),
])
def test_bad_placeholders_are_errors_naming_them(results, key, match):
    with pytest.raises(notes.NotesError, match=match):
        notes.resolve(key, results)


def test_cli_check_exit_status(results, tmp_path, capsys):
    folder = tmp_path / "notes"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "N.md").write_text("{{fig:prefix-caching/ttft_p50_s/prefix-cache-on}}\n")
    assert notes.main(["check", "--results", str(results), "--notes", str(folder)]) == 1  # never rendered
    assert notes.main(["render", "--results", str(results), "--notes", str(folder)]) == 0
    assert notes.main(["check", "--results", str(results), "--notes", str(folder)]) == 0
    assert "1 figures match" in capsys.readouterr().out
