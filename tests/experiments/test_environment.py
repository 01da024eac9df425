"""Calibration profiles are reused only for the executor code they were measured with."""

from __future__ import annotations

from experiments.run.environment import source_fingerprint


def test_source_fingerprint_changes_with_the_code_and_only_with_it(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not code")
    first = source_fingerprint(pkg)
    assert source_fingerprint(pkg) == first
    (pkg / "notes.txt").write_text("still not code")
    assert source_fingerprint(pkg) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    assert source_fingerprint(pkg) != first


def test_package_fingerprints_follow_their_source_and_reject_unknown_names():
    from pathlib import Path

    import executor
    import pytest

    from experiments.run.environment import code_fingerprint

    assert code_fingerprint("executor") == code_fingerprint("executor")
    assert code_fingerprint("executor") != code_fingerprint("sim")
    assert source_fingerprint(Path(executor.__file__).resolve().parent)   # hashes the real package
    with pytest.raises(ValueError, match="no_such_package"):
        code_fingerprint("no_such_package")
