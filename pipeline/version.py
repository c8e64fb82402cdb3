"""The project's version: pyproject.toml reads it from here, and the exported model's
metadata records it."""

VERSION = "0.1.0"
