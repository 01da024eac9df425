"""Measuring over HTTP: replaying a trace against any OpenAI-compatible endpoint."""
