"""Arithmetic every layer needs and would otherwise write inline, each time a little differently."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for positive integers: blocks needed for `a` tokens of block size `b`."""
    return -(-a // b)
