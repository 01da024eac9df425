"""Attention backends behind one interface, chosen by name (`get_backend`)."""

from executor.attention.base import AttentionBackend, AttentionMetadata, get_backend, BACKEND_NAMES

__all__ = ["AttentionBackend", "AttentionMetadata", "get_backend", "BACKEND_NAMES"]
