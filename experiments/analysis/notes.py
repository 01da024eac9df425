"""The milestone notes' figures, read from result files, never typed by hand.

A note's source (`docs/milestones/src/NAME.md`) writes each measured figure as a placeholder:

    {{fig:SPEC/METRIC/VARIANT}}                 a summary.json value of one variant's run
    {{fig:SPEC/METRIC/VARIANT@executor}}        ... of the executor's runs (median over repeats)
    {{ratio:SPEC/METRIC/VARIANT_A~VARIANT_B}}   A's value divided by B's, shown as "3.92x"
    {{json:SPEC/FILE/KEY.KEY}}                  any number in a JSON file of the results folder
                                                (comparison.json, fidelity.json; list items by index)

Variant names may contain "/" (grid variants such as `continuous/max_num_seqs=8`): everything
after METRIC is the variant. `SPEC` is a folder under the results root (`results/<spec>`, as `folovllm run ... --out
results/<spec>` writes it). A `|FORMAT` suffix picks the unit: `ms`, `s`, `pct`, `x`, `int`,
`num`; without one, the metric's name decides (`*_s` -> ms, rates and usage -> %).

`render` writes the notes (`docs/milestones/NAME.md`) and `figures.json`, the record of every
figure: its text, its value and the file it came from. A placeholder whose result is absent
renders as "not measured". `check` verifies, without re-running anything, that the notes are
exactly their sources filled from `figures.json`, and, for every figure whose result file is
present on this machine, that the file still gives the same figure. So the committed notes can
be read on GitHub with their numbers, and a stale number fails a test wherever results exist.

    python -m experiments.analysis.notes render [--results results] [--notes docs/milestones]
    python -m experiments.analysis.notes check  [--results results] [--notes docs/milestones]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

PLACEHOLDER = re.compile(r"\{\{(fig|ratio|json):([^}|]+)(?:\|([a-z]+))?\}\}")
NOT_MEASURED = "not measured"
FORMATS = ("ms", "s", "pct", "x", "int", "num")


class NotesError(ValueError):
    """A malformed placeholder or a figure that no longer matches its result file."""


@dataclass(frozen=True)
class Figure:
    key: str  # the placeholder without braces, e.g. "fig:prefix-caching/ttft_p50_s/prefix-cache-on"
    text: str  # what the note shows
    value: float | None
    source: str | None  # the result file(s) it came from, relative to the results root's parent


def _sig(x: float, digits: int = 3) -> str:
    """`digits` significant figures, without scientific notation for ordinary magnitudes."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{decimals}f}"


