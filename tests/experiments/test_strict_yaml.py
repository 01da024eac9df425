"""Duplicate keys in a spec are an error naming file, line and key (issue 17: last value used to win silently)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from experiments.run.commands import run
from experiments.run.spec import SpecError, load_spec
from experiments.run.strict_yaml import DuplicateKeyError, load_yaml_text

SPEC = """\
name: dup
trace:
  preset: poisson
  params: {num_requests: 4}
model: qwen3-0.6b
hardware: h100-sxm
base:
  max_num_seqs: 16
  block_size: 16
  max_num_seqs: 64
variants:
  - {name: a}
"""


def test_duplicate_key_in_a_spec_names_file_line_and_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(SPEC)
    with pytest.raises(SpecError, match=rf"{path}:10: duplicate key 'max_num_seqs' \(first given on line 8\)"):
        load_spec(path)


def test_run_refuses_a_duplicated_key_and_writes_nothing(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(SPEC)
    out = tmp_path / "out"
    res = CliRunner().invoke(run, [str(path), "--out", str(out)])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert "dup.yaml:10: duplicate key 'max_num_seqs'" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_top_level_and_flow_mapping_duplicates_are_caught_too():
    with pytest.raises(DuplicateKeyError, match=r"s\.yaml:3: duplicate key 'name'"):
        load_yaml_text("name: a\nmodel: m\nname: b\n", "s.yaml")
    with pytest.raises(DuplicateKeyError, match=r"s\.yaml:1: duplicate key 'n'"):
        load_yaml_text("x: {n: 1, n: 2}\n", "s.yaml")


def test_merge_keys_and_anchors_still_load():
    data = load_yaml_text("a: &base {n: 1, m: 2}\nb:\n  <<: *base\n  n: 3\n", "s.yaml")
    assert data == {"a": {"n": 1, "m": 2}, "b": {"n": 3, "m": 2}}


def test_spec_that_is_not_text_names_file_line_and_byte_offset(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: x\nmodel: \xf0\x28\x8c\x28\n")
    with pytest.raises(SpecError, match=rf"{path}:2: not UTF-8 text: byte 0xf0 at byte offset 15"):
        load_spec(path)
