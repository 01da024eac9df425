"""Attention backends behind one interface, chosen by name (`get_backend`)."""

from executor.attention.base import AttentionBackend, AttentionMetadata
from executor.attention.registry import BACKEND_NAMES, get_backend, register_backend

__all__ = ["AttentionBackend", "AttentionMetadata", "BACKEND_NAMES", "get_backend", "register_backend"]