def format_value(value: float, fmt: str | None, metric: str) -> str:
    if fmt is None:
        if metric.endswith("_s"):
            fmt = "ms"
        elif any(w in metric for w in ("rate", "usage", "error", "mape")):
            fmt = "pct"
        else:
            fmt = "num"
    if fmt == "ms":
        return f"{_sig(value * 1000)} ms"
    if fmt == "s":
        return f"{_sig(value)} s"
    if fmt == "pct":
        return f"{_sig(value * 100)} %"
    if fmt == "x":
        return f"{_sig(value)}x"
    if fmt == "int":
        return f"{round(value):,}"
    if fmt == "num":
        return _sig(value)
    raise NotesError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def _read_json(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _run_value(results: Path, spec: str, metric: str, variant: str, engine: str) -> tuple[float, list[Path]] | None:
    """The metric of a variant's runs in one engine (seed 0; the median over repeats), or None."""
    index = _read_json(results / spec / "index.json")
    if index is None:
        return None
    jobs = [j for j in index.get("jobs", []) if j.get("variant") == variant and j.get("engine") == engine]
    if not jobs:
        return None
    seed = min(j.get("seed", 0) for j in jobs)
    values, files = [], []
    for job in jobs:
        if job.get("seed", 0) != seed:
            continue
        path = results / spec / job["dir"] / "summary.json"
        summary = _read_json(path)
        if summary is None:
            continue
        if metric not in summary:
            raise NotesError(f"{path}: no metric {metric!r}; it has {', '.join(sorted(summary))}")
        if summary[metric] is None:
            continue
        values.append(float(summary[metric]))
        files.append(path)
    if not values:
        return None
    return statistics.median(values), files


def _json_value(results: Path, spec: str, file: str, dotted: str) -> tuple[float, list[Path]] | None:
    path = results / spec / file
    data = _read_json(path)
    if data is None:
        return None
    node = data
    for part in dotted.split("."):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise NotesError(f"{path}: {dotted!r}: {part!r} is not an index of a {len(node)}-item list")
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise NotesError(f"{path}: no key {dotted!r} (stopped at {part!r})")
    if node is None:
        return None
    if not isinstance(node, (int, float)) or isinstance(node, bool):
        raise NotesError(f"{path}: {dotted!r} is {node!r}, not a number")
    return float(node), [path]


def resolve(key: str, results: Path) -> Figure:
    """One placeholder (the text between the braces) -> its figure from the results root."""
    m = PLACEHOLDER.fullmatch("{{" + key + "}}")
    if m is None:
        raise NotesError(f"malformed placeholder {{{{{key}}}}}")
    kind, body, fmt = m.groups()
    base, _, engine = body.partition("@")
    engine = engine or "sim"
    parts = base.split("/", 2) if kind != "json" else base.split("/")
    if kind == "fig":
        if len(parts) != 3:
            raise NotesError(f"{{{{{key}}}}}: fig takes SPEC/METRIC/VARIANT")
        spec, metric, variant = parts
        got = _run_value(results, spec, metric, variant, engine)
    elif kind == "ratio":
        if len(parts) != 3 or parts[2].count("~") != 1:
            raise NotesError(f"{{{{{key}}}}}: ratio takes SPEC/METRIC/VARIANT_A~VARIANT_B")
        spec, metric = parts[:2]
        a, b = parts[2].split("~")
        ga, gb = _run_value(results, spec, metric, a, engine), _run_value(results, spec, metric, b, engine)
        got = None if ga is None or gb is None or gb[0] == 0 else (ga[0] / gb[0], ga[1] + gb[1])
        fmt = fmt or "x"
    else:
        if len(parts) < 3:
            raise NotesError(f"{{{{{key}}}}}: json takes SPEC/FILE/KEY.KEY")
        spec, file, metric = parts[0], "/".join(parts[1:-1]), parts[-1]
        got = _json_value(results, spec, file, metric)
    if got is None:
        return Figure(key, NOT_MEASURED, None, None)
    value, files = got
    rel = ", ".join(sorted({_relative(p, results) for p in files}))
    return Figure(key, format_value(value, fmt, metric), value, rel)


def _relative(path: Path, results: Path) -> str:
    try:
        return str(path.relative_to(results.parent))
    except ValueError:
        return str(path)


def fill(template: str, figure_of) -> str:
    """The template with every placeholder replaced by `figure_of(key).text`."""
    return PLACEHOLDER.sub(lambda m: figure_of(m.group(0)[2:-2]).text, template)


def placeholders(template: str) -> list[str]:
    return [m.group(0)[2:-2] for m in PLACEHOLDER.finditer(template)]


def sources(notes_dir: Path) -> list[Path]:
    return sorted((notes_dir / "src").glob("*.md"))


def render(results: Path, notes_dir: Path) -> dict[str, Figure]:
    """Fill every note from the results root; write the notes and figures.json."""
    from traces.files import atomic_write_json, atomic_write_text

    figures: dict[str, Figure] = {}
    rendered = {}
    for src in sources(notes_dir):
        text = src.read_text(encoding="utf-8")
        for key in placeholders(text):
            if key not in figures:
                figures[key] = resolve(key, results)
        rendered[src.name] = fill(text, figures.__getitem__)
    for name, text in rendered.items():  # written only once every note rendered
        atomic_write_text(notes_dir / name, text)
    atomic_write_json(notes_dir / "figures.json", {k: asdict(f) for k, f in sorted(figures.items())})
    return figures


def check(results: Path, notes_dir: Path) -> tuple[list[str], int, int]:
    """(problems, figures checked against result files, figures whose result files are absent here)."""
    recorded_path = notes_dir / "figures.json"
    recorded = {k: Figure(**v) for k, v in (_read_json(recorded_path) or {}).items()}
    problems: list[str] = []
    used: set[str] = set()
    for src in sources(notes_dir):
        text = src.read_text(encoding="utf-8")
        missing = [k for k in placeholders(text) if k not in recorded]
        if missing:
            problems.append(f"{src}: figure(s) not in {recorded_path} (run `python -m experiments.analysis.notes render`): "
                            + ", ".join(missing))
            continue
        used.update(placeholders(text))
        note = notes_dir / src.name
        if not note.is_file() or note.read_text(encoding="utf-8") != fill(text, recorded.__getitem__):
            problems.append(f"{note}: differs from {src} filled from {recorded_path} (edited by hand, or not re-rendered)")
    checked = absent = 0
    for key in sorted(used):
        fig = recorded[key]
        now = resolve(key, results)
        if fig.source is None:
            if now.source is not None:  # measured since the notes were rendered
                problems.append(f"{{{{{key}}}}}: the notes say {NOT_MEASURED!r}, {now.source} now gives {now.text!r}")
            continue
        if now.source is None:
            absent += 1
            continue
        checked += 1
        if now.text != fig.text:
            problems.append(f"{{{{{key}}}}}: the notes say {fig.text!r}, {now.source} now gives {now.text!r}")
    return problems, checked, absent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.analysis.notes", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["render", "check"])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
    parser.add_argument("--notes", type=Path, default=Path("docs/milestones"), help="notes folder (default: docs/milestones)")
    args = parser.parse_args(argv)
    try:
        if args.action == "render":
            figures = render(args.results, args.notes)
            measured = sum(f.source is not None for f in figures.values())
            print(f"rendered {len(sources(args.notes))} notes: {measured} figures from {args.results}, "
                  f"{len(figures) - measured} not measured")
            for f in figures.values():
                if f.source is None:
                    print(f"  not measured: {{{{{f.key}}}}}")
            return 0
        problems, checked, absent = check(args.results, args.notes)
    except (NotesError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{checked} figures match their result files; {absent} not checked (result files absent here); "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
