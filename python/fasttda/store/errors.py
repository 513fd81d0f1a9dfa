"""The store's errors. Each message names the store path, file or row ids at fault."""
from __future__ import annotations


class StoreError(RuntimeError):
    """Base class of the feature store's errors."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store at the path: not a directory, or no ``manifest.json`` in it."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock."""


class CorruptStoreError(StoreError):
    """The store cannot be trusted: its manifest fails the schema, a shard file is missing,
    truncated, a symlink or fails its checksum; ``problems`` lists what was found."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


class IncompatibleStoresError(ValueError):
    """Stores that cannot be combined or scored together; the message names what differs."""
