"""YAML for specs and configs, with duplicate keys refused.

PyYAML's `safe_load` lets a repeated key silently replace the earlier one: a spec that says
`max_num_seqs: 16` and, forty lines later, `max_num_seqs: 64` runs with 64 and nobody knows.
`StrictSafeLoader` is `SafeLoader` except that a mapping naming a key twice is an error giving
the file, both lines and the key.
"""

from __future__ import annotations

from pathlib import Path

import yaml


class DuplicateKeyError(yaml.YAMLError, ValueError):
    """A YAML mapping names the same key twice; the message is one line: `file:line: duplicate key ...`."""

    def __init__(self, source: str, line: int, key, first_line: int) -> None:
        self.source, self.line, self.key, self.first_line = source, line, key, first_line
        super().__init__(f"{source}:{line}: duplicate key {key!r} (first given on line {first_line}); "
                         "a repeated key would silently replace the earlier value")


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (anchors and merge keys `<<` still work)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    where = key_node.start_mark
                    raise DuplicateKeyError(where.name, where.line + 1, key, first.line + 1)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, source: str = "<string>"):
    """Parse YAML text; `source` names it in error messages (file:line)."""
    loader = StrictSafeLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class NotTextError(yaml.YAMLError, ValueError):
    """A spec or config file that is not UTF-8 text; the message names the file, line and byte offset."""


def load_yaml_file(path: str | Path):
    """Parse a YAML file strictly. Raises yaml.YAMLError (DuplicateKeyError for repeated keys,
    NotTextError for bytes that are not UTF-8)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise NotTextError(f"{path}:{line}: not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset "
                           f"{exc.start} cannot be decoded") from None
    return load_yaml_text(text, str(path))
