"""The one base class of errors a user can cause. The CLI prints exactly these as one line (and
exits with their ``exit_code``); any other exception is a bug in nanobard and keeps its
traceback."""

from __future__ import annotations


class NanobardError(Exception):
    """Something the user can fix; the message says what to do."""

    exit_code = 2


class ConfigError(NanobardError, ValueError):
    """A configuration value a user chose is unusable; the message says what to change."""
