"""One root exception; the CLI turns it into a clean message and exit code at the edge."""

from __future__ import annotations

__all__ = [
    "EXIT_OK",
    "EXIT_INTERNAL",
    "EXIT_USAGE",
    "EXIT_PAUSE",
    "EXIT_REJECTED",
    "SyncguardError",
    "UsageError",
    "InputError",
    "ModelError",
    "StoreError",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_PAUSE = 3
EXIT_REJECTED = 4


class SyncguardError(Exception):
    """Root of every error syncguard reports to a person.

    The message must be readable on its own: what went wrong, where, and what to do.
    """

    exit_code = EXIT_INTERNAL


class UsageError(SyncguardError):
    """The command was called wrongly (bad flag value, missing file)."""

    exit_code = EXIT_USAGE


class InputError(SyncguardError):
    """Input records could not be read or broke the sync-record contract."""

    exit_code = EXIT_REJECTED


class ModelError(SyncguardError):
    """No usable model: missing, corrupt, tampered or never trained."""

    exit_code = EXIT_INTERNAL


class StoreError(SyncguardError):
    """The embedded store could not be opened or written."""

    exit_code = EXIT_INTERNAL
