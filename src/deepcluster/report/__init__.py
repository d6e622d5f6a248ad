"""Planned area; see the project's issues."""
