"""Writing files so that a reader never sees half of one: a temporary sibling, then one
`os.replace`. Every layer writes through these (results, profiles, traces, benchmarks)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return Path(path)


def atomic_write_json(path, data, *, indent: int = 2, sort_keys: bool = True, allow_nan: bool = False,
                      default=None) -> Path:
    """JSON with a trailing newline; NaN refused by default (it is not JSON, and never a result)."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=default) + "\n"
    return atomic_write_text(path, text)
